"""Building blocks shared by the U-Net and the U-ViT (docs/paper.md §2, paper appendix B).

Mixed precision: convolutions and dense layers compute in the config's dtype, parameters stay
float32, and normalisation, softmax and the network output are float32.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from core.config import ConfigError, ModelConfig
from core.models.frontends import dwt53, idwt53, parse_frontend

F32 = jnp.float32
zeros_init = nn.initializers.zeros


def compute_dtype(cfg: ModelConfig):
  if cfg.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype must be float32 or bfloat16, got {cfg.dtype!r}")
  return jnp.dtype(cfg.dtype)


def swish(x):
  return nn.swish(x)


class GroupNorm(nn.Module):
  """GroupNorm over (H, W, C / groups), in float32 whatever the compute dtype.

  Written out rather than nn.GroupNorm: a third of the tracing time of the paper U-Nets went
  into flax's general version, and param_count traces every preset.
  """
  groups: int
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.groups:
      raise ConfigError(f"model.norm_groups={self.groups} does not divide a layer's {c} "
                        "channels")
    scale = self.param("scale", nn.initializers.ones, (c,), F32)
    bias = self.param("bias", nn.initializers.zeros, (c,), F32)
    g, b = self.groups, x.shape[0]
    xf = x.astype(F32)
    spatial = tuple(range(1, x.ndim - 1))
    per_channel = (b,) + (1,) * (x.ndim - 2) + (c,)

    def group_mean(t):   # (B, C) -> each channel's group mean, (B, C)
      return jnp.repeat(t.reshape(b, g, c // g).mean(-1), c // g, axis=1)

    # Statistics reduce the spatial axes first, keeping channels the contiguous axis (XLA's CPU
    # reductions vectorise over it; the 5-D (..., g, C/g) view did not), then each group's
    # channels; two passes, as before. 1.10-1.18x a forward pass, measured side by side.
    mean = group_mean(jnp.mean(xf, axis=spatial))
    var = group_mean(jnp.mean(jnp.square(xf - mean.reshape(per_channel)), axis=spatial))
    # Applied as x * a + b with per-(example, channel) a, b: one elementwise pass over x.
    a = jax.lax.rsqrt(var + self.eps) * scale
    return xf * a.reshape(per_channel) + (bias - mean * a).reshape(per_channel)


def group_norm(x, groups: int, name: Optional[str] = None):
  return GroupNorm(groups, name=name)(x)


def sinusoidal_embedding(x, dim: int, min_freq: float = 1 / 16, max_freq: float = 16.0):
  """sin/cos features of a scalar per example, angular frequencies geometric in [min, max].

  The net is fed logSNR, not t (docs/paper.md §1.1). logSNR spans about [-25, 25] once shifted,
  so periods from 2 pi / 16 ~ 0.4 (resolves neighbouring sampler steps) to 2 pi * 16 ~ 100
  (monotone over the whole range) cover it; DDPM's t-embedding would waste half its features.
  """
  half = dim // 2
  freqs = jnp.exp(jnp.linspace(math.log(min_freq), math.log(max_freq), half, dtype=F32))
  args = x.astype(F32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ConditionEmbedding(nn.Module):
  """logSNR (+ class, + CDM augmentation level) -> one vector of emb_channels."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, logsnr, label=None, cond_logsnr=None):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    b = logsnr.shape[0]

    def mlp(x, name):
      x = nn.Dense(cfg.emb_channels, dtype=dtype, param_dtype=F32, name=f"{name}_dense0")(x)
      return nn.Dense(cfg.emb_channels, dtype=dtype, param_dtype=F32,
                      name=f"{name}_dense1")(swish(x))

    emb = mlp(sinusoidal_embedding(logsnr, cfg.base_channels), "logsnr")
    if cfg.num_classes > 0:
      # Row num_classes is the null class for classifier-free guidance; None means null.
      if label is None:
        label = jnp.full((b,), cfg.num_classes, jnp.int32)
      table = nn.Embed(cfg.num_classes + 1, cfg.emb_channels, dtype=dtype, param_dtype=F32,
                       name="class_embed")
      emb = emb + table(label.astype(jnp.int32))
    elif label is not None:
      raise ValueError("a label was passed to an unconditional model (model.num_classes=0)")
    if cfg.cond_noise_embedding:
      # CDM conditioning augmentation: the model is told the level s (docs/paper.md §4.2).
      if cond_logsnr is None:
        raise ValueError("model.cond_noise_embedding is set: pass cond_logsnr, shape (B,)")
      cond_logsnr = jnp.broadcast_to(jnp.asarray(cond_logsnr, F32), (b,))
      emb = emb + mlp(sinusoidal_embedding(cond_logsnr, cfg.base_channels), "cond_logsnr")
    return emb


