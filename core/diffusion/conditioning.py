"""Conditioning tasks: what a model is given besides (z, logSNR, class), chosen by cond.task.

A task maps a training batch and a key to extra keyword arguments of the model (cond,
cond_logsnr, ...), and at sampling time the previous cascade stage's output and a key to the
same, so that the training loop and the samplers stay one for every task.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from core.diffusion import cdm
from core.config import ConfigError, ExperimentConfig
from core.registry import Registry
from core.diffusion.schedules import make_schedule


class Task(NamedTuple):
  train: Callable[[dict, jax.Array], dict]                    # (batch, key) -> model kwargs
  sample: Callable[[Optional[jnp.ndarray], jax.Array], dict]  # (lower stage's x, key) -> kwargs


TASKS: Registry[Callable[[ExperimentConfig], Task]] = Registry("conditioning task")


@TASKS.register("none")
def _none(cfg: ExperimentConfig) -> Task:
  return Task(train=lambda batch, key: {}, sample=lambda low, key: {})


@TASKS.register("super_res")
def _super_res(cfg: ExperimentConfig) -> Task:
  """CDM super-resolution (docs/paper.md §4.2): the low-res image, augmented, upsampled and
  concatenated on channels; its augmentation level s embedded as a logSNR."""
  cfg = cdm.own_stage(cfg)   # a cascade run's own stage, with its cascade.augment
  c, sp = cfg.cond, cfg.sampler
  # s lives on the lower stage's forward process: the run's schedule at the low resolution.
  aug_schedule = make_schedule(cfg.schedule, c.low_resolution)
  embed = cfg.model.cond_noise_embedding

  def kwargs(x_low, s):
    out = {"cond": cdm.upsample(x_low, cfg.resolution, c.upsample)}
    if embed:
      out["cond_logsnr"] = aug_schedule(jnp.broadcast_to(s, (x_low.shape[0],)))
    return out

  def train(batch, key):
    x_low = cdm.downsample(batch["image"], c.low_resolution)
    return kwargs(*cdm.augment_for_training(x_low, key, c, aug_schedule))

  def sample(low, key):
    # Noise only, no blur, at the searched s; truncated: `low` is already the lower stage's z_s.
    if low is None:
      raise ValueError("a super-resolution model samples from a lower stage's output: "
                       "core.runtime.generate.make_cascade_sampler")
    if not sp.cond_truncated:
      low = cdm.noise_augment(low, jax.random.normal(key, low.shape), sp.cond_s, aug_schedule)
    return kwargs(low, jnp.float32(sp.cond_s))

  return Task(train=train, sample=sample)


def validate(cfg: ExperimentConfig) -> None:
  """cond.task is known and the cond, cascade and model sections agree (a ConfigError)."""
  if cfg.cond.task not in TASKS:
    raise ConfigError(f"unknown cond.task {cfg.cond.task!r}; choose one of: "
                      f"{', '.join(TASKS.names())}")
  cdm.validate(cfg)


def truncated_at(cfg: ExperimentConfig) -> float:
  """Where the stage below cfg's stops sampling: cfg's s when cfg's stage samples truncated
  (its input is the lower stage's z_s), else 0 (a stage without noise augmentation never is)."""
  sp = cdm.own_stage(cfg).sampler
  return sp.cond_s if sp.cond_truncated else 0.0


def make_task(cfg: ExperimentConfig) -> Task:
  validate(cfg)
  return TASKS.get(cfg.cond.task)(cfg)


def repeat_batch(kwargs: dict, n: int) -> dict:
  """Tiles each conditioning array to batch n (guidance stacks the batch with itself)."""
  return {k: jnp.concatenate([v] * (n // v.shape[0])) if v.shape[0] != n else v
          for k, v in kwargs.items()}
