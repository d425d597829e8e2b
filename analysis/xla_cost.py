"""What XLA says a program costs: FLOPs from its HLO cost analysis (a scan's body counted per
iteration), the compiled program's memory per device, the device's free memory, and the
matmul ceiling measured on this machine. analysis.cost applies them to training steps.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

MEMORY_FORMULA = "arguments + outputs + temporaries - aliased (XLA memory analysis, per device)"


# --- FLOPs: XLA's cost analysis, loops counted whole ------------------------------------

def cost_value(analysis, key: str = "flops") -> float:
  # cost_analysis() is best effort: a dict, a list of one dict (older jax), or None.
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or key not in analysis:
    return math.nan
  return float(analysis[key])


def _lowered_flops(closed_jaxpr) -> float:
  import jax
  from jax.extend.core import jaxpr_as_fun
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed_jaxpr.in_avals]
  return cost_value(jax.jit(jaxpr_as_fun(closed_jaxpr)).lower(*avals).cost_analysis())


def loop_extra_flops(jaxpr) -> float:
  """FLOPs that XLA's cost analysis leaves out of `jaxpr`: it counts a while loop's body
  once, a scan runs it `length` times. Nested scans are handled by recursion."""
  from jax.extend.core import jaxprs_in_params
  extra = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      body = eqn.params["jaxpr"]
      n = int(eqn.params["length"])
      unroll = eqn.params.get("unroll", 1)
      unroll = n if unroll is True else max(int(unroll), 1)
      # An unrolled scan holds `unroll` copies in its loop body, plus the remainder.
      counted = n if unroll >= n else unroll + n % unroll
      inner = loop_extra_flops(body.jaxpr)
      extra += (n - counted) * _lowered_flops(body) + n * inner
    else:
      for sub in jaxprs_in_params(eqn.params):
        extra += loop_extra_flops(sub)
  return extra


def traced_flops(traced) -> float:
  """FLOPs of a jax.stages.Traced function, every loop iteration counted (global, not per
  device: the module is read before SPMD partitioning)."""
  return cost_value(traced.lower().cost_analysis()) + loop_extra_flops(traced.jaxpr.jaxpr)


def matmul_peak(n: int = 2048, dtype: str = "float32", reps: int = 10) -> dict:
  """The device's measured ceiling: FLOP/s of a jitted n x n matmul (2 n^3 FLOPs), the median
  of `reps` timed calls after a warm-up, on the first device. Shares of it are what speed
  figures are reported as (one run, one machine, side by side)."""
  import jax
  import jax.numpy as jnp
  dev = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype) * 0.01, dev)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(a))
    times.append(time.perf_counter() - t)
  dt = float(np.median(times))
  return {"n": n, "dtype": dtype, "seconds": dt, "flops_per_s": 2.0 * n ** 3 / dt,
          "device": dev.device_kind}


# --- memory --------------------------------------------------------------------------------

def memory_figures(compiled) -> dict[str, float]:
  """Per-device bytes of a compiled executable; `peak` is MEMORY_FORMULA."""
  m = compiled.memory_analysis()
  if m is None:
    return {k: math.nan for k in ("arguments", "outputs", "temps", "aliased", "peak", "xla_peak")}
  out = {"arguments": float(m.argument_size_in_bytes), "outputs": float(m.output_size_in_bytes),
         "temps": float(m.temp_size_in_bytes), "aliased": float(m.alias_size_in_bytes)}
  out["peak"] = out["arguments"] + out["outputs"] + out["temps"] - out["aliased"]
  out["xla_peak"] = float(getattr(m, "peak_memory_in_bytes", 0) or math.nan)  # newer XLA only
  return out


def free_memory(devices) -> tuple[float, str]:
  """Bytes the step may use and where that figure comes from. CPU devices (also XLA's fake
  ones) share the host's memory, so the caller multiplies a per-device figure by their
  number."""
  d = devices[0]
  stats = d.memory_stats() if hasattr(d, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{d.platform} bytes_limit"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return float(line.split()[1]) * 1024, "host MemAvailable"
  except OSError:
    pass
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"
