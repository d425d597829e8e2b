"""The training engine: one jitted step over a device Mesh, orbax checkpoints, JSONL metrics.

`train(cfg, model_dir)` writes a model directory (config.yaml, ckpt/, metrics.jsonl) and
nothing else; `core.runtime.checkpoint.restore_ema(cfg, model_dir)` is what evaluation reads back from
it (the EMA parameters of the newest checkpoint, without the data pipeline or this module). `python -m core.train
key=value ...` is train() through Hydra. Data parallel over the mesh axis 'data'; with train.fsdp the
parameters, EMA and optimiser state are sharded over that axis too. Randomness of step k is
fold_in(key, k), and the data iterator's state is checkpointed, so a resumed run reproduces an
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from core.runtime import phema

from core.data import pipeline
from core.runtime.checkpoint import (checkpoint_manager, restore_latest, save_checkpoint,
                                     save_phema_snapshot)
from core.config import ExperimentConfig, to_dict
from core.diffusion.process import diffusion_loss
from core.runtime.log import MetricsWriter, check_backends, images_per_s
from core.runio import STOP, DirLock, write_yaml_atomic
from core.runtime.state import StateSpec, TrainState, ema_decay, learning_rate


class NonFiniteLossError(FloatingPointError):
  pass


class Trainer(StateSpec):
  """A StateSpec with the jitted training step for one experiment config."""

  def __init__(self, cfg: ExperimentConfig, mesh: Optional[Mesh] = None):
    super().__init__(cfg, mesh)
    # The schedule's numbers are an input, not constants: arms that differ only in the schedule
    # (table 2, eq. 6) compile one program, which the persistent compilation cache serves.
    self.schedule_args = jax.device_put(self.schedule.args(), self.replicated)
    self.jit_step = jax.jit(self._step, in_shardings=(self.state_sharding, self.batch_sharding,
                                                      self.replicated, self.replicated),
                            out_shardings=(self.state_sharding, self.replicated),
                            donate_argnums=(0,))

  def step(self, state: TrainState, batch, key):
    """One training step (jitted): (new state, metrics)."""
    return self.jit_step(state, batch, key, self.schedule_args)

  def loss(self, params, batch, key, schedule_args=None):
    """The training loss of one batch; `key` is the step's key; schedule_args: the schedule's
    numbers (its own where None)."""
    # split(key, 4)[:3] equals split(key, 3) with JAX's partitionable threefry (the default).
    k_loss, k_drop, k_label, k_cond = jax.random.split(key, 4)
    labels = batch.get("label")
    nc = self.cfg.model.num_classes
    if labels is not None and nc > 0 and self.cfg.train.label_dropout > 0:
      drop = jax.random.bernoulli(k_label, self.cfg.train.label_dropout, labels.shape)
      labels = jnp.where(drop, -1, labels)
    elif nc == 0:
      labels = None
    cond = self.task.train(batch, k_cond)
    denoise = lambda z, logsnr: self.apply(params, z, logsnr, labels, train=True, rng=k_drop,
                                           **cond)
    schedule = self.schedule if schedule_args is None else self.schedule.at(schedule_args)
    return diffusion_loss(denoise, batch["image"], k_loss, schedule, self.cfg.loss,
                          self.cfg.model.prediction)

  def _step(self, state: TrainState, batch, key, schedule_args):
    step_key = jax.random.fold_in(key, state.step)
    (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, batch,
                                                                    step_key, schedule_args)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay(self.cfg.optim, state.step)
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
    # Loss per quarter of t: where in the noise range the model still has to learn.
    t, per = aux["t"], aux["loss_per_example"]
    quarter = jnp.clip((t * 4).astype(jnp.int32), 0, 3)
    onehot = jax.nn.one_hot(quarter, 4)
    q_loss = (onehot * per[:, None]).sum(0) / jnp.maximum(onehot.sum(0), 1)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               **{f"loss_q{i}": q_loss[i] for i in range(4)}}
    new = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    if self.phema_gammas:
      t = (state.step + 1).astype(jnp.float32)   # the step this update makes
      new = new.replace(phema=tuple(
          jax.tree.map(lambda e, p, b=phema.power_beta(g, t): b * e + (1 - b) * p, prof, params)
          for g, prof in zip(self.phema_gammas, state.phema)))
    return new, metrics

  def global_batch(self, local: dict) -> dict:
    """Process-local numpy batch -> global arrays sharded over 'data'."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()}


