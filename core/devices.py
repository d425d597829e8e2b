"""Devices and meshes: one XLA CPU device per core, and the mesh a batch is sharded over.

XLA's CPU backend runs the small convolutions and elementwise work of the CPU-tier models on
about one core per device, whatever the thread pool holds: on 2 cores a unet_small training
step ran 1.5-1.8x faster over 2 CPU devices than on one, and so does sampling. So on CPU the
toolkit splits each batch over one device per core, the same jit/Mesh/NamedSharding path that
spreads it over GPUs or TPU chips.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

ENV = "SIMPLEDIFF_CPU_DEVICES"   # number of CPU devices; 0 leaves JAX's default (one)
ENV_COMPILE_CACHE = "SIMPLEDIFF_COMPILE_CACHE"   # 0: no persistent compilation cache


def cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def configure_cpu_devices(n: Optional[int] = None) -> int:
  """Asks JAX for `n` CPU devices (default $SIMPLEDIFF_CPU_DEVICES, else one per core).

  Must run before JAX starts its backends; afterwards (or where XLA_FLAGS already forces a
  device count, as the test suite does) it changes nothing. Returns the count it asked for,
  0 if it left JAX alone. Accelerator backends are unaffected: their devices stay the default.
  """
  import jax
  from jax._src import xla_bridge
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 0
  if xla_bridge.backends_are_initialized():
    return 0
  if n is None:
    env = os.environ.get(ENV, "").strip()
    try:
      n = int(env) if env else cpu_cores()
    except ValueError:
      raise ValueError(f"${ENV}={env!r} must be a whole number of CPU devices (0: JAX's "
                       "default)") from None
  if n <= 0:
    return 0
  jax.config.update("jax_num_cpu_devices", int(n))
  return int(n)


def setup() -> None:
  """The process's device setup: one CPU device per core and the persistent compilation cache.
  Entry points call it first, before anything starts JAX's backends; the first mesh calls it
  too (devices_for_batch), for library use. Idempotent; importing the toolkit does not do it, so
  reading results needs no JAX."""
  if not _SET_UP:
    configure_cpu_devices()
    configure_compilation_cache()
    _SET_UP.append(True)


_SET_UP: list = []


def devices_for_batch(batch: int, devices: Optional[Sequence] = None) -> list:
  """The devices a batch is split over: all of them, or on CPU the most that divide `batch`.

  An accelerator mesh that does not divide the batch is the user's error (train raises); CPU
  devices are ours, one per core, so a batch of 6 on 4 cores runs on 3 instead of failing.
  """
  import jax
  setup()
  devices = list(devices if devices is not None else jax.devices())
  # Several processes: every one must hold a share of the mesh, so no trimming.
  if devices and devices[0].platform == "cpu" and batch > 0 and jax.process_count() == 1:
    k = max(d for d in range(1, len(devices) + 1) if batch % d == 0)
    return devices[:k]
  return devices


def make_mesh(devices=None, batch: Optional[int] = None):
  """A 1-D Mesh with axis 'data' over `devices` (default: those devices_for_batch picks)."""
  from jax.sharding import Mesh
  if devices is None and batch is not None:
    devices = devices_for_batch(batch)
  import jax
  setup()
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ("data",))


def configure_compilation_cache() -> str:
  """JAX's persistent compilation cache in the toolkit's cache folder (<cache>/jax), so that a
  second run of the same programs (a resumed run, the next seed, the test suite) skips XLA's
  compilation, most of a smoke run's time. Off with $SIMPLEDIFF_COMPILE_CACHE=0; a cache folder
  the user gave JAX ($JAX_COMPILATION_CACHE_DIR) is left as it is. Returns the folder, "" if off.
  """
  import jax
  if os.environ.get(ENV_COMPILE_CACHE, "1").strip().lower() in ("0", "false", "no", "off"):
    return ""
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or ""
  if not path:
    from core.runio import cache_dir
    path = cache_dir("jax")
    jax.config.update("jax_compilation_cache_dir", path)
  # Every program, however small: a smoke run is many compilations of a fraction of a second
  # each, and reading one back is faster than compiling it (a threshold also made the warm run
  # write programs the cold run had compiled just under it, so "warm" depended on load).
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path
