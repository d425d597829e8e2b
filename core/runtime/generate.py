"""Sampling a trained model over the device mesh: the jitted sampler of one batch (each device
draws its share), a cascade's stages one after the other, and a stream of uint8 samples with
their global row indices, gathered across processes where there are several.

The model is a model function (ModelFn: apply, schedule, task), not a Trainer: evaluation
restores one from a checkpoint (core.runtime.checkpoint.restore_ema).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from core.diffusion.conditioning import repeat_batch, truncated_at
from core.config import ExperimentConfig, ScheduleConfig
from core.devices import make_mesh
from core.runio import STOP
from core.diffusion.samplers import sample
from core.diffusion.schedules import Schedule, as_schedule, make_schedule


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255]."""
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def local_rows(x) -> tuple[np.ndarray, np.ndarray]:
  """(this process's rows of a batch-sharded global array, their global row indices). One
  process: the whole array. Replicated shards of a row are taken once."""
  if x.is_fully_addressable:
    return np.asarray(x), np.arange(x.shape[0])
  parts = {}
  for sh in x.addressable_shards:
    start = sh.index[0].start or 0
    parts.setdefault(start, sh.data)
  starts = sorted(parts)
  rows = np.concatenate([np.asarray(parts[s]) for s in starts])
  idx = np.concatenate([np.arange(s, s + parts[s].shape[0]) for s in starts])
  return rows, idx


def gather_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Every process's rows of `a` (row i of this process is global row idx[i]), in global
  order, on every process; one process: `a` itself. The statistics of FID, KID and IS are then
  computed from exactly the features one process would have had."""
  if jax.process_count() == 1:
    return a
  from jax.experimental import multihost_utils
  all_a = np.asarray(multihost_utils.process_allgather(a, tiled=True))
  all_idx = np.asarray(multihost_utils.process_allgather(idx, tiled=True))
  return all_a[np.argsort(all_idx, kind="stable")]


def to_global(x, sharding):
  """A host array that every process holds alike -> a global array of `sharding`: device_put
  in one process; across processes, where device_put of host data would need every device to
  be local, from a callback."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def class_labels(n: int, num_classes: int, seed) -> Optional[np.ndarray]:
  """Balanced labels in a fixed random order (as the paper samples every class equally)."""
  if num_classes == 0:
    return None
  rng = np.random.default_rng(seed)
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


class ModelFn(Protocol):
  """What sampling needs of a trained model: the network's apply, its noise schedule and its
  conditioning task (core.runtime.checkpoint.TrainedModel; a Trainer has them too)."""
  schedule: Schedule
  task: Any

  def apply(self, params, z, logsnr, labels, *, train: bool, **cond): ...


def sampling_schedule_config(cfg: ExperimentConfig) -> ScheduleConfig:
  """The schedule config the sampler walks: the training one, or sampler.schedule's (with the
  training schedule's end points; a shifted one at sampler.schedule_noise_d, 0: training's)."""
  s = cfg.sampler
  if not s.schedule:
    return cfg.schedule
  return dataclasses.replace(cfg.schedule, name=s.schedule,
                             noise_d=s.schedule_noise_d or cfg.schedule.noise_d)


def sampling_schedule(cfg: ExperimentConfig, trained: Schedule) -> Schedule:
  """The schedule the sampler walks (sampling_schedule_config): `trained` itself where
  sampler.schedule is unset."""
  if not cfg.sampler.schedule:
    return trained
  return make_schedule(sampling_schedule_config(cfg), cfg.resolution)


