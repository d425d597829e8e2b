"""The U-ViT of simple diffusion (docs/paper.md §2.2, paper appendix B, the "2B" models).

Conv levels for all but the last entry of channel_multiplier (with U-Net skips), then a
downsample to the lowest resolution (16x16 in the paper), a projection to width
base * mult[-1] (2048), a learned position embedding and num_transformer_blocks pre-LN
transformer blocks, and back up through the conv levels.

Conditioning: each transformer block modulates its two LayerNorms with a scale/shift
projected from the embedding (adaptive LayerNorm). This is the transformer analogue of the
ResBlock's GroupNorm scale/shift, so both halves of the network see logSNR (and the class)
the same way, at every block rather than once at the input; it costs 4 * width * emb_channels
per block, and lands the paper presets at ~2.1B parameters ("2B").
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from core.config import ConfigError, ModelConfig
from core.models.layers import (F32, ConditionEmbedding, Head, MultiHeadAttention, Stem,
                                compute_dtype, prepare_input, swish, upsample, zeros_init)
from core.models.unet import _drop, down_path, level_resolutions, up_path, validate


def _layer_norm(x, name, affine: bool):
  return nn.LayerNorm(use_scale=affine, use_bias=affine, dtype=F32, param_dtype=F32,
                      name=name)(x.astype(F32))


class TransformerBlock(nn.Module):
  """Pre-LN block: x + MHA(adaLN(x)), x + MLP(adaLN(x)); dropout on both branches."""
  num_heads: int
  mlp_ratio: int
  dropout: float = 0.0
  dtype: jnp.dtype = F32
  deterministic: bool = True

  @nn.compact
  def __call__(self, h, emb):
    b, n, c = h.shape
    # Zero-init modulation: scale 0, shift 0, so every block starts as plain pre-LN.
    mod = nn.Dense(4 * c, dtype=self.dtype, param_dtype=F32, kernel_init=zeros_init,
                   name="ada_ln")(swish(emb)).astype(F32)[:, None, :]
    s1, b1, s2, b2 = jnp.split(mod, 4, axis=-1)
    drop = nn.Dropout(self.dropout, deterministic=self.deterministic)

    x = _layer_norm(h, "ln_attn", affine=False) * (1 + s1) + b1
    x = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attn")(x.astype(self.dtype))
    h = h + drop(x).astype(h.dtype)

    x = _layer_norm(h, "ln_mlp", affine=False) * (1 + s2) + b2
    x = nn.Dense(self.mlp_ratio * c, dtype=self.dtype, param_dtype=F32, name="mlp_in")(
      x.astype(self.dtype))
    x = drop(nn.gelu(x))
    x = nn.Dense(c, dtype=self.dtype, param_dtype=F32, kernel_init=zeros_init,
                 name="mlp_out")(x)
    h = h + drop(x).astype(h.dtype)
    return h, None


class UViT(nn.Module):
  cfg: ModelConfig
  resolution: int
  remat: bool = False   # rematerialise each transformer block (memory for compute)

  @nn.compact
  def __call__(self, z, logsnr, label=None, cond=None, cond_logsnr=None, train=False):
    cfg = self.cfg
    n_conv = len(cfg.channel_multiplier) - 1
    validate_uvit(cfg, self.resolution)
    dtype = compute_dtype(cfg)
    x = prepare_input(cfg, self.resolution, z, cond)
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, F32), (x.shape[0],))
    emb = ConditionEmbedding(cfg, name="embed")(logsnr, label, cond_logsnr)
    h = Stem(cfg, cfg.base_channels * cfg.channel_multiplier[0], name="stem")(x)
    h, hs = down_path(cfg, self.resolution, h, emb, train, n_conv, downsample_last=True)

    # Transformer at the lowest resolution.
    b, r, _, c_conv = h.shape
    width = cfg.base_channels * cfg.channel_multiplier[-1]
    t_res = level_resolutions(cfg, self.resolution)[-1]
    h = nn.Dense(width, dtype=dtype, param_dtype=F32, name="proj_in")(h.reshape(b, r * r, c_conv))
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, r * r, width), F32)
    # The residual stream stays float32 through the 36 blocks; it is only 256 tokens.
    h = h.astype(F32) + pos
    block = nn.remat(TransformerBlock, prevent_cse=False) if self.remat else TransformerBlock
    # nn.scan over identical blocks: one block is traced and compiled, parameters stacked.
    stack = nn.scan(block, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=nn.broadcast, length=cfg.num_transformer_blocks)
    h, _ = stack(cfg.num_heads, cfg.mlp_ratio, _drop(cfg, t_res), dtype, not train,
                 name="transformer")(h, emb)
    h = _layer_norm(h, "ln_out", affine=True)
    h = nn.Dense(c_conv, dtype=dtype, param_dtype=F32, name="proj_out")(h.astype(dtype))
    h = upsample(h.reshape(b, r, r, c_conv))

    h = up_path(cfg, self.resolution, h, hs, emb, train, n_conv)
    return Head(cfg, name="head")(h)


def validate_uvit(cfg: ModelConfig, resolution: int) -> None:
  if len(cfg.channel_multiplier) < 2:
    raise ConfigError("arch='uvit' needs model.channel_multiplier with at least 2 entries "
                      "(conv levels, then the transformer width)")
  if cfg.num_transformer_blocks < 1:
    raise ConfigError("arch='uvit' needs model.num_transformer_blocks >= 1")
  validate(cfg, resolution, len(cfg.channel_multiplier) - 1)
  width = cfg.base_channels * cfg.channel_multiplier[-1]
  if width % cfg.num_heads:
    raise ConfigError(f"model.num_heads={cfg.num_heads} does not divide the transformer "
                      f"width {width}")
