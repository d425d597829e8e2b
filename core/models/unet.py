"""The U-Net of simple diffusion (docs/paper.md §2.1, paper appendix B).

DDPM layout: num_res_blocks[i] ResBlocks per down level, num_res_blocks[i] + 1 per up level on
concatenated skips (table 4's "12+13" at 16x16), attention after each block at
attn_resolutions, a (res, attn, res) middle at the lowest resolution. Resolutions are counted
after the front-end: U-Net 512 with DWT-2 has levels 128, 64, 32, 16, 8.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from core.config import ConfigError, ModelConfig
from core.models.frontends import frontend_factor
from core.models.layers import (AttnBlock, ConditionEmbedding, Head, ResBlock, Stem,
                                compute_dtype, downsample, prepare_input, upsample)


def working_resolution(cfg: ModelConfig, resolution: int) -> int:
  """The resolution of the first level, after the front-end."""
  try:
    f = frontend_factor(cfg.frontend)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if resolution % f:
    raise ConfigError(f"resolution {resolution} is not divisible by the factor {f} of "
                      f"model.frontend={cfg.frontend!r}")
  return resolution // f


def level_resolutions(cfg: ModelConfig, resolution: int) -> list[int]:
  """Feature resolution of every entry of channel_multiplier (the U-ViT's last is its
  transformer's), after validating that each halving divides evenly."""
  res = working_resolution(cfg, resolution)
  n = len(cfg.channel_multiplier)
  if n < 1:
    raise ConfigError("model.channel_multiplier is empty")
  if res % (2 ** (n - 1)):
    raise ConfigError(f"resolution {resolution} (working {res} after model.frontend="
                      f"{cfg.frontend!r}) cannot be halved {n - 1} times for "
                      f"model.channel_multiplier of length {n}")
  return [res // 2 ** i for i in range(n)]


def validate(cfg: ModelConfig, resolution: int, num_conv_levels: int) -> None:
  if len(cfg.num_res_blocks) != num_conv_levels:
    raise ConfigError(
      f"model.num_res_blocks has {len(cfg.num_res_blocks)} entries but arch={cfg.arch!r} "
      f"with model.channel_multiplier of length {len(cfg.channel_multiplier)} needs "
      f"{num_conv_levels}")
  if any(b < 0 for b in cfg.num_res_blocks) or any(m < 1 for m in cfg.channel_multiplier):
    raise ConfigError("model.num_res_blocks must be >= 0 and model.channel_multiplier >= 1")
  if not 0.0 <= cfg.dropout < 1.0:
    raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
  compute_dtype(cfg)
  level_resolutions(cfg, resolution)   # also checks model.frontend


def _drop(cfg: ModelConfig, res: int) -> float:
  # Table 3: dropout only in blocks whose feature map is at most dropout_max_res.
  return cfg.dropout if res <= cfg.dropout_max_res else 0.0


def down_path(cfg, resolution, h, emb, train, num_levels, downsample_last):
  """Conv levels going down; returns h and the skip stack (conv_in output first)."""
  dtype = compute_dtype(cfg)
  res_list = level_resolutions(cfg, resolution)
  hs = [h]
  for i in range(num_levels):
    ch, res = cfg.base_channels * cfg.channel_multiplier[i], res_list[i]
    for j in range(cfg.num_res_blocks[i]):
      h = ResBlock(ch, cfg.norm_groups, _drop(cfg, res), dtype, name=f"down{i}_res{j}")(
        h, emb, train)
      if res in cfg.attn_resolutions:
        h = AttnBlock(cfg.num_heads, cfg.norm_groups, dtype, name=f"down{i}_attn{j}")(h)
      hs.append(h)
    if i < num_levels - 1:
      h = downsample(h)
      hs.append(h)
    elif downsample_last:
      h = downsample(h)   # U-ViT: into the transformer; not a skip
  return h, hs


def up_path(cfg, resolution, h, hs, emb, train, num_levels):
  """Conv levels going up: num_res_blocks[i] + 1 blocks each on concatenated skips."""
  dtype = compute_dtype(cfg)
  res_list = level_resolutions(cfg, resolution)
  for i in reversed(range(num_levels)):
    ch, res = cfg.base_channels * cfg.channel_multiplier[i], res_list[i]
    for j in range(cfg.num_res_blocks[i] + 1):
      h = jnp.concatenate([h, hs.pop().astype(h.dtype)], axis=-1)
      h = ResBlock(ch, cfg.norm_groups, _drop(cfg, res), dtype, name=f"up{i}_res{j}")(
        h, emb, train)
      if res in cfg.attn_resolutions:
        h = AttnBlock(cfg.num_heads, cfg.norm_groups, dtype, name=f"up{i}_attn{j}")(h)
    if i > 0:
      h = upsample(h)
  assert not hs, "skip stack not consumed"
  return h


class UNet(nn.Module):
  cfg: ModelConfig
  resolution: int

  @nn.compact
  def __call__(self, z, logsnr, label=None, cond=None, cond_logsnr=None, train=False):
    cfg, n = self.cfg, len(self.cfg.channel_multiplier)
    validate(cfg, self.resolution, n)
    dtype = compute_dtype(cfg)
    x = prepare_input(cfg, self.resolution, z, cond)
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (x.shape[0],))
    emb = ConditionEmbedding(cfg, name="embed")(logsnr, label, cond_logsnr)
    h = Stem(cfg, cfg.base_channels * cfg.channel_multiplier[0], name="stem")(x)
    h, hs = down_path(cfg, self.resolution, h, emb, train, n, downsample_last=False)
    # Middle (res, attn, res) at the lowest resolution.
    ch, res = cfg.base_channels * cfg.channel_multiplier[-1], level_resolutions(
      cfg, self.resolution)[-1]
    h = ResBlock(ch, cfg.norm_groups, _drop(cfg, res), dtype, name="mid_res0")(h, emb, train)
    h = AttnBlock(cfg.num_heads, cfg.norm_groups, dtype, name="mid_attn")(h)
    h = ResBlock(ch, cfg.norm_groups, _drop(cfg, res), dtype, name="mid_res1")(h, emb, train)
    h = up_path(cfg, self.resolution, h, hs, emb, train, n)
    return Head(cfg, name="head")(h)
