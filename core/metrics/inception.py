"""The 2015-12-05 Inception graph of FID, IS and sFID, in flax.linen, and its weight check.

This is the frozen TF graph that TF-GAN, pytorch-fid, the ADM evaluator and NVIDIA's TorchScript
port (`inception-2015-12-05.pt`) all evaluate: pool_3 (2048 features) for FID, the 1008-way
`logits` for IS and mixed_6/conv (its first 7 channels) for sFID. It is not torchvision's
Inception v3; its FID-relevant quirks are kept:
  * batch norm without scale, eps 1e-3, after bias-free convolutions;
  * the pooling towers of mixed..mixed_9 average with count_include_pad=False (TF's SAME avg pool);
  * mixed_10 (the last block) max-pools in its pooling tower;
  * inputs resized to 299x299 like TF1's ResizeBilinear (align_corners=False *without* half-pixel
    centres, border clamp, no antialias), then mapped to (x - 128) / 128.

`check_params` holds a parameter tree against this network. Where the weights come from is
core/metrics/inception_weights.py (which imports this module, never the reverse); the batched extractor
that runs the network over images is core/metrics/features.py.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7   # the ADM evaluator keeps mixed_6/conv[..., :7] for sFID
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------------
# Network


class ConvBN(nn.Module):
  """Bias-free conv, inference batch norm (eps 1e-3), ReLU: one node group of the TF graph."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    # zeros, not lecun_normal: the weights are always loaded, and flax traces each param's
    # initializer (check_params' eval_shape, every apply's shape check): half the time.
    kernel = self.param("kernel", nn.initializers.zeros, (kh, kw, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    y = (y - mean) * (scale * lax.rsqrt(var + BN_EPS)) + bias
    return nn.relu(y)


def _avg_pool3(x):
  # TF's SAME average pool divides by the number of valid pixels only.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  pool_features: int
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    a = c(64, (1, 1), name="conv")(x)
    b = c(48, (1, 1), name="tower_conv")(x)
    b = c(64, (5, 5), padding=(2, 2), name="tower_conv_1")(b)
    d = c(64, (1, 1), name="tower_1_conv")(x)
    d = c(96, (3, 3), padding=(1, 1), name="tower_1_conv_1")(d)
    d = c(96, (3, 3), padding=(1, 1), name="tower_1_conv_2")(d)
    p = c(self.pool_features, (1, 1), name="tower_2_conv")(_avg_pool3(x))
    return jnp.concatenate([a, b, d, p], axis=-1)


class InceptionB(nn.Module):
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    a = c(384, (3, 3), strides=2, name="conv")(x)
    b = c(64, (1, 1), name="tower_conv")(x)
    b = c(96, (3, 3), padding=(1, 1), name="tower_conv_1")(b)
    b = c(96, (3, 3), strides=2, name="tower_conv_2")(b)
    return jnp.concatenate([a, b, _max_pool3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  precision: Any = lax.Precision.HIGHEST
  return_conv: bool = False  # also return the 1x1 branch ("<block>/conv", sFID's mixed_6/conv)

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    n = self.channels_7x7
    a = c(192, (1, 1), name="conv")(x)
    b = c(n, (1, 1), name="tower_conv")(x)
    b = c(n, (1, 7), padding=(0, 3), name="tower_conv_1")(b)
    b = c(192, (7, 1), padding=(3, 0), name="tower_conv_2")(b)
    d = c(n, (1, 1), name="tower_1_conv")(x)
    d = c(n, (7, 1), padding=(3, 0), name="tower_1_conv_1")(d)
    d = c(n, (1, 7), padding=(0, 3), name="tower_1_conv_2")(d)
    d = c(n, (7, 1), padding=(3, 0), name="tower_1_conv_3")(d)
    d = c(192, (1, 7), padding=(0, 3), name="tower_1_conv_4")(d)
    p = c(192, (1, 1), name="tower_2_conv")(_avg_pool3(x))
    y = jnp.concatenate([a, b, d, p], axis=-1)
    return (y, a) if self.return_conv else y


class InceptionD(nn.Module):
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    a = c(192, (1, 1), name="tower_conv")(x)
    a = c(320, (3, 3), strides=2, name="tower_conv_1")(a)
    b = c(192, (1, 1), name="tower_1_conv")(x)
    b = c(192, (1, 7), padding=(0, 3), name="tower_1_conv_1")(b)
    b = c(192, (7, 1), padding=(3, 0), name="tower_1_conv_2")(b)
    b = c(192, (3, 3), strides=2, name="tower_1_conv_3")(b)
    return jnp.concatenate([a, b, _max_pool3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  pool: str = "avg"  # the graph's last block (mixed_10) max-pools here
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    a = c(320, (1, 1), name="conv")(x)
    t = c(384, (1, 1), name="tower_conv")(x)
    t1 = c(384, (1, 3), padding=(0, 1), name="tower_mixed_conv")(t)
    t2 = c(384, (3, 1), padding=(1, 0), name="tower_mixed_conv_1")(t)
    u = c(448, (1, 1), name="tower_1_conv")(x)
    u = c(384, (3, 3), padding=(1, 1), name="tower_1_conv_1")(u)
    u1 = c(384, (1, 3), padding=(0, 1), name="tower_1_mixed_conv")(u)
    u2 = c(384, (3, 1), padding=(1, 0), name="tower_1_mixed_conv_1")(u)
    if self.pool == "max":
      p = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      p = _avg_pool3(x)
    p = c(192, (1, 1), name="tower_2_conv")(p)
    return jnp.concatenate([a, t1, t2, u1, u2, p], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception on preprocessed NHWC input (299x299, values (x - 128) / 128).

  Returns {'pool': (N, 2048)}, with `with_logits` also {'logits': (N, 1008)}, and with
  `with_spatial` also {'spatial': (N, 2023)}: the ADM evaluator's sFID features, its
  "mixed_6/conv:0" (the ReLU output of mixed_6's 1x1 branch, torchvision's Mixed_6d.branch1x1)
  cut to its first 7 channels and flattened per image in NHWC order (17 x 17 x 7). Submodule
  names follow the TF graph (and NVIDIA's port): conv..conv_4, mixed..mixed_10, output.
  """
  with_logits: bool = False
  precision: Any = lax.Precision.HIGHEST
  with_spatial: bool = False

  @nn.compact
  def __call__(self, x):
    p = self.precision
    c = functools.partial(ConvBN, precision=p)
    x = c(32, (3, 3), strides=2, name="conv")(x)
    x = c(32, (3, 3), name="conv_1")(x)
    x = c(64, (3, 3), padding=(1, 1), name="conv_2")(x)
    x = _max_pool3_s2(x)
    x = c(80, (1, 1), name="conv_3")(x)
    x = c(192, (3, 3), name="conv_4")(x)
    x = _max_pool3_s2(x)
    x = InceptionA(32, p, name="mixed")(x)
    x = InceptionA(64, p, name="mixed_1")(x)
    x = InceptionA(64, p, name="mixed_2")(x)
    x = InceptionB(p, name="mixed_3")(x)
    x = InceptionC(128, p, name="mixed_4")(x)
    x = InceptionC(160, p, name="mixed_5")(x)
    x = InceptionC(160, p, return_conv=self.with_spatial, name="mixed_6")(x)
    if self.with_spatial:
      x, conv = x
      spatial = conv[..., :SPATIAL_CHANNELS].reshape(conv.shape[0], -1)
    x = InceptionC(192, p, name="mixed_7")(x)
    x = InceptionD(p, name="mixed_8")(x)
    x = InceptionE("avg", p, name="mixed_9")(x)
    x = InceptionE("max", p, name="mixed_10")(x)
    pool = jnp.mean(x, axis=(1, 2))  # pool_3: the 8x8 average pool
    out = {"pool": pool}
    if self.with_logits:
      out["logits"] = nn.Dense(NUM_CLASSES, precision=p, name="output")(pool)
    if self.with_spatial:
      out["spatial"] = spatial
    return out


# ----------------------------------------------------------------------------------------------
# Preprocessing


def _resize_taps(n_in: int, n_out: int):
  # Source coordinate j * n_in / n_out (no half-pixel shift), clamped at the border: TF1's
  # ResizeBilinear(align_corners=False), which NVIDIA's port reproduces with affine_grid/grid_sample.
  src = np.minimum(np.arange(n_out, dtype=np.float64) * (n_in / n_out), n_in - 1)
  i0 = np.floor(src).astype(np.int32)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear_tf1(images, size: int = INPUT_SIZE):
  """Bilinear resize of float NHWC images to size x size like the FID graph (no antialias)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  y0, y1, fy = _resize_taps(h, size)
  x0, x1, fx = _resize_taps(w, size)
  fy = jnp.asarray(fy)[None, :, None, None]
  fx = jnp.asarray(fx)[None, None, :, None]
  rows = images[:, y0] * (1 - fy) + images[:, y1] * fy
  return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def preprocess(images, size: int = INPUT_SIZE):
  """uint8 (or float in [0, 255]) NHWC images -> network input: resized, (x - 128) / 128."""
  x = jnp.clip(jnp.asarray(images).astype(jnp.float32), 0.0, 255.0)
  x = resize_bilinear_tf1(x, size)
  return (x - 128.0) * (1.0 / 128.0)


# ----------------------------------------------------------------------------------------------
# The weight check


def flax_flatten(tree, prefix=""):
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict):
      out.update(flax_flatten(v, name))
    else:
      out[name] = v
  return out


@functools.cache
def _param_shapes(with_logits: bool):
  shapes = jax.eval_shape(
      lambda: InceptionV3(with_logits=with_logits).init(
          jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"])
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def check_params(params) -> bool:
  """Validates structure and shapes against the network; returns whether logits are included."""
  with_logits = "output" in params
  expected = flax_flatten(_param_shapes(with_logits))
  got = {k: tuple(v.shape) for k, v in flax_flatten(params).items()}
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
  if missing or extra or wrong:
    raise ValueError(
        "Inception weights do not fit the 2015-12-05 graph: "
        f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes "
        f"{[(k, got[k], expected[k]) for k in wrong[:5]]}")
  return with_logits
