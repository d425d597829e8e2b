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
# The process that made it (pytest itself, not its xdist workers) removes it at the end: each
# session's cache is about 30 MB.
_OWN_CACHE = ""
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="simplediff-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