def make_sampler(model: ModelFn, params, cfg: ExperimentConfig, batch: int,
                 t_end: float = 0.0, mesh=None, trajectory: bool = False) -> Callable:
  """A jitted function key, labels, low=None -> samples of one batch (floats for to_uint8).

  The batch is split over the mesh's 'data' axis (default: the devices that divide it, one per
  core on CPU), parameters replicated: each device draws its share. low: the lower cascade
  stage's output, for a super-resolution model (cond.task); t_end > 0 stops at z_{t_end}
  (truncated CDM augmentation of the next stage). trajectory: return (samples, trajectory) as
  core.diffusion.samplers.sample does.
  """
  schedule, task = as_schedule(sampling_schedule(cfg, model.schedule)), model.task
  shape = (batch, cfg.resolution, cfg.resolution, cfg.model.out_channels)
  mesh = mesh or make_mesh(batch=batch)
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jax.device_put(params, rep)
  sched = to_global(np.asarray(schedule.params, np.float32), rep)

  # Parameters are an argument, not a closure: closed-over arrays become constants of the
  # compiled program (slow to compile and held twice). So are the schedule's numbers: samplers
  # that differ only in the schedule are one program (core.diffusion.schedules).
  @functools.partial(jax.jit, out_shardings=None if trajectory else rows)
  def _draw(params, key_data, labels, low, schedule_args):
    key = jax.random.wrap_key_data(key_data)
    # A stream apart from sample()'s split(key), so a plain model's samples are unchanged.
    cond = task.sample(low, jax.random.fold_in(key, 2))

    def model_fn(z, logsnr, labels):
      return model.apply(params, z, logsnr, labels, train=False,
                           **repeat_batch(cond, z.shape[0]))
    return sample(model_fn, shape, key, schedule.at(schedule_args), cfg.sampler, labels=labels,
                  t_end=t_end,
                  sharding=rows, return_trajectory=trajectory, prediction=cfg.model.prediction)

  def args(key, labels, low=None):
    # Host inputs, the same on every process, become global arrays; `low` (a lower cascade
    # stage's output) already is one.
    def put(x):
      if x is None or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return x
      return to_global(x, rows)
    kd = to_global(np.asarray(jax.random.key_data(key)), rep)
    return params, kd, put(labels), put(low), sched

  def draw(key, labels, low=None, params=None):
    """params: other parameters of the same model (a learning curve's later EMA), drawn with
    the same compiled program."""
    a = args(key, labels, low)
    if params is not None:
      a = (jax.device_put(params, rep), *a[1:])
    return _draw(*a)
  draw.mesh = mesh
  # The compiled program's HLO text (scripts/profile_step.py names its ops with it).
  draw.lower = lambda key, labels, low=None: _draw.lower(*args(key, labels, low))
  draw.hlo_text = lambda key, labels, low=None: draw.lower(key, labels, low).compile().as_text()
  return draw


def make_cascade_sampler(stages, batch: int) -> Callable:
  """key, labels -> samples of the last stage, each stage conditioned on the one before.

  stages: (model, params, cfg) base first (docs/paper.md §4). A stage before a truncated
  super-resolution stage stops at that stage's sampler.cond_s.
  """
  draws = []
  for i, (model, params, cfg) in enumerate(stages):
    t_end = truncated_at(stages[i + 1][2]) if i + 1 < len(stages) else 0.0
    draws.append(make_sampler(model, params, cfg, batch, t_end=t_end))

  def draw(key, labels):
    x = None
    for d, k in zip(draws, jax.random.split(key, len(draws))):
      x = d(k, labels, x)
    return x
  return draw


def sample_key(cfg: ExperimentConfig, seed: int, stream: int = 0):
  """The key of a run's samples: a function of train.seed, the evaluation seed and the stream
  only, so every arm of a sweep at one seed draws from the same noise and labels (common
  random numbers: its arms' differences are paired). Stream 0 is what Inception scores; the
  oracle's extra samples are stream 1."""
  key = jax.random.fold_in(jax.random.key(cfg.train.seed), 2 + seed)
  return jax.random.fold_in(jax.random.fold_in(key, 0x5EED), stream) if stream else key


def generate(model: ModelFn, params, cfg: ExperimentConfig, num: int, seed: int = 0,
             progress: bool = True, desc: str = "sampling", lower=(), stream: int = 0,
             draw=None):
  """Yields (uint8 images, labels, global row indices) batches until `num` samples; the last
  batch is trimmed.

  lower: a cascade's lower stages as (model, params, cfg), base first; model, params and cfg
  are then its last super-resolution stage. stream: sample_key's. draw: a sampler of batch
  min(eval.batch_size, num) made before (make_sampler), reused instead of a new one.
  """
  from tqdm.auto import tqdm
  bs = min(cfg.eval.batch_size, num)
  if draw is not None:
    pass
  elif lower:
    draw = make_cascade_sampler([*lower, (model, params, cfg)], bs)
  else:
    draw = make_sampler(model, params, cfg, bs)
  labels_all = class_labels(-(-num // bs) * bs, cfg.model.num_classes,
                            [seed, stream] if stream else seed)
  key = sample_key(cfg, seed, stream)
  done = 0
  with tqdm(total=num, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
    for i in range(-(-num // bs)):
      STOP.check()
      lab = None if labels_all is None else labels_all[i * bs:(i + 1) * bs]
      x, idx = local_rows(draw(jax.random.fold_in(key, i), lab))
      take = min(bs, num - done)
      keep = idx < take
      yield (to_uint8(x[keep]), None if lab is None else lab[idx[keep]], done + idx[keep])
      done += take
      bar.update(take)
