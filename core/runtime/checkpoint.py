"""Model directories' checkpoints: orbax save and restore of a TrainState (with the data
pipeline's state and the training seconds), and what evaluation reads back: restore_ema, the
EMA parameters of the newest readable checkpoint as a TrainedModel, without the data pipeline,
the optimiser's update or the training step (core.train is not imported).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from core.runtime import phema
from core.config import ExperimentConfig
from core.runtime.state import StateSpec, TrainState


_CPU_HANDLER = []


def checkpoint_manager(workdir: str, cfg: ExperimentConfig):
  """The orbax manager of workdir/ckpt (made if absent; keeps train.keep_ckpts)."""
  import orbax.checkpoint as ocp
  if jax.default_backend() == "cpu" and not _CPU_HANDLER:
    # CPU devices share host memory, so orbax's replica-parallel saving (its default off GPU)
    # only adds a compiled slice per array shape: seconds a checkpoint with fake devices.
    absl_log = logging.getLogger("absl")  # its "overriding jax.Array" warning is this choice
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
      absl_log.setLevel(level)
    _CPU_HANDLER.append(True)
  opts = ocp.CheckpointManagerOptions(max_to_keep=cfg.train.keep_ckpts, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "ckpt")), options=opts)


def save_checkpoint(mngr, state: TrainState, data_state: str, train_time_s: float = 0.0) -> None:
  """train_time_s: training seconds up to this step over every segment of a resumed run."""
  import orbax.checkpoint as ocp
  mngr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave({"iterator": data_state, "train_time_s": float(train_time_s)})),
      force=True)
  mngr.wait_until_finished()


def restore_latest(mngr, spec: StateSpec, log: Callable[[str], None] = print):
  """Newest readable checkpoint as (state, data): data holds 'iterator' (the data pipeline's
  state) and 'train_time_s' (training seconds up to it); falls back to older ones."""
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          spec.abstract_state, spec.state_sharding)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      out = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
      return out["state"], out["data"]
    except Exception as e:  # a torn write or a corrupt file: say so and try the one before
      aside = _move_aside(mngr, step)
      log(f"checkpoint at step {step} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
          f"kept as {aside}, falling back to the one before")
  return None, None


def _move_aside(mngr, step: int) -> str:
  """Renames an unreadable step's folder (kept for inspection) so that the step can be saved
  again; otherwise every rerun would fail on 'step already exists'."""
  src = os.path.join(str(mngr.directory), str(step))
  dst = f"{src}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
  if jax.process_index() == 0 and os.path.isdir(src):
    os.replace(src, dst)
  mngr.reload()
  return os.path.basename(dst)


def save_phema_snapshot(workdir: str, state, sigma_rels) -> None:
  """The tracked post-hoc EMA profiles of `state` into workdir/phema/ (process 0 writes; every
  process takes part in gathering sharded parameters)."""
  profiles = state.phema
  if not all(x.is_fully_addressable for x in jax.tree.leaves(profiles)):
    from jax.experimental import multihost_utils
    profiles = multihost_utils.process_allgather(profiles, tiled=True)
  if jax.process_index() == 0:
    phema.save_snapshot(workdir, int(state.step), jax.device_get(profiles), sigma_rels)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """What evaluation needs of a trained model directory: its EMA parameters and the model
  function (apply, schedule, task) that samples with them; no optimiser, no data."""
  cfg: ExperimentConfig
  params: Any           # the EMA parameters
  step: int
  train_time_s: float   # training seconds up to this checkpoint, over every segment
  num_params: int
  apply: Callable
  schedule: Any
  task: Any


def trained_step(cfg: ExperimentConfig, model_dir: str) -> int:
  """The step of model_dir's newest checkpoint (0: none), read without restoring it: a model
  at cfg.train.steps is finished and is not rebuilt to be evaluated."""
  if not os.path.isdir(os.path.join(model_dir, "ckpt")):
    return 0
  mngr = checkpoint_manager(model_dir, cfg)
  try:
    return max(mngr.all_steps(), default=0)
  finally:
    mngr.close()


def restore_ema(cfg: ExperimentConfig, model_dir: str,
                log: Callable[[str], None] = print) -> TrainedModel:
  """The EMA parameters of model_dir's newest readable checkpoint (older ones where it is not),
  as a TrainedModel. A ConfigError names the folder where there is no checkpoint."""
  spec = StateSpec(cfg)
  mngr = checkpoint_manager(model_dir, cfg)
  try:
    state, data = restore_latest(mngr, spec, log)
  finally:
    mngr.close()
  if state is None:
    from core.config import ConfigError
    raise ConfigError(f"{model_dir}/ckpt has no readable checkpoint")
  model = trained_model(spec, state, float(data.get("train_time_s", 0.0)))
  if cfg.ema.sigma_rel > 0:   # the post-hoc EMA of that length instead of the run's own
    model = dataclasses.replace(model, params=phema.reconstruct(
        model_dir, jax.device_get(state.ema_params), cfg.ema.sigma_rel, model.step))
  return model


def trained_model(spec: StateSpec, state: TrainState, train_time_s: float = 0.0) -> TrainedModel:
  """A state of spec's model (a Trainer's too) as a TrainedModel (its EMA parameters)."""
  return TrainedModel(cfg=spec.cfg, params=state.ema_params, step=int(state.step),
                      train_time_s=train_time_s,
                      num_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
                      apply=spec.apply, schedule=spec.schedule, task=spec.task)
