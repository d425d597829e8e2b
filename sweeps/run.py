"""python -m sweeps.run ablations/X.yaml [tier=cpu] [seeds=N] [key=value ...] [options]

Expands the sweep file, checks every run's config and data before any training, then trains,
samples and evaluates each run (sweeps.execute) into results/<sweep>_<tier>/<run_id>/. Running the same command
again skips finished runs and resumes unfinished ones from their checkpoints. A failing run is
recorded with its error and the sweep goes on; the exit code is 1 if any run failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

from core.config import ConfigError, to_dict
from core.devices import setup
from core.runio import STOP, DirLock, LockHeld, read_json, run_state, write_json_atomic
from sweeps.execute import is_done, run_all, sweep_dir
from sweeps.spec import RunSpec, _flatten, expand, parse_overrides


def preflight(runs: list[RunSpec]) -> None:
  """Fails before any training on a model that cannot be built or data that cannot be had,
  naming the run, the key and the fix (core.experiment.check_runnable, once per data set)."""
  from core.experiment import check_runnable
  checked = set()
  for r in runs:
    d = r.config.data
    try:
      check_runnable(r.config, data=(d.source, d.path) not in checked)
    except ConfigError as e:
      raise ConfigError(f"run {r.run_id!r}: {e.args[0] if e.args else e}") from None
    checked.add((d.source, d.path))


def summary_table(meta: dict, sdir: str) -> str:
  head = (f"{'run':40s} {'state':8s} {'FID train':>9s} {'FID eval':>9s} {'bits/dim':>8s} "
          f"{'IS':>12s} {'img/s':>8s}")
  lines = [head, "-" * len(head)]
  for run in meta["runs"]:
    rd = os.path.join(sdir, run["run_id"])
    st = run_state(read_json(os.path.join(rd, "status.json"))) if os.path.isdir(rd) else "missing"
    ev = read_json(os.path.join(rd, "eval.json")) or {}
    f = lambda k, p=2: "" if ev.get(k) is None else f"{ev[k]:.{p}f}"
    is_ = "" if ev.get("is_mean") is None else f"{ev['is_mean']:.2f}+-{ev.get('is_std', 0):.2f}"
    lines.append(f"{run['run_id'][:40]:40s} {st:8s} {f('fid_train'):>9s} {f('fid_eval'):>9s} "
                 f"{f('bpd_eval', 3):>8s} {is_:>12s} {f('train_img_per_s', 0):>8s}")
  return "\n".join(lines)


def tpu_commands(file: str, meta: dict, runs: list[RunSpec], extra: list[str]) -> list[str]:
  """Per-run commands for a TPU VM pod slice: every host runs the same command; JAX joins them
  through jax.distributed.initialize() (train.distributed=true) and process 0 writes results."""
  ov = " ".join(extra)
  return [f"gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "
          f"\"cd ~/simplediff && python -m sweeps.run {file} tier={meta['tier']} "
          f"--only {r.run_id} train.distributed=true {ov}\"".replace("  ", " ") for r in runs]


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m sweeps.run", description=__doc__.split("\n\n")[0])
  ap.add_argument("file", help="sweep file, e.g. ablations/noise_shift.yaml")
  ap.add_argument("overrides", nargs="*", help="tier=paper|gpu|cpu|smoke, seeds=N, key=value")
  ap.add_argument("--dry-run", action="store_true", help="list the runs and their configs")
  ap.add_argument("--results", default="results", help="results root (default results/)")
  ap.add_argument("--only", action="append", default=[], help="run id or arm label (repeatable)")
  ap.add_argument("--tpu-commands", action="store_true",
                  help="print the per-host command of each run for a TPU VM pod slice")
  ap.add_argument("--no-progress", action="store_true",
                  help="no progress bars (training, sampling, reference statistics)")
  ap.add_argument("--redo", action="store_true",
                  help="runs whose folder holds other settings: move the old folder to "
                       "<sweep>/_replaced/ and run again (default: stop with an error)")
  ap.add_argument("--reevaluate", action="store_true",
                  help="evaluate finished runs again from their checkpoints (eval.json, "
                       "samples.png), e.g. after a change to evaluation; nothing is trained")
  ap.add_argument("--launcher", default="",
                  help="run through a Hydra launcher plugin: basic, joblib (local processes), "
                       "submitit_slurm, submitit_local; one job per trained model")
  ap.add_argument("--launcher-arg", action="append", default=[],
                  help="Hydra override for the launcher, e.g. hydra.launcher.n_jobs=2 or "
                       "hydra.launcher.partition=gpu (repeatable)")
  args = ap.parse_intermixed_args(argv)  # options may follow key=value overrides
  setup()
  try:
    opts, over = parse_overrides(args.overrides)
    meta, runs = expand(args.file, opts.get("tier", "paper"), over, opts.get("seeds"))
    if args.only:
      runs = [r for r in runs if r.run_id in args.only or r.arm in args.only]
      if not runs:
        raise ConfigError(f"--only {args.only} matches no run id or arm label")
    if args.tpu_commands:
      rest = [o for o in args.overrides if not o.startswith("tier=")]   # tpu_commands sets it
      print("\n".join(tpu_commands(args.file, meta, runs, rest)))
      return 0
    if args.launcher:
      from sweeps.launch import check_launcher
      check_launcher(args.launcher)
    if args.dry_run:
      import yaml
      for r in runs:
        print(f"# {r.run_id}  (arm {r.arm!r}, group {r.group!r}, seed {r.seed}, "
              f"model {r.train_key})")
        print(yaml.safe_dump(to_dict(r.config), sort_keys=False).rstrip())
        print()
      for arms in meta.get("shared_models", []):   # declared: the arms are one network here
        print(f"# one network on purpose (shared_models): {', '.join(map(repr, arms))}")
      print(f"{len(runs)} runs of {meta['sweep']} at tier {meta['tier']}")
      return 0
    preflight(runs)
    sdir = sweep_dir(args.results, meta)
    check_changes(runs, sdir, args.redo)
    try:   # a results folder that is a file, or cannot be written: before any run starts
      os.makedirs(sdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f"--results {args.results}: cannot make {sdir} ({e.strerror}); pass "
                        "--results a writable folder") from None
  except (ConfigError, KeyError, ValueError) as e:
    msg = e.args[0] if e.args else str(e)
    print(f"error: {msg}", file=sys.stderr)
    return 2

  old = read_json(os.path.join(sdir, "sweep.json")) or {}
  if args.only and old.get("runs"):  # keep the full listing when running a subset
    meta = {**meta, "runs": old["runs"]}
  # the commands that wrote this folder, without what only splits the work (--only, ...), so
  # that analysis.scorecard can say what reproduces a study
  cmd = " ".join(["python -m sweeps.run", args.file, *args.overrides])
  meta["commands"] = list(dict.fromkeys([*(old.get("commands") or []), cmd]))
  write_json_atomic(os.path.join(sdir, "sweep.json"), meta)
  t0 = time.time()
  if args.launcher:
    from sweeps.launch import launch
    launch(args.launcher, args.launcher_arg, sdir, args.file, args.overrides,
           [r for r in runs if not is_done(sdir, r)])
    failed = sum(not is_done(sdir, r) for r in runs)
  else:
    try:
      with _sigterm_as_interrupt():
        failed = run_all(runs, sdir, progress=not args.no_progress,
                         reevaluate=args.reevaluate)
    except KeyboardInterrupt as e:
      how = "SIGTERM" if e.args == ("SIGTERM",) else "Ctrl-C"
      print(f"\nstopped by {how}: finished runs are kept, the interrupted one resumes from its "
            "last checkpoint; rerun the same command to go on", file=sys.stderr)
      return 130
  print(f"\n{meta['title']} — tier {meta['tier']}, {time.time() - t0:.0f} s\n")
  print(summary_table(meta, sdir))
  return 1 if failed else 0


class _sigterm_as_interrupt:
  """SIGTERM (a scheduler's kill, `kill PID`) takes the same path as Ctrl-C: the run is marked
  interrupted and the sweep says how to resume, instead of dying silently."""

  def __enter__(self):
    import signal
    import threading
    self.old = None
    if threading.current_thread() is threading.main_thread():
      def raise_interrupt(signum, frame):
        # Python drops an exception raised where the signal lands inside a callback (XLA's
        # gc callback, a __del__): the flag makes the training and sampling loops raise it again.
        STOP.set()
        raise KeyboardInterrupt("SIGTERM")
      self.old = signal.signal(signal.SIGTERM, raise_interrupt)
      # ... and reports it as "Exception ignored in ... Traceback" on stderr; the flag already
      # carries it, so that report is noise beside the sweep's one message.
      self.old_hook = sys.unraisablehook

      def hook(u):
        if not (u.exc_type is KeyboardInterrupt and STOP.is_set()):
          self.old_hook(u)
      sys.unraisablehook = hook
    return self

  def __exit__(self, *exc):
    import signal
    if self.old is not None:
      signal.signal(signal.SIGTERM, self.old)
      sys.unraisablehook = self.old_hook
    STOP.clear()
    return False


def config_changes(run_dir: str, cfg) -> list[str]:
  """'key=recorded -> requested' for each setting in which run_dir's config.yaml differs from
  cfg. A key the record lacks counts only if cfg sets it off its default (a field added since
  the run with its default changes nothing); a key cfg lacks (a field removed) does not count."""
  import yaml
  from core.config import ExperimentConfig
  path = os.path.join(run_dir, "config.yaml")
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      old = _flatten(yaml.safe_load(f) or {})
  except (OSError, yaml.YAMLError) as e:
    return [f"config.yaml unreadable ({type(e).__name__})"]
  new, default = _flatten(to_dict(cfg)), _flatten(to_dict(ExperimentConfig()))
  out = []
  for k, v in new.items():
    if k in old:
      a, b = old[k], v
      if isinstance(a, list) or isinstance(b, list):
        a, b = list(a or []), list(b or [])
      if a != b:
        out.append(f"{k}={old[k]!r} -> {v!r}")
    elif k in default and v != default[k]:
      out.append(f"{k}=(unset) -> {v!r}")
  return out


def check_changes(runs: list[RunSpec], sdir: str, redo: bool) -> None:
  """A run folder made with other settings is never reused silently: error, or with --redo
  moved aside (kept, renamed) so that the run starts again."""
  changed = [(r, c) for r in runs for c in [config_changes(os.path.join(sdir, r.run_id),
                                                            r.config)] if c]
  if not changed:
    return
  if not redo:
    r, c = changed[0]
    more = f" (and {len(c) - 1} more keys)" if len(c) > 1 else ""
    others = f"; {len(changed) - 1} more runs differ too" if len(changed) > 1 else ""
    raise ConfigError(f"{os.path.join(sdir, r.run_id)} was made with other settings: {c[0]}"
                      f"{more}{others}; pass --results OTHER_FOLDER to keep both, --redo to move "
                      "the old runs aside and run them again, or python -m core.evaluate "
                      "RUN_DIR for another evaluation of the same model")
  for r, _ in changed:   # never move a folder from under the process that is writing it
    try:
      DirLock(os.path.join(sdir, r.run_id)).acquire().release()
    except LockHeld as e:
      raise ConfigError(f"--redo: {e}") from None
  stamp = time.strftime("%Y%m%dT%H%M%S")
  os.makedirs(os.path.join(sdir, "_replaced"), exist_ok=True)
  for r, _ in changed:
    os.replace(os.path.join(sdir, r.run_id), os.path.join(sdir, "_replaced",
                                                          f"{r.run_id}-{stamp}"))
    print(f"{r.run_id}: made with other settings, moved to _replaced/{r.run_id}-{stamp}")


if __name__ == "__main__":
  sys.exit(main())