class MultiHeadAttention(nn.Module):
  """Self-attention over (B, N, C) tokens; logits and softmax in float32."""
  num_heads: int
  dtype: jnp.dtype = F32
  dropout: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    if c % self.num_heads:
      raise ConfigError(f"model.num_heads={self.num_heads} does not divide width {c}")
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=F32, name="qkv")(x)
    # Heads next to the batch, (B, heads, N, hd): both products are then plain batched matrix
    # products. Contracting in the (B, N, heads, hd) layout was 1.4-2.5x slower on CPU in a
    # forward pass (scripts/profile_step.py put attention at a fifth of sampling before).
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in
               jnp.split(qkv.reshape(b, n, 3 * self.num_heads, hd), 3, axis=2))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=F32) / math.sqrt(hd)
    w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", w, v), 1, 2).reshape(b, n, c)
    # Zero-init: every residual branch starts as the identity (as DDPM's proj_out).
    return nn.Dense(c, dtype=self.dtype, param_dtype=F32, kernel_init=zeros_init,
                    name="out")(out)


class ResBlock(nn.Module):
  """GN, swish, conv3x3, GN * (1 + scale) + shift from emb, swish, dropout, conv3x3, + skip."""
  features: int
  norm_groups: int
  dropout: float = 0.0
  dtype: jnp.dtype = F32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    h = swish(group_norm(x, self.norm_groups, name="norm0"))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, param_dtype=F32, name="conv0")(h)
    ss = nn.Dense(2 * self.features, dtype=self.dtype, param_dtype=F32,
                  name="emb_proj")(swish(emb))
    scale, shift = jnp.split(ss.astype(F32)[:, None, None, :], 2, axis=-1)
    h = group_norm(h, self.norm_groups, name="norm1") * (1 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(swish(h))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, param_dtype=F32,
                kernel_init=zeros_init, name="conv1")(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype, param_dtype=F32, name="skip")(x)
    return x.astype(self.dtype) + h.astype(self.dtype)


class AttnBlock(nn.Module):
  """Pre-GroupNorm self-attention over the H*W positions, residual."""
  num_heads: int
  norm_groups: int
  dtype: jnp.dtype = F32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = group_norm(x, self.norm_groups, name="norm").reshape(b, hh * ww, c)
    h = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attn")(h)
    return x + h.reshape(b, hh, ww, c).astype(x.dtype)


def downsample(x):
  """Average pooling 2x2 (docs/paper.md §2.1: average-pool downsampling, no parameters)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample(x):
  """Nearest-neighbour 2x; the next ResBlock's convolutions do the smoothing."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Stem(nn.Module):
  """Front-end (none | dwt:L | patch:k, docs/paper.md §2.3) and the input convolution."""
  cfg: ModelConfig
  features: int

  @nn.compact
  def __call__(self, x):
    kind, arg = parse_frontend(self.cfg.frontend)
    dtype = compute_dtype(self.cfg)
    if kind == "patch":
      # Patching: a k x k conv with stride k is the input layer itself.
      return nn.Conv(self.features, (arg, arg), strides=(arg, arg), padding="VALID",
                     dtype=dtype, param_dtype=F32, name="patch_in")(x)
    if kind == "dwt":
      x = dwt53(x.astype(F32), arg)   # linear, invertible: (H/2^L, W/2^L, C 4^L)
    return nn.Conv(self.features, (3, 3), dtype=dtype, param_dtype=F32, name="conv_in")(x)


class Head(nn.Module):
  """GN, swish, output conv (or transposed patch conv), then the inverse front-end; float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h):
    cfg = self.cfg
    kind, arg = parse_frontend(cfg.frontend)
    dtype = compute_dtype(cfg)
    h = swish(group_norm(h, cfg.norm_groups, name="norm_out"))
    if kind == "patch":
      out = nn.ConvTranspose(cfg.out_channels, (arg, arg), strides=(arg, arg), padding="VALID",
                             dtype=dtype, param_dtype=F32, kernel_init=zeros_init,
                             name="patch_out")(h)
      return out.astype(F32)
    ch = cfg.out_channels * (4 ** arg if kind == "dwt" else 1)
    out = nn.Conv(ch, (3, 3), dtype=dtype, param_dtype=F32, kernel_init=zeros_init,
                  name="conv_out")(h).astype(F32)
    return idwt53(out, arg) if kind == "dwt" else out


def prepare_input(cfg: ModelConfig, resolution: int, z, cond):
  """Checks shapes and concatenates the CDM conditioning image on channels (docs/paper.md §4)."""
  want = (resolution, resolution, cfg.in_channels)
  if z.ndim != 4 or tuple(z.shape[1:]) != want:
    raise ValueError(f"model built for z of shape (B, {want[0]}, {want[1]}, {want[2]}), "
                     f"got {tuple(z.shape)}")
  if cfg.cond_channels > 0:
    want_c = (z.shape[0], resolution, resolution, cfg.cond_channels)
    if cond is None or tuple(cond.shape) != want_c:
      got = None if cond is None else tuple(cond.shape)
      raise ValueError(f"model.cond_channels={cfg.cond_channels}: pass cond of shape "
                       f"{want_c}, got {got}")
    z = jnp.concatenate([z.astype(F32), cond.astype(F32)], axis=-1)
  elif cond is not None:
    raise ValueError("cond was passed but model.cond_channels is 0")
  return z.astype(F32)
