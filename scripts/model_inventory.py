"""The trained models a full reproduction needs: one row per model key, with its sweep files
and rows, and its training FLOPs (XLA's count of the whole step, loops counted whole, times
batch and steps, as analysis.cost computes them; lowered only, nothing is allocated).

    python -m scripts.model_inventory [--tier paper] [--ablations ablations] [--no-flops]
        [--per-sweep]   # count models as before the shared store: one per (sweep file, key)
"""
from __future__ import annotations

import argparse
import glob
import os
import sys


def step_flops(cfg) -> float:
  """FLOPs of one training step at cfg's batch (global), from the lowered program."""
  from analysis.cost import abstract_step_args
  from analysis.xla_cost import traced_flops
  from core.train import Trainer
  tr = Trainer(cfg)
  return traced_flops(tr.jit_step.trace(*abstract_step_args(tr, cfg.train.batch_size)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tier", default="paper")
  ap.add_argument("--ablations", default="ablations")
  ap.add_argument("--no-flops", action="store_true")
  ap.add_argument("--per-sweep", action="store_true",
                  help="key models by (sweep file, legacy key), as before the shared store")
  args = ap.parse_args(argv)
  from core.diffusion.cdm import stage_configs
  from core.experiment import legacy_train_key, train_key
  from sweeps.spec import expand
  models: dict = {}
  for f in sorted(glob.glob(os.path.join(args.ablations, "[a-z]*.yaml"))):
    meta, runs = expand(f, args.tier)
    for r in runs:
      for i, c in enumerate(stage_configs(r.config)):
        k = (meta["sweep"], legacy_train_key(c)) if args.per_sweep else train_key(c)
        m = models.setdefault(k, {"cfg": c, "rows": []})
        m["rows"].append(f"{meta['sweep']}:{r.group + ' ' if r.group else ''}{r.arm}"
                         + (f" (stage {i})" if len(stage_configs(r.config)) > 1 else ""))
  flops_cache: dict = {}
  total = 0.0
  print(f"{'key':14s} {'res':>4s} {'preset':14s} {'batch':>5s} {'steps':>8s} {'train FLOPs':>11s}  rows")
  for k, m in models.items():
    c = m["cfg"]
    fl = float("nan")
    if not args.no_flops:
      sig = (repr(c.model), c.resolution, c.train.batch_size, c.loss.multiscale, repr(c.cond))
      if sig not in flops_cache:
        flops_cache[sig] = step_flops(c)
      fl = flops_cache[sig] * c.train.steps
      total += fl
    key = k if isinstance(k, str) else f"{k[0][:6]}/{k[1][:7]}"
    rows = sorted(set(m["rows"]))
    shown = ", ".join(rows[:4]) + (f" (+{len(rows) - 4})" if len(rows) > 4 else "")
    print(f"{key:14s} {c.resolution:4d} {c.model.preset or c.model.arch:14s} "
          f"{c.train.batch_size:5d} {c.train.steps:8d} {fl:11.3e}  {shown}", flush=True)
  print(f"\n{len(models)} models at tier {args.tier}"
        + ("" if args.no_flops else f", {total:.3e} training FLOPs in all"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
