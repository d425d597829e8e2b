"""XLA CPU flags against the toolkit's own programs, measured in alternating child processes.

    python -m scripts.benchmark_xla_flags [--flag= --flag=--xla_cpu_experimental_ynn_fusion_type=]
        [--repeats 2] [--quick]

XLA reads its flags once per process, so each flag set runs in a child of its own; the sets
alternate (A B A B ...) so that a load that comes and goes on a shared machine falls on all of
them. Each child measures, with the persistent compilation cache off: the float32 matmul
ceiling (2048^2), the training step of the cpu tier's two noise_shift models and of unet_small
and uvit_small at 32x32 batch 16 (XLA's FLOPs over the measured time, and the share of that
child's ceiling), DDPM sampling of the 16-px tier model (batch 256, per image per 64 steps),
Inception images/s, and the loss of one fixed batch (the numerics must not move). The table
gives each figure's median over repeats and its ratio to the first flag set. "" is XLA's
default; the empty value of *_fusion_type turns that library's fusions off.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tier_cfgs():
  from sweeps.spec import expand
  runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "cpu", seeds=1)[1]
  first = {}
  for r in runs:
    first.setdefault(r.config.resolution, r.config)
  return [first[k] for k in sorted(first)]


def child(quick: bool) -> dict:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  import jax
  import numpy as np
  from analysis.xla_cost import matmul_peak
  from core.data import pipeline as data_lib
  from core.config import replace
  from core.experiment import resolve
  from core.train import Trainer
  from scripts.gpu_check import inception_row, sampling_row, train_row
  reps = 3 if quick else 10
  peak = matmul_peak(2048, "float32")["flops_per_s"]
  tier = _tier_cfgs()
  cfgs = [(f"tier {c.resolution}px {c.model.preset} base {c.model.base_channels} "
           f"{c.model.frontend} b{c.train.batch_size}", c) for c in tier]
  if not quick:
    cfgs += [(f"{p} 32px b16", resolve({"resolution": 32, "model": {"preset": p},
                                         "train": {"batch_size": 16}}))
             for p in ("unet_small", "uvit_small")]
  rows = {name: train_row(name, c, reps, peak) for name, c in cfgs}
  s16 = tier[0]
  steps = 4 if quick else 16
  srow = sampling_row(s16, steps, s16.eval.batch_size, 1 if quick else 2, peak)
  srow["img_per_s"] *= steps / s16.sampler.steps   # per image of the tier's own 64 steps
  rows["sampling 16px tier, img/s at its steps"] = srow
  rows["inception"] = inception_row(32 if quick else 64, 2 if quick else 3, peak)
  # Numerics: the loss of one fixed batch from the same initial parameters.
  tr = Trainer(s16)
  state = tr.init(jax.random.key(0))
  batch = next(iter(data_lib.make_dataset(s16.data, s16.resolution, s16.train.batch_size, seed=0,
                                          split="train", train=True)))
  _, m = tr.step(state, tr.global_batch(batch), jax.random.key(1))
  return {"peak": peak, "rows": rows, "loss": float(m["loss"]), "devices": len(jax.devices())}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--flag", action="append", dest="flags",
                  help="one flag set, repeatable; write it --flag=VALUE (VALUE starts with --); "
                       "default: XLA's own against --xla_cpu_experimental_ynn_fusion_type=")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--quick", action="store_true", help="the tier models only, fewer reps")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  a.flags = a.flags or ["", "--xla_cpu_experimental_ynn_fusion_type="]
  if a.child:
    print("RESULT " + json.dumps(child(a.quick)), flush=True)
    return 0
  # The user's XLA_FLAGS stay, less any flag a set names (each set gives its own value).
  named = {g.split("=")[0] for fs in a.flags for g in fs.split()}
  base = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in named)
  out: dict[str, list] = {f: [] for f in a.flags}
  for rep in range(a.repeats):
    for fs in a.flags:
      env = dict(os.environ, XLA_FLAGS=f"{base} {fs}".strip(), SIMPLEDIFF_COMPILE_CACHE="0",
                 SIMPLEDIFF_XLA_CPU_DEFAULTS="0")
      res = run_child(ROOT, a.quick, env, f"flags [{fs}]")
      if res is None:
        return 1
      out[fs].append(res)
      print(f"repeat {rep + 1}/{a.repeats} flags [{fs or 'XLA default'}] done", flush=True)
  print_table(out, a.repeats, "flag set", lambda fs: fs or "XLA default")
  return 0


def run_child(tree: str, quick: bool, env: dict, label: str):
  """One child of the benchmark_xla_flags of the checkout at `tree`, run as a module from
  there so that it imports that checkout's packages; its figures, or None, saying why."""
  cmd = [sys.executable, "-m", "scripts.benchmark_xla_flags", "--child"] + \
      (["--quick"] if quick else [])
  p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
  if line is None:
    sys.stderr.write(p.stderr[-3000:])
    print(f"{label} failed (rc {p.returncode})")
    return None
  return json.loads(line[7:])


def print_table(out: dict, repeats: int, kind: str, label) -> None:
  """Medians of each set's children and ratios against the first set (also used by
  scripts/benchmark_versions.py, whose sets are commits)."""
  first = next(iter(out))
  names = list(out[first][0]["rows"])
  med = lambda fs, f: statistics.median(f(r) for r in out[fs])   # noqa: E731
  print(f"\n{out[first][0]['devices']} CPU devices; medians of {repeats} alternating repeats; "
        f"ratio: against the first {kind}")
  for fs in out:
    print(f"\n{kind} [{label(fs)}]: ceiling {med(fs, lambda r: r['peak']) / 1e9:.0f} "
          f"GFLOP/s, fixed-batch loss {out[fs][0]['loss']:.7f}")
    print(f"  {'program':46s} {'img/s':>9s} {'ratio':>6s} {'GFLOP/s':>8s} {'of ceiling':>10s}")
    for n in names:
      ips = med(fs, lambda r: r["rows"][n]["img_per_s"])
      ref = med(first, lambda r: r["rows"][n]["img_per_s"])
      fl = med(fs, lambda r: r["rows"][n]["flop_per_s"])
      share = med(fs, lambda r: r["rows"][n]["flop_per_s"] / r["peak"])
      print(f"  {n:46s} {ips:9.2f} {ips / ref:6.2f} {fl / 1e9:8.1f} {share:10.1%}")


if __name__ == "__main__":
  sys.exit(main())
