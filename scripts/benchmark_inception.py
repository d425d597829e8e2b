"""Inception (the FID network) images/s on this machine, side by side in one process.

    python -m scripts.benchmark_inception [--per-device 1,4,16,32] [--reps 3]

For each batch per device and each compile variant (XLA's default, and without YNNPACK's
fusions: core.metrics.features.CPU_COMPILER_OPTIONS), alternating so that a load that comes and goes
falls on all of them: images/s, GFLOP/s (XLA's count of the network's FLOPs) and the share of
the float32 matmul ceiling measured in the same run, and the largest difference of the pool_3
features from the first variant's, relative to their largest value (must stay below 1e-5).
The FID weights where they are installed (core.metrics.inception_weights), else random ones.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--per-device", default="1,4,16,32", help="batch per device, comma-separated")
  ap.add_argument("--reps", type=int, default=3, help="timed calls per variant and batch")
  a = ap.parse_args(argv)
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from analysis.xla_cost import matmul_peak, traced_flops
  from core.devices import make_mesh
  from core.metrics.features import CPU_COMPILER_OPTIONS
  from core.metrics.inception import InceptionV3
  from core.metrics.inception_weights import load_inception_params
  net = InceptionV3(with_logits=False)
  try:
    params, source = load_inception_params(None, need_logits=False)
  except Exception as e:   # no weights here: speed only
    print(f"no FID weights ({str(e)[:80]}): random weights")
    params, source = jax.jit(lambda k: net.init(k, np.zeros((1, 299, 299, 3), np.float32)))(
        jax.random.key(0))["params"], "random"
  print(f"weights: {source}")
  mesh = make_mesh()
  n_dev = mesh.devices.size
  params = jax.device_put(params, NamedSharding(mesh, P()))
  rows = NamedSharding(mesh, P("data"))
  base = {"xla_backend_optimization_level": 3}
  variants = {"XLA default": base, "no YNN fusions": {**base, **CPU_COMPILER_OPTIONS}}
  fns = {k: jax.jit(lambda p, x: net.apply({"params": p}, x)["pool"], compiler_options=o)
         for k, o in variants.items()}
  peaks = []
  print(f"{n_dev} devices ({jax.devices()[0].device_kind})")
  print(f"{'batch/device':>12s} {'variant':16s} {'img/s':>7s} {'ratio':>6s} {'GFLOP/s':>8s} "
        f"{'of ceiling':>10s} {'max |d|/max|f|':>15s}")
  for per in (int(v) for v in a.per_device.split(",")):
    batch = per * n_dev
    x = jax.device_put(np.random.default_rng(0).uniform(-1, 1, (batch, 299, 299, 3))
                       .astype(np.float32), rows)
    flops = traced_flops(jax.jit(lambda p, v: net.apply({"params": p}, v)).trace(params, x))
    feats = {k: np.asarray(f(params, x)) for k, f in fns.items()}   # compiles
    times = {k: [] for k in fns}
    for _ in range(a.reps):
      peaks.append(matmul_peak(2048, "float32", reps=5)["flops_per_s"])
      for k, f in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(f(params, x))
        times[k].append(time.perf_counter() - t)
    peak = statistics.median(peaks)
    first = next(iter(fns))
    for k in fns:
      dt = statistics.median(times[k])
      ref = statistics.median(times[first])
      diff = float(np.abs(feats[k] - feats[first]).max() / np.abs(feats[first]).max())
      print(f"{per:12d} {k:16s} {batch / dt:7.2f} {ref / dt:6.2f} {flops / dt / 1e9:8.1f} "
            f"{flops / dt / peak:10.1%} {diff:15.2e}", flush=True)
  print(f"ceiling: float32 matmul 2048^2, median of this run's {len(peaks)} measurements: "
        f"{statistics.median(peaks) / 1e9:.0f} GFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
