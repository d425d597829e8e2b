"""Learning curve of one config: train it with the engine and evaluate it at given steps.

The cpu tier's settings were chosen with this (results/reference/cpu_tier_study.md). It trains
with core.train.train up to each mark in turn (the run resumes from its checkpoint at the mark:
the learning rate is constant after warm-up and the data and keys resume exactly, so the marks
do not change the training) and evaluates each mark with core.evaluate.evaluate_dir, the
sweep's own evaluation: one record per mark in WORKDIR/evals/, and one line printed per mark.

  python -m scripts.learning_curve CONFIG_JSON --steps 1500,3000 [--workdir DIR] [KEY=VALUE ...]

CONFIG_JSON is a nested ExperimentConfig dict, e.g.
  '{"resolution": 16, "model": {"preset": "unet_tiny", "dropout": 0.0},
    "data": {"source": "shapes_simple"}, "optim": {"lr": 2e-3, "ema_decay": 0.999,
    "ema_warmup": true}, "train": {"batch_size": 64}, "sampler": {"steps": 64},
    "eval": {"num_samples": 256, "batch_size": 256, "ref_num": 256}}'
KEY=VALUE are evaluation overrides (eval.*, sampler.*, ema.*; the bound is off unless
eval.bound=true). For a run on the procedural data, `python -m core.train ... eval.every=N`
scores the oracle's figures while it trains, cheaper than this (core.curve). Earlier versions
of this script marked training minutes (--minutes) and scored the raw parameters (--raw): the
rows of cpu_tier_study.md that say so were made with them (git history).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("config", help="nested ExperimentConfig as JSON")
  ap.add_argument("--steps", required=True, help="training steps to evaluate at, e.g. 1500,3000")
  ap.add_argument("--workdir", default="", help="the run's folder (default: a new temporary "
                  "one); an existing one resumes")
  ap.add_argument("overrides", nargs="*", help="evaluation overrides, key=value")
  args = ap.parse_args(argv)

  from core.config import ConfigError, parse_assignments, replace
  from core.devices import setup
  from core.evaluate import evaluate_dir
  from core.experiment import resolve
  from core.runio import read_json
  from core.train import train
  setup()
  try:
    cfg = resolve(json.loads(args.config))
    marks = sorted(int(s) for s in args.steps.split(","))
    overrides = {"eval.bound": False, **parse_assignments(args.overrides)}
  except (ConfigError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  workdir = args.workdir or tempfile.mkdtemp(prefix="learning_curve_")
  print(f"{workdir}: marks {marks}", flush=True)
  for mark in marks:
    done = train(replace(cfg, **{"train.steps": mark}), workdir)
    rec = read_json(evaluate_dir(workdir, overrides, progress=False))
    c = rec.get("content") or {}
    at = (f" | at {c['resolution']}px: FID {c['fid_eval']:.1f} (floor "
          f"{c['floor']['fid_eval']:.1f})" if c.get("fid_eval") is not None else "")
    o = rec.get("oracle") or {}
    if o.get("class_acc") is not None:
      at += f" | class accuracy {o['class_acc']:.3f}"
    print(f"step {mark} trained {done.train_time_s / 60:.2f} min: FID eval "
          f"{rec['fid_eval']:.1f} (floor {rec['floor']['fid_eval']:.1f}) KID x10^3 "
          f"{rec['kid_eval'] * 1e3:.1f}{at}; eval {rec['eval_time_s']:.0f} s", flush=True)
  print(f"records and grids: {os.path.join(workdir, 'evals')}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
