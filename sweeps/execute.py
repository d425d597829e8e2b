"""Executing a sweep's runs: train each stage if needed (or resume it), then evaluate the run
folder from its checkpoints (core.evaluate.evaluate_dir, the code `python -m core.evaluate`
runs), recording each run's state in its folder.

Shared by the in-process runner (sweeps.run) and the Hydra launcher's jobs (sweeps.launch),
neither of which imports the other for it. A run is owned by one process while it runs
(core.runio.DirLock); runs that share a trained model train it once, in
<results>/_models/<key> (core.experiment.model_dir).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback

from core.diffusion.cdm import stage_configs
from core.config import replace, to_dict
from core.experiment import model_dir as shared_model_dir
from core.runio import (STOP, DirLock, LockHeld, owner, read_json, run_done,
                        write_json_atomic, write_yaml_atomic)
from sweeps.spec import RunSpec


def sweep_dir(results: str, meta: dict) -> str:
  return os.path.join(results, f"{meta['sweep']}_{meta['tier']}")


def set_status(run_dir: str, state: str, **extra) -> None:
  write_json_atomic(os.path.join(run_dir, "status.json"),
                    {"state": state, "updated": time.time(), **extra})


def train_stages(r: RunSpec, sdir: str, on_step=None, progress: bool = True) -> None:
  """Trains each stage of a run that its model directory does not hold finished (a cascade's
  stages, base first); a finished model is not rebuilt (core.runtime.checkpoint.trained_step), so no data
  pipeline is made for it. on_step(step) follows training, counted over all stages."""
  from core.curve import curve_hook
  from core.runtime.checkpoint import trained_step
  from core.train import train
  done_before = 0
  configs = stage_configs(r.config)
  for c in configs:
    model_dir = shared_model_dir(sdir, c)   # <results>/_models/<key>, shared across sweeps
    if trained_step(c, model_dir) < c.train.steps:
      if not progress:   # --no-progress: the training bar too (train.progress is not in the key)
        c = replace(c, **{"train.progress": False})
      on_log = None if on_step is None else (
          lambda row, b=done_before: on_step(b + int(row["step"])))
      # Another process training the same model (a concurrent sweep sharing it): wait for it,
      # then resume from what it wrote, which is then finished.
      # a learning curve (eval.every) of the run's own samples: a single-stage run's model
      hook = curve_hook(c, model_dir) if len(configs) == 1 else None
      train(c, model_dir, on_log=on_log, lock_wait_s=math.inf, on_step=hook)
    done_before += c.train.steps


def run_one(r: RunSpec, sdir: str, progress: bool = True) -> dict:
  """Trains each stage if needed, then evaluates the run directory from its checkpoints
  through core.evaluate.evaluate_dir, as `python -m core.evaluate` does, into its eval.json;
  returns the figures. Runs that differ only in sampling (guidance scales, CDM's s) share
  their trained models."""
  import jax
  from core.evaluate import evaluate_dir
  from core.train import init_distributed
  init_distributed(r.config)   # first, so that only process 0 writes the run folder
  is_main = jax.process_index() == 0
  run_dir = os.path.join(sdir, r.run_id)
  os.makedirs(run_dir, exist_ok=True)
  if is_main:
    write_yaml_atomic(os.path.join(run_dir, "config.yaml"), to_dict(r.config))
  configs = stage_configs(r.config)
  total = sum(c.train.steps for c in configs)
  # who writes the run, and where its models are (analysis reads their metrics.jsonl there)
  who = {**owner(), "model_dirs": [os.path.relpath(shared_model_dir(sdir, c), run_dir)
                                   for c in configs]}
  status = set_status if is_main else (lambda *a, **k: None)
  status(run_dir, "running", step=0, steps=total, **who)
  train_stages(r, sdir, lambda step: status(run_dir, "running", step=step, steps=total, **who),
               progress)
  status(run_dir, "running", step=total, steps=total, phase="evaluating", **who)
  path = evaluate_dir(run_dir, progress=progress, record="eval.json")
  figures = read_json(path) if is_main else {}
  status(run_dir, "done", step=int((figures or {}).get("step", total)))
  return figures


def is_done(sdir: str, r: RunSpec) -> bool:
  return run_done(os.path.join(sdir, r.run_id))


def _owned(rd: str, distributed: bool):
  """The run folder's lock (runio.DirLock); a pod-slice run is owned by its launch instead."""
  return contextlib.nullcontext() if distributed else DirLock(rd)


def execution_order(runs: list[RunSpec]) -> list[RunSpec]:
  """Seed by seed, arms in the file's order within a seed: a study stopped part way (a session's
  end, a kill) leaves whole seeds of every arm, which pair, rather than all seeds of the first
  arms."""
  return sorted(runs, key=lambda r: r.seed)


def run_all(runs: list[RunSpec], sdir: str, progress: bool = True,
            reevaluate: bool = False) -> int:
  """Runs (or skips, when finished) each run in execution_order; returns the number that
  failed.
  reevaluate: finished runs are evaluated again from their checkpoints (a new eval.json and
  samples.png; nothing is trained).

  Each run is owned by one process while it runs: a run that another live process holds (the
  same command started twice, two sweeps on one results folder) is skipped, never written
  beside it."""
  failed, busy = 0, []
  runs = execution_order(runs)
  for i, r in enumerate(runs):
    STOP.check()
    rd = os.path.join(sdir, r.run_id)
    if is_done(sdir, r) and not reevaluate:
      print(f"[{i + 1}/{len(runs)}] {r.run_id}: done, skipped")
      continue
    with contextlib.ExitStack() as owned:   # the lock, when taken, is released on any exit
      try:
        owned.enter_context(_owned(rd, r.config.train.distributed))
      except LockHeld as e:
        print(f"[{i + 1}/{len(runs)}] {r.run_id}: in use by pid {e.holder.get('pid')} on "
              f"{e.holder.get('host')}, skipped", flush=True)
        busy.append(r.run_id)
        continue
      except OSError:
        pass   # the folder cannot be made (a file, read-only): run_one reports it
      if is_done(sdir, r) and not reevaluate:   # finished by the other process meanwhile
        print(f"[{i + 1}/{len(runs)}] {r.run_id}: done, skipped")
        continue
      print(f"[{i + 1}/{len(runs)}] {r.run_id} (arm {r.arm!r}, {r.config.resolution}px)",
            flush=True)
      failed += _run_recorded(r, sdir, rd, progress)
  if busy:
    print(f"{len(busy)} runs were in use by another process and skipped ({', '.join(busy)}); "
          "rerun this command when it has finished to complete the sweep", file=sys.stderr)
  return failed


def _run_recorded(r: RunSpec, sdir: str, rd: str, progress: bool) -> int:
  """run_one, with a failure recorded in the run folder; returns 1 if it failed."""
  failed = 0
  try:
    run_one(r, sdir, progress=progress)
  except KeyboardInterrupt:
    set_status(rd, "failed", error="interrupted")
    raise
  except Exception as e:  # recorded; the sweep goes on
    failed += 1
    err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
      os.makedirs(rd, exist_ok=True)
      with open(os.path.join(rd, "error.log"), "w") as f:
        f.write(traceback.format_exc())
      set_status(rd, "failed", error=err)
      print(f"  failed: {err} (traceback in {rd}/error.log)", file=sys.stderr)
    except OSError as e2:  # the run's folder itself is the problem (a file, read-only)
      print(f"  failed: {err}; could not record it in {rd} ({type(e2).__name__}: {e2})",
            file=sys.stderr)
  return failed
