"""FID and KID of one finished run under several sampler settings, side by side.

    python -m scripts.sampler_study RUN_DIR 'sampler.steps=64' 'sampler.steps=256' \
        'sampler.name=ddim sampler.steps=64' [--seeds 0,1]

Each quoted argument is one setting (space-separated sampler.* / eval.* / ema.* overrides of
the run's config.yaml, as `python -m core.evaluate` takes them). Each setting and each --seeds
value (eval.seed: the starting noise and labels) is one evaluation by core.evaluate.evaluate_dir,
the sweep's own, into RUN_DIR/evals/ (the bound off unless a setting asks eval.bound=true).
One line per setting and seed, then the mean over seeds; the data's floor at the same n first.
Evaluation time is wall time on this machine.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("run_dir")
  ap.add_argument("settings", nargs="+", help="one quoted group of key=value per setting")
  ap.add_argument("--seeds", default="0", help="evaluation seeds, comma-separated")
  args = ap.parse_args(argv)

  import numpy as np
  from core.config import ConfigError, parse_assignments
  from core.devices import setup
  from core.evaluate import evaluate_dir
  from core.runio import read_json
  setup()
  try:
    settings = [parse_assignments(s.split()) for s in args.settings]
    seeds = [int(s) for s in args.seeds.split(",")]
  except (ConfigError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  first = True
  for over in settings:
    label = " ".join(f"{k}={v}" for k, v in over.items()) or "(run's own)"
    fids, kids = [], []
    for seed in seeds:
      try:
        path = evaluate_dir(args.run_dir, {"eval.bound": False, **over, "eval.seed": seed},
                            progress=False)
      except (ConfigError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
      rec = read_json(path)
      if first:
        print(f"{args.run_dir}: step {rec['step']}, {rec['resolution']}px, "
              f"n={rec['num_samples']}; floor FID {rec['floor']['fid_eval']:.1f} KID x10^3 "
              f"{rec['floor']['kid_eval'] * 1e3:.2f}", flush=True)
        first = False
      fids.append(rec["fid_eval"])
      kids.append(rec["kid_eval"])
      print(f"  {label:44s} seed {seed}: FID {rec['fid_eval']:6.1f} KID x10^3 "
            f"{rec['kid_eval'] * 1e3:6.1f}  {rec['eval_time_s']:5.0f} s  {path}", flush=True)
    if len(seeds) > 1:
      print(f"  {label:44s} mean:   FID {np.mean(fids):6.1f} KID x10^3 "
            f"{np.mean(kids) * 1e3:6.1f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
