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


# The longest tests first (measured in the CI's fresh clone, 2026-12-07: 40-130 s each), so
# that xdist's two workers start them early and end together on short ones: on 2 cores the
# suite's wall time is its CPU time over 2 plus the last worker's tail. (Not test_generation's
# memorising test: its mutation tests reuse its trained model where they run beside it.)
_LONGEST = ("test_cascade_sweep_end_to_end_at_smoke", "test_evaluate_a_finished_run_without_retraining",
            "test_sweep_report_rows_reference_files_and_tables",
            "test_killed_sweep_completes_on_rerun_with_each_result_once",
            "test_a_run_another_process_holds_is_skipped_untouched_then_done_on_rerun",
            "test_nan_loss_stops_and_keeps_last_good_checkpoint")


def pytest_collection_modifyitems(config, items):
  items.sort(key=lambda it: it.name.split("[")[0] not in _LONGEST)   # stable: the rest in order
