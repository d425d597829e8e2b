"""Learning curve by wall time: train one config, evaluate FID and KID at given minutes.

The cpu tier's settings were chosen with this (results/reference/cpu_tier_study.md): it runs
the engine's own Trainer, data pipeline, sampler and metrics (core.train, core.data.pipeline,
core.engine.generate, core.evaluate), pauses the clock while it evaluates, and prints one line per mark:

  python -m scripts.learning_curve CONFIG_JSON --minutes 1.5,3 [--raw] [--tag NAME]
  python -m scripts.learning_curve CONFIG_JSON --steps 1500,3000   # marks in steps instead

CONFIG_JSON is a nested ExperimentConfig dict, e.g.
  '{"resolution": 16, "model": {"preset": "unet_tiny", "dropout": 0.0},
    "data": {"source": "shapes_simple"}, "optim": {"lr": 2e-3, "ema_decay": 0.999,
    "ema_warmup": true}, "train": {"batch_size": 64}, "sampler": {"steps": 64},
    "eval": {"num_samples": 256, "batch_size": 256, "ref_num": 256}}'
FID and KID are against the eval split (cfg.data.eval_split); the first line is the data's
floor at the same n. --raw also scores the raw (non-EMA) parameters. Sample grids go to
--out (default /tmp).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("config", help="nested ExperimentConfig as JSON")
  ap.add_argument("--minutes", default="2.5,5", help="training minutes to evaluate at")
  ap.add_argument("--steps", default="",
                  help="training steps to evaluate at instead of minutes (fair between runs "
                       "on a busy machine)")
  ap.add_argument("--raw", action="store_true", help="also evaluate the raw parameters")
  ap.add_argument("--tag", default="run")
  ap.add_argument("--out", default="/tmp")
  args = ap.parse_args(argv)

  import jax
  import numpy as np
  from core.data import pipeline as data_lib
  from core.evaluate import content_figures, scored_content
  from core.metrics.features import inception_extractor
  from core.metrics.fid import floor_metrics, sample_metrics
  from core.engine.generate import generate
  from core.data.images import save_grid
  from core.metrics.reference import box_downsample, reference_figures
  from core.experiment import resolve
  from core.train import Trainer

  cfg = resolve(json.loads(args.config))
  tr = Trainer(cfg)
  it = iter(data_lib.make_dataset(cfg.data, cfg.resolution, cfg.train.batch_size,
                                  seed=cfg.train.seed, split=cfg.data.split, train=True))
  state = tr.init(jax.random.key(cfg.train.seed))
  key = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)
  ext = inception_extractor(cfg.eval.inception_weights)
  refs = {s: reference_figures(cfg, s, ext, False) for s in (cfg.data.split, cfg.data.eval_split)}
  ref = refs[cfg.data.eval_split]
  fl, _ = floor_metrics(cfg.eval.num_samples, ref, refs[cfg.data.split])
  print(f"{args.tag} floor n={cfg.eval.num_samples} {cfg.resolution}px: FID {fl['fid']:.1f} "
        f"KID x10^3 {fl['kid'] * 1e3:.2f}", flush=True)
  content = scored_content(cfg)   # data made at a lower resolution: also scored there
  trained, step = 0.0, 0
  by_steps = bool(args.steps)
  for mark in (float(x) for x in (args.steps or args.minutes).split(",")):
    t0 = time.time()
    while (step < mark) if by_steps else (trained + (time.time() - t0) < mark * 60):
      state, m = tr.step(state, tr.global_batch(next(it)), key)
      step += 1
      if step % 20 == 0:   # keep the clock honest: at most 20 steps in flight
        jax.block_until_ready(m)
    jax.block_until_ready(m)
    trained += time.time() - t0
    for which in (("ema", "raw") if args.raw else ("ema",)):
      te = time.time()
      params = state.ema_params if which == "ema" else state.params
      feats, grid, feats_c = [], [], []
      for imgs, _, _ in generate(tr, params, cfg, cfg.eval.num_samples, progress=False):
        feats.append(ext(imgs)["pool"])
        grid.append(imgs)
        if content:
          feats_c.append(ext(box_downsample(imgs, content))["pool"])
      mt = sample_metrics(np.concatenate(feats), ref)
      at = ""
      if content:
        c = content_figures(cfg, np.concatenate(feats_c), ext, content, False)
        at = (f" | at {content}px: FID {c['fid_eval']:.1f} KID x10^3 {c['kid_eval'] * 1e3:.1f}"
              f" (floor {c['floor']['fid_eval']:.1f})")
      path = os.path.join(args.out, f"curve_{args.tag}_{which}_{mark:g}.png")
      save_grid(np.concatenate(grid)[:64], path)
      print(f"{args.tag} {which} min {trained / 60:.2f} step {step} images {step * cfg.train.batch_size} "
            f"loss {float(m['loss']):.4f} FID {mt['fid']:.1f} KID x10^3 {mt['kid'] * 1e3:.1f} "
            f"eval {time.time() - te:.0f} s{at}  {path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
