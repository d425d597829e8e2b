"""FID and KID of one finished run under several sampler settings, side by side in one process.

    python -m scripts.sampler_study RUN_DIR 'sampler.steps=64' 'sampler.steps=256' \
        'sampler.name=ddim sampler.steps=64' [--seeds 0,1] [--out /tmp]

Each quoted argument is one setting (space-separated sampler.* / eval.* overrides of the run's
config.yaml, as `python -m core.evaluate` takes them). The run's EMA parameters are restored
once; each setting samples eval.num_samples images with each --seeds value as the evaluation
seed (eval.seed: the starting noise and labels) and is scored against the run's eval split by
the same code as the sweep (core.metrics.fid, core.metrics.reference). One line per setting and seed, then the mean over
seeds; the data floor at the same n first. Sampling time is wall time on this machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("run_dir")
  ap.add_argument("settings", nargs="+", help="one quoted group of key=value per setting")
  ap.add_argument("--seeds", default="0", help="evaluation seeds, comma-separated")
  ap.add_argument("--out", default="/tmp", help="folder for each setting's sample grid")
  args = ap.parse_args(argv)

  import numpy as np
  from core.evaluate import eval_config, model_dirs
  from core.metrics.features import inception_extractor
  from core.metrics.fid import floor_metrics, sample_metrics
  from core.engine.generate import generate
  from core.data.images import save_grid
  from core.metrics.reference import reference_figures
  from core.engine.checkpoint import restore_ema
  from core.config import ConfigError, parse_assignments
  from core.devices import setup
  setup()
  try:
    settings = [parse_assignments(s.split()) for s in args.settings]
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  seeds = [int(s) for s in args.seeds.split(",")]
  base = eval_config(args.run_dir, {})
  model = restore_ema(base, model_dirs(args.run_dir, base)[-1])
  params = model.params
  ext = inception_extractor(base.eval.inception_weights)
  ref = reference_figures(base, base.data.eval_split, ext, False)
  other = reference_figures(base, base.data.split, ext, False)
  fl, _ = floor_metrics(base.eval.num_samples, ref, other)
  print(f"{args.run_dir}: step {model.step}, {base.resolution}px, "
        f"n={base.eval.num_samples}; floor FID {fl['fid']:.1f} KID x10^3 {fl['kid'] * 1e3:.2f}",
        flush=True)
  name = os.path.basename(os.path.normpath(args.run_dir))
  for over in settings:
    cfg = eval_config(args.run_dir, over)
    label = " ".join(f"{k}={v}" for k, v in over.items()) or "(run's own)"
    fids, kids = [], []
    for seed in seeds:
      t0 = time.time()
      feats, grid = [], []
      for imgs, _, _ in generate(model, params, cfg, cfg.eval.num_samples, seed=seed,
                                 progress=False):
        feats.append(ext(imgs)["pool"])
        grid.append(imgs)
      m = sample_metrics(np.concatenate(feats), ref)
      fids.append(m["fid"])
      kids.append(m["kid"])
      tag = "_".join(f"{k.split('.')[-1]}{v}" for k, v in over.items()) or "own"
      path = os.path.join(args.out, f"sampler_{name}_{tag}_seed{seed}.png")
      save_grid(np.concatenate(grid)[:64], path)
      print(f"  {label:44s} seed {seed}: FID {m['fid']:6.1f} KID x10^3 {m['kid'] * 1e3:6.1f}"
            f"  {time.time() - t0:5.0f} s  {path}", flush=True)
    if len(seeds) > 1:
      print(f"  {label:44s} mean:   FID {np.mean(fids):6.1f} KID x10^3 "
            f"{np.mean(kids) * 1e3:6.1f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
