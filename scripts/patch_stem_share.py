"""How far a patching front-end has learnt to average: the share of its kernels' weight energy
on the k x k block mean, per finished run.

    python -m scripts.patch_stem_share RUN_DIR [RUN_DIR ...]

For content upsampled k-fold (data.content_resolution), the block mean of a k x k patch carries
the content at k^2 times the pixel SNR (the paper's section 3.1); for nearest upsampling it is
the sufficient statistic, so a network equivalent to one trained at the content resolution
has a stem that only averages (share 1). A random kernel has share 1/k^2. The head
(patch_out) is printed too: share 1 means every patch comes out as one colour. Used in
results/reference/cpu_tier_study.md, to test whether a model trained on upsampled content is
one trained at the content's resolution.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def block_mean_share(kernel: np.ndarray) -> float:
  """kernel (k, k, a, b): energy of its mean over the k x k window, times k^2, over its energy."""
  k = np.asarray(kernel, np.float64)
  mean = k.mean(axis=(0, 1), keepdims=True)
  return float((mean ** 2).sum() * k.shape[0] * k.shape[1] / (k ** 2).sum())


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("run_dirs", nargs="+")
  args = ap.parse_args(argv)
  import jax
  from core import devices
  from core.evaluate import eval_config, model_dirs
  from core.models.frontends import parse_frontend
  from core.runtime.checkpoint import restore_ema
  devices.setup()
  for run in args.run_dirs:
    name = os.path.basename(os.path.normpath(run))
    cfg = eval_config(run, {})
    kind, k = parse_frontend(cfg.model.frontend)
    if kind != "patch":
      print(f"{name}: model.frontend={cfg.model.frontend!r}, not patching; skipped")
      continue
    params = restore_ema(cfg, model_dirs(run, cfg)[0], log=lambda s: None).params
    # every k x k kernel (the stem patch_in and the head patch_out), named by its layer, in
    # the order of their parameter paths
    shares = sorted((jax.tree_util.keystr(path), path[-2].key, block_mean_share(v))
                    for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
                    if np.ndim(v) == 4 and np.shape(v)[:2] == (k, k))
    text = ", ".join(f"{layer} {s:.3f}" for _, layer, s in shares)
    print(f"{name}: {text} (random kernel: {1 / k ** 2:.3f})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