def phema_every(cfg: ExperimentConfig) -> int:
  """The steps between post-hoc EMA snapshots (optim.phema_every; 0: train.steps // 20)."""
  return cfg.optim.phema_every or max(cfg.train.steps // 20, 1)


def phema_due(cfg: ExperimentConfig, step: int) -> bool:
  """Whether training keeps a post-hoc EMA snapshot at `step`: every phema_every steps and
  at the last, the step evaluation reconstructs at."""
  return cfg.optim.phema and (step % phema_every(cfg) == 0 or step == cfg.train.steps)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class TrainResult:
  trainer: Trainer
  state: TrainState
  steps_run: int
  images_per_s: float
  train_time_s: float


def init_distributed(cfg: ExperimentConfig) -> None:
  """jax.distributed.initialize() where train.distributed asks (once per process)."""
  t = cfg.train
  if not t.distributed or jax.distributed.is_initialized():
    return
  kw = {}
  if t.coordinator_address:
    kw = dict(coordinator_address=t.coordinator_address, num_processes=t.num_processes,
              process_id=t.process_id)
  jax.distributed.initialize(**kw)  # with no arguments: TPU VM or SLURM auto-detection


def train(cfg: ExperimentConfig, workdir: str, *, mesh: Optional[Mesh] = None,
          stop_after: Optional[int] = None, log: Callable[[str], None] = print,
          on_log: Optional[Callable[[dict], None]] = None,
          lock_wait_s: float = 0.0, on_step: Optional[Callable] = None) -> TrainResult:
  """Trains to cfg.train.steps, resuming from workdir's newest checkpoint.

  stop_after: return after this many steps of this call (to test interruption).
  on_log: called on process 0 with each metrics row as it is written.
  lock_wait_s: workdir is owned by one process at a time (runio.DirLock); another live owner
  raises LockHeld at once, or after this many seconds of waiting for it (math.inf: until it is
  done, then this call resumes from what it wrote). A multi-process run is owned by its launch.
  on_step: called on every process after each step as on_step(step, trainer, state), before
  that step's checkpoint (a learning curve, core.curve); its seconds are left out of the
  run's speed and training time.
  """
  init_distributed(cfg)
  if jax.process_count() > 1:
    return _train(cfg, workdir, mesh, stop_after, log, on_log, on_step)
  with DirLock(workdir, wait_s=lock_wait_s, on_wait=log):
    return _train(cfg, workdir, mesh, stop_after, log, on_log, on_step)


def _train(cfg, workdir, mesh, stop_after, log, on_log, on_step=None) -> TrainResult:
  is_main = jax.process_index() == 0
  check_backends(cfg.train.log_to)   # a metrics backend asked for but missing: before any work
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    write_yaml_atomic(os.path.join(workdir, "config.yaml"), to_dict(cfg))
  trainer = Trainer(cfg, mesh)
  tc = cfg.train
  nproc = jax.process_count()
  if tc.batch_size % trainer.mesh.devices.size:
    raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the "
                     f"{trainer.mesh.devices.size} devices of the mesh")
  ds = pipeline.make_dataset(cfg.data, cfg.resolution, tc.batch_size // nproc, seed=tc.seed,
                             split=cfg.data.split, train=True,
                             process_index=jax.process_index(), process_count=nproc,
                             progress=tc.progress and is_main)
  it = iter(ds)
  mngr = checkpoint_manager(workdir, cfg)
  state, data = restore_latest(mngr, trainer, log)
  time_before = 0.0   # training seconds of earlier segments, so that a resumed run counts all
  if state is None:
    state = trainer.init(jax.random.key(tc.seed))
  else:
    pipeline.restore_iterator(it, data["iterator"])
    time_before = float(data.get("train_time_s", 0.0))
    log(f"resumed from step {int(state.step)}")
  start = int(state.step)
  key = jax.random.fold_in(jax.random.key(tc.seed), 1)
  # one writer of metrics.jsonl (and of train.log_to's backends, closed however this ends)
  with MetricsWriter(workdir, cfg, is_main=is_main, resume_step=start,
                     on_row=on_log) as metrics:
    from tqdm.auto import tqdm
    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, unit="step", disable=not (
        tc.progress and is_main), dynamic_ncols=True)
    finite = jnp.array(True)
    t0, last_t, last_step = time.perf_counter(), time.perf_counter(), start
    step = start
    steps_this_call = 0
    last_good = start
    while step < tc.steps:
      STOP.check()
      batch = trainer.global_batch(next(it))
      state, m = trainer.step(state, batch, key)
      step += 1
      steps_this_call += 1
      finite = finite & jnp.isfinite(m["loss"])
      bar.update(1)
      boundary = step % tc.log_every == 0 or step == tc.steps
      ckpt_due = step % tc.ckpt_every == 0 or step == tc.steps or (
          stop_after is not None and steps_this_call >= stop_after)
      if boundary or ckpt_due:
        if not bool(finite):
          bar.close()
          kept = (f"the last good checkpoint (step {last_good}) is intact in {workdir}/ckpt"
                  if last_good else "no checkpoint had been written yet")
          raise NonFiniteLossError(
              f"loss became {float(m['loss'])} by step {step}; stopped without saving; {kept} "
              "(a lower optim.lr or optim.grad_clip usually helps)")
      if boundary:
        now = time.perf_counter()
        ips = images_per_s((step - last_step) * tc.batch_size, now - last_t)
        last_t, last_step = now, step
        row = {"step": step, **{k: float(v) for k, v in m.items()},
               "lr": learning_rate(cfg.optim, step), "img_per_s": ips, "time": time.time()}
        metrics.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}")
      if phema_due(cfg, step):
        save_phema_snapshot(workdir, state, cfg.optim.phema_sigma_rels)
      if on_step is not None:
        h0 = time.perf_counter()
        on_step(step, trainer, state)
        spent = time.perf_counter() - h0   # not training: out of the speed and the time
        t0, last_t = t0 + spent, last_t + spent
      if ckpt_due:
        save_checkpoint(mngr, state, pipeline.iterator_state_to_json(it),
                        time_before + time.perf_counter() - t0)
        last_good = step
      if stop_after is not None and steps_this_call >= stop_after:
        break
    bar.close()
    mngr.close()
    elapsed = time.perf_counter() - t0
    return TrainResult(trainer=trainer, state=state, steps_run=steps_this_call,
                       images_per_s=images_per_s(steps_this_call * tc.batch_size, elapsed),
                       train_time_s=time_before + elapsed)


def main(argv=None) -> None:
  """Hydra entry point: python -m core.train model.preset=unet_tiny train.steps=100 ..."""
  from core.devices import setup
  from core.hydra_entry import run_hydra
  setup()
  from core.curve import curve_hook
  run_hydra(lambda cfg, workdir: train(cfg, workdir, on_step=curve_hook(cfg, workdir)), argv)


if __name__ == "__main__":
  main()
