"""Compile seconds of each arm's training step and sampler, arm after arm in one process with
an empty persistent compilation cache, as a sweep meets them.

    python -m scripts.benchmark_compile [ablations/noise_shift.yaml] [tier=cpu] [--group 256]

Arms whose programs are equal (core.diffusion.schedules: the schedule's numbers are an input) are served
by the cache after the first; the printed seconds say how much of each arm's start that saves.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("file", nargs="?", default="ablations/noise_shift.yaml")
  ap.add_argument("tier", nargs="?", default="tier=cpu")
  ap.add_argument("--group", default="", help="only the arms of this group")
  a = ap.parse_args()
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")
  from core.devices import setup
  setup()
  import jax
  import numpy as np
  from analysis.cost import abstract_step_args
  from core.runtime.generate import make_sampler
  from core.train import Trainer
  from sweeps.spec import expand
  _, runs = expand(a.file, a.tier.split("=", 1)[1])
  runs = [r for r in runs if r.seed == 0 and (not a.group or r.group == a.group)]
  print(f"{a.file} {a.tier}, {len(jax.devices())} devices, empty cache "
        f"{os.environ['JAX_COMPILATION_CACHE_DIR']}")
  print(f"{'run':32s} {'step s':>7s} {'sampler s':>9s}")
  total = 0.0
  for r in runs:
    cfg = r.config
    tr = Trainer(cfg)
    t = time.perf_counter()
    tr.jit_step.trace(*abstract_step_args(tr, cfg.train.batch_size)).lower().compile()
    step_s = time.perf_counter() - t
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tr.abstract_state.params)
    n = min(cfg.eval.batch_size, cfg.eval.num_samples)
    draw = make_sampler(tr, params, cfg, n)
    t = time.perf_counter()
    draw.lower(jax.random.key(0), np.zeros(n, np.int32)).compile()
    sample_s = time.perf_counter() - t
    total += step_s + sample_s
    print(f"{r.run_id:32s} {step_s:7.1f} {sample_s:9.1f}", flush=True)
  print(f"total {total:.1f} s")


if __name__ == "__main__":
  main()
