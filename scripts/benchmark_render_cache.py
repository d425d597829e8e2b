"""Training images/s with the procedural set rendered on the fly against read from its render.

    python -m scripts.benchmark_render_cache [--steps 400] [--pairs 2]

Each measurement is a child process running core.train (the engine's own loop, data pipeline
and logging) on the cpu tier's two model settings of noise_shift.yaml, with
$SIMPLEDIFF_SHAPES_CACHE=0 (rendered on the fly, as before) or 1 (core.data.sources.render_cached),
alternating in pairs so that the machine's load falls on both alike. Speed is the mean of the
logged img/s after the first log interval (compilation). The render is made before timing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {   # the cpu tier's 16-px and 32-px models (ablations/noise_shift.yaml)
    "16 px unet_tiny": {"resolution": 16, "model": {"preset": "unet_tiny", "dropout": 0.0}},
    "32 px patch:2 base 24": {"resolution": 32, "model": {"preset": "unet_tiny", "dropout": 0.0,
                                                         "frontend": "patch:2",
                                                         "base_channels": 24}},
}
COMMON = {"data": {"source": "shapes_simple", "split": "train", "eval_split": "test",
                   "num_classes": 10, "size": 50000},
          "optim": {"lr": 2e-3, "warmup_steps": 50, "ema_decay": 0.999, "ema_warmup": True}}


def child(setting: str, steps: int) -> None:
  from core.experiment import resolve
  from core.runio import read_jsonl
  from core.train import train
  d = json.loads(json.dumps({**SETTINGS[setting], **COMMON}))
  d["train"] = {"batch_size": 32, "steps": steps, "log_every": 50, "ckpt_every": 10 ** 9,
                "progress": False}
  with tempfile.TemporaryDirectory() as tmp:
    train(resolve(d), tmp, log=lambda s: None)
    rows = read_jsonl(os.path.join(tmp, "metrics.jsonl"))
  ips = [r["img_per_s"] for r in rows[1:]]
  print(json.dumps({"img_per_s": sum(ips) / len(ips)}))


def measure(setting: str, steps: int, cached: bool) -> float:
  env = {**os.environ, "SIMPLEDIFF_SHAPES_CACHE": "1" if cached else "0"}
  out = subprocess.run([sys.executable, "-m", "scripts.benchmark_render_cache", "--child", setting,
                        "--steps", str(steps)], env=env, capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    raise SystemExit(out.stderr[-2000:])
  return json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--pairs", type=int, default=2)
  ap.add_argument("--child", default="")
  a = ap.parse_args()
  if a.child:
    return child(a.child, a.steps)
  from core.experiment import resolve
  from core.data.sources import make_source, render_cached
  for setting in SETTINGS:   # the render, made once before any timing
    cfg = resolve({**SETTINGS[setting], **COMMON})
    render_cached(make_source(cfg.data, cfg.resolution, "train"), progress=True)
  print(f"{'setting':24s} {'pair':>4s} {'on the fly img/s':>16s} {'rendered img/s':>14s} "
        f"{'ratio':>6s}", flush=True)
  for setting in SETTINGS:
    ratios = []
    for p in range(a.pairs):
      order = (False, True) if p % 2 == 0 else (True, False)
      got = {c: measure(setting, a.steps, c) for c in order}
      ratios.append(got[True] / got[False])
      print(f"{setting:24s} {p:4d} {got[False]:16.1f} {got[True]:14.1f} {ratios[-1]:6.3f}",
            flush=True)
    print(f"{setting:24s} mean ratio {sum(ratios) / len(ratios):.3f}", flush=True)


if __name__ == "__main__":
  main()
