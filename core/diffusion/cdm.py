"""Cascaded Diffusion Models, the multi-stage baseline (docs/paper.md §4; Ho et al. 2022).

Pure functions for the super-resolution input: area downsampling of the batch, upsampling back,
Gaussian blur and noise augmentation through the forward process at a level s; the augmentation
each stage trains with, by name (AUGMENTATIONS, cascade.augment); and `stage_configs`, which
turns a cascade run into one ordinary run config per stage.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from core.config import CascadeConfig, CondConfig, ConfigError, ExperimentConfig
from core.diffusion.process import _bcast, avg_pool_to, q_sample
from core.registry import Registry
from core.diffusion.schedules import Schedule

UPSAMPLE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos3")


def downsample(x, low_resolution: int):
  """The low-resolution image: area average of NHWC x to low_resolution (a linear map)."""
  return avg_pool_to(x, low_resolution)


def upsample(x, resolution: int, method: str = "bicubic"):
  """Back to resolution, to be concatenated on channels (docs/paper.md §4.1)."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, resolution, resolution, c), method=method)


def gaussian_blur(x, sigma, size: int = 3):
  """Separable Gaussian blur of NHWC x, reflect-padded; sigma a scalar or one per example."""
  r = size // 2
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
  k = jnp.arange(-r, r + 1, dtype=jnp.float32)
  w = jnp.exp(-0.5 * jnp.square(k[None, :] / sigma[:, None]))
  w = w / jnp.sum(w, axis=1, keepdims=True)                       # (B, size)
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    x = sum(_bcast(w[:, i], x) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
            for i in range(size))
  return x


def noise_augment(x, eps, s, schedule: Schedule):
  """z_s = alpha_s x + sigma_s eps at logSNR schedule(s); s = 0 is no augmentation (exactly x),
  as CDM's s = 0, not the clipped schedule's residual noise at t = 0."""
  s = jnp.broadcast_to(jnp.asarray(s, jnp.float32), (x.shape[0],))
  return jnp.where(_bcast(s > 0, x), q_sample(x, eps, schedule(s)), x)


def augment_for_training(x_low, key, cfg: CondConfig, schedule: Schedule):
  """CDM's conditioning augmentation of a low-res batch: blur on a fraction of the examples,
  then non-truncated Gaussian noise at s ~ U(noise_s_min, noise_s_max) per example (amortised
  over s; the model is told s). Returns (augmented low-res batch, s)."""
  k_blur, k_sigma, k_s, k_eps = jax.random.split(key, 4)
  n = x_low.shape[0]
  if cfg.blur_prob > 0:
    sigma = jax.random.uniform(k_sigma, (n,), minval=cfg.blur_sigma_min,
                               maxval=cfg.blur_sigma_max)
    on = jax.random.bernoulli(k_blur, cfg.blur_prob, (n,))
    x_low = jnp.where(_bcast(on, x_low), gaussian_blur(x_low, sigma, cfg.blur_size), x_low)
  s = jax.random.uniform(k_s, (n,), minval=cfg.noise_s_min, maxval=cfg.noise_s_max)
  eps = jax.random.normal(k_eps, x_low.shape, x_low.dtype)
  return noise_augment(x_low, eps, s, schedule), s


# Which of cond.*'s augmentations a super-resolution stage trains with (cascade.augment, one
# name per stage). CDM (Ho et al. 2022, section 4.2) found Gaussian noise best at its low
# stages (32 -> 64) and harmful at 128 and 256, where it blurs instead.
AUGMENTATIONS: Registry[Callable[[CondConfig], CondConfig]] = Registry("conditioning augmentation")


@AUGMENTATIONS.register("noise+blur")
def _noise_and_blur(c: CondConfig) -> CondConfig:
  return c


@AUGMENTATIONS.register("noise")
def _noise(c: CondConfig) -> CondConfig:
  return dataclasses.replace(c, blur_prob=0.0)


@AUGMENTATIONS.register("blur")
def _blur(c: CondConfig) -> CondConfig:
  return dataclasses.replace(c, noise_s_min=0.0, noise_s_max=0.0)


