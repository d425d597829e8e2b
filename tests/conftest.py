import os

# 8 fake CPU devices so that sharding is tested without accelerators. Must precede jax's import.
# Backend optimisation level 0: compiling dominates these tiny models' tests on CPU (about 3x
# faster to compile, slower to run, which tests of a few steps do not notice).
_flags = os.environ.get("XLA_FLAGS", "")
for _f in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
  if _f.split("=")[0] not in _flags:
    _flags += " " + _f
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, shared with the subprocesses that tests
# start: runs of the same tiny config in several tests (and a resumed sweep) compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="simplediff-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
