"""Denoising networks (docs/paper.md §2): build_model(cfg, resolution) -> flax.linen.Module.

Call: model.apply({'params': p}, z, logsnr, label=None, cond=None, cond_logsnr=None,
train=False, rngs={'dropout': key}) -> the prediction cfg.prediction names (v by default), z's
shape, float32.
"""
from __future__ import annotations

import functools
import math
from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from core.config import ModelConfig
from core.models.presets import PAPER_RESOLUTIONS, PRESETS, preset
from core.models.unet import UNet, level_resolutions
from core.models.unet import validate as _validate_unet
from core.models.uvit import UViT, validate_uvit
from core.registry import Registry

ARCHS: Registry = Registry("model architecture")


@ARCHS.register("unet")
def _build_unet(cfg: ModelConfig, resolution: int) -> nn.Module:
  _validate_unet(cfg, resolution, len(cfg.channel_multiplier))
  return UNet(cfg=cfg, resolution=resolution)


@ARCHS.register("uvit")
def _build_uvit(cfg: ModelConfig, resolution: int) -> nn.Module:
  validate_uvit(cfg, resolution)
  return UViT(cfg=cfg, resolution=resolution)


def build_model(cfg: ModelConfig, resolution: int) -> nn.Module:
  """The network for cfg.arch at `resolution`; bad configs raise ConfigError here. Its output
  is what cfg.prediction names (x, eps or v), turned into x_hat and eps_hat by
  core.diffusion.process.PREDICTIONS where it is used (the loss, the sampler; an unknown name
  is refused with the other names in core.experiment.check_names, so models need not know
  the diffusion maths)."""
  return ARCHS.get(cfg.arch)(cfg, resolution)


def _dummy_inputs(cfg: ModelConfig, resolution: int):
  z = jnp.zeros((1, resolution, resolution, cfg.in_channels), jnp.float32)
  return dict(
    z=z, logsnr=jnp.zeros((1,), jnp.float32),
    label=jnp.zeros((1,), jnp.int32) if cfg.num_classes > 0 else None,
    cond=(jnp.zeros((1, resolution, resolution, cfg.cond_channels), jnp.float32)
          if cfg.cond_channels > 0 else None),
    cond_logsnr=jnp.zeros((1,), jnp.float32) if cfg.cond_noise_embedding else None)


def _init_key(key: jax.Array) -> jax.Array:
  # XLA compiles threefry slowly: with a few hundred parameter leaves, jit(init) of even the
  # tiny presets took over a minute on 2 CPU cores. An RngBitGenerator ('rbg') key derived
  # from `key` compiles ~5x faster; init stays a deterministic function of `key` (on a given
  # backend and sharding).
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def init_params(cfg: ModelConfig, resolution: int, key: jax.Array):
  """Float32 parameters of build_model(cfg, resolution), initialised under jit."""
  model = build_model(cfg, resolution)
  inputs = _dummy_inputs(cfg, resolution)
  init = lambda k: model.init({"params": _init_key(k)}, **inputs, train=False)["params"]
  return jax.jit(init)(key)


@functools.lru_cache(maxsize=64)
def param_shapes(cfg: ModelConfig, resolution: int):
  """The parameter tree as jax.ShapeDtypeStruct leaves, through jax.eval_shape (cached)."""
  return jax.eval_shape(lambda k: init_params(cfg, resolution, k), jax.random.key(0))


def param_count(preset_or_cfg: Union[str, ModelConfig], resolution: int) -> int:
  """Number of parameters, through jax.eval_shape (nothing is allocated)."""
  cfg = preset(preset_or_cfg) if isinstance(preset_or_cfg, str) else preset_or_cfg
  shapes = param_shapes(cfg, resolution)
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))


__all__ = ["ARCHS", "PAPER_RESOLUTIONS", "PRESETS", "UNet", "UViT", "build_model",
           "init_params", "level_resolutions", "param_count", "param_shapes", "preset"]