def _augmented(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
  """cfg as a super-resolution stage trained with augmentation `name`. A stage without noise
  augmentation is not told s and samples at s = 0 (sampler.cond_s is the noised stages' s)."""
  cond = AUGMENTATIONS.get(name)(cfg.cond)
  if cond.noise_s_max > 0:
    return dataclasses.replace(cfg, cond=cond)
  return dataclasses.replace(
      cfg, cond=cond, model=dataclasses.replace(cfg.model, cond_noise_embedding=False),
      sampler=dataclasses.replace(cfg.sampler, cond_s=0.0, cond_truncated=False))


def stage_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
  """One ordinary run config per stage, base first; [cfg] for a single-stage run.

  The lower stages keep the run's schedule, data, optimiser and sampler, so that s means the
  same noise level to the lower stage (truncated sampling) as to the augmentation. The base
  stage is a plain model (cascade.base_preset or this run's model without the conditioning
  channels); intermediate super-resolution stages use this run's model. Each super-resolution
  stage trains with its cascade.augment (default: cond.* as written). The cascade section is
  cleared in every stage, so that stages are keyed (sweeps.spec.train_key) by what they train.
  """
  res = cfg.cascade.stages
  if not res:
    return [cfg]
  out = []
  for i, r in enumerate(res + (cfg.resolution,)):
    if i == 0:
      model = dataclasses.replace(cfg.model, cond_channels=0, cond_noise_embedding=False)
      if cfg.cascade.base_preset:
        from core.models.presets import preset
        model = dataclasses.replace(preset(cfg.cascade.base_preset),
                                    preset=cfg.cascade.base_preset)
      train = dataclasses.replace(cfg.train, steps=cfg.cascade.base_steps or cfg.train.steps)
      c = dataclasses.replace(cfg, name=f"{cfg.name}/stage0", resolution=r, model=model,
                              train=train, cond=CondConfig(), cascade=CascadeConfig())
    else:
      c = dataclasses.replace(cfg, cond=dataclasses.replace(cfg.cond, low_resolution=res[i - 1]),
                              cascade=CascadeConfig())
      if cfg.cascade.augment:
        c = _augmented(c, cfg.cascade.augment[i - 1])
      if i < len(res):
        c = dataclasses.replace(c, name=f"{cfg.name}/stage{i}", resolution=r)
    out.append(c)
  return out


def own_stage(cfg: ExperimentConfig) -> ExperimentConfig:
  """The stage this run's own model is, as it trains and samples (its cascade.augment applied)."""
  return stage_configs(cfg)[-1] if cfg.cascade.augment else cfg


def validate(cfg: ExperimentConfig) -> None:
  """The cond, cascade and CDM sampler settings agree with each other and with the model."""
  c, m, sp = cfg.cond, cfg.model, cfg.sampler
  if c.task == "super_res":
    lr = c.low_resolution
    if lr < 1 or lr >= cfg.resolution or cfg.resolution % lr:
      raise ConfigError(f"cond.low_resolution={lr} must be positive, below resolution="
                        f"{cfg.resolution} and divide it (area downsampling)")
    if m.cond_channels != m.in_channels:
      raise ConfigError(f"cond.task=super_res concatenates the {m.in_channels}-channel low-res "
                        f"image: set model.cond_channels={m.in_channels} (got {m.cond_channels})")
    if c.upsample not in UPSAMPLE_METHODS:
      raise ConfigError(f"cond.upsample={c.upsample!r}; choose one of: "
                        f"{', '.join(UPSAMPLE_METHODS)}")
    if not 0.0 <= c.noise_s_min <= c.noise_s_max <= 1.0:
      raise ConfigError("cond.noise_s_min and cond.noise_s_max must satisfy 0 <= min <= max <= 1")
    noised = c.noise_s_max > 0 or sp.cond_s > 0
    if noised and not m.cond_noise_embedding and not cfg.cascade.augment:  # augment: per stage
      raise ConfigError("noise augmentation (cond.noise_s_max or sampler.cond_s > 0) needs "
                        "model.cond_noise_embedding=true: the model must be told s")
    if not 0.0 <= c.blur_prob <= 1.0 or not 0 < c.blur_sigma_min <= c.blur_sigma_max:
      raise ConfigError("cond.blur_prob must be in [0, 1] and 0 < blur_sigma_min <= "
                        "blur_sigma_max")
    if c.blur_size < 1 or c.blur_size % 2 == 0 or c.blur_size // 2 >= lr:
      raise ConfigError(f"cond.blur_size={c.blur_size} must be odd and below twice "
                        f"cond.low_resolution={lr}")
    if not 0.0 <= sp.cond_s < 1.0:
      raise ConfigError(f"sampler.cond_s={sp.cond_s} must be in [0, 1)")
  elif m.cond_channels:
    raise ConfigError(f"model.cond_channels={m.cond_channels} needs a conditioning input: set "
                      "cond.task=super_res and cond.low_resolution")
  stages = cfg.cascade.stages
  if stages:
    chain = stages + (cfg.resolution,)
    if c.task != "super_res" or c.low_resolution != stages[-1]:
      raise ConfigError(f"cascade.stages={list(stages)}: the last stage must be this run's "
                        f"input, set cond.task=super_res and cond.low_resolution={stages[-1]}")
    if any(a < 1 or b <= a or b % a for a, b in zip((1,) + chain, chain)):
      raise ConfigError(f"cascade.stages={list(stages)} must increase to resolution="
                        f"{cfg.resolution}, each dividing the next")
    if cfg.cascade.base_steps < 0:
      raise ConfigError("cascade.base_steps must be >= 0 (0: train.steps)")
    aug = cfg.cascade.augment
    if aug:
      if len(aug) != len(stages):
        raise ConfigError(f"cascade.augment={list(aug)} needs one name per super-resolution "
                          f"stage: {len(stages)} for cascade.stages={list(stages)}")
      bad = [a for a in aug if a not in AUGMENTATIONS]
      if bad:
        raise ConfigError(f"cascade.augment: unknown augmentation {bad[0]!r}; choose from: "
                          f"{', '.join(AUGMENTATIONS.names())}")
      sr = stage_configs(cfg)[1:]
      if sp.cond_s > 0 and not any(s.cond.noise_s_max > 0 for s in sr):
        raise ConfigError(f"sampler.cond_s={sp.cond_s}: no stage of cascade.augment="
                          f"{list(aug)} is noise-augmented; set sampler.cond_s=0")
      for s in sr:
        validate(s)   # each stage's own augmentation and sampling agree with its model
    from core.models import build_model
    for s in stage_configs(cfg)[:-1]:
      build_model(s.model, s.resolution)   # a lower stage's shapes fail here, not mid-sweep
  elif cfg.cascade.augment:
    raise ConfigError("cascade.augment names the augmentation of each super-resolution stage "
                      "of a cascade: set cascade.stages, or leave cascade.augment empty")
