"""Data: random-access sources chosen by name, and a grain pipeline with resumable state.

A source is any object with `len(src)` and `src[i] -> {'image': uint8 (R, R, 3), 'label':
int32}`, built by `make_source(cfg, resolution, split)` from the factory registered in
SOURCES under `cfg.source`:

  shapes        the embedded procedural data set (core/shapes.py); cfg.size images per split
  shapes_simple the same shapes on smooth backgrounds, without distractors (the cpu tier's)
  folder        cfg.path/<split>/<class>/*.jpg (ImageNet / CIFAR layout), or cfg.path/<class>/
                when cfg.path has no split folders; a folder without class folders is one
                class. Classes are the sorted sub-folder names of the training split.
  npz           cfg.path (may contain '{split}') holding `images` (N, H, W, 3) uint8 and
                optionally `labels` (N,)
  tfds          cfg.path is a TFDS name, read with tfds.data_source (array_record format);
                needs `pip install 'simplediff[tfds]'`
  array_record  cfg.path is a file, a glob, or a folder of '<split>*.array_record*' files;
                each record is `encode_record(image_bytes, label)`: the label as a 4-byte
                little-endian int32, then the encoded image (JPEG, PNG, ...);
                needs `pip install 'simplediff[array_record]'`

Every image is centre-cropped to a square and resized to the resolution (PIL bicubic, which
is antialiased when downsampling, after an integer box reduction for speed).

`make_dataset` returns a grain IterDataset of batches {'image': float32 (B, R, R, 3) in
[-1, 1], 'label': int32 (B,)}. `it = iter(ds)` is a grain DatasetIterator: `it.get_state()` /
`it.set_state(state)` (or `iterator_state_to_json` / `restore_iterator`) resume the exact
batch sequence, provided the data config, batch size, seed, process layout and num_workers
are unchanged.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import io
import json
import math
import os
import struct
import warnings
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np
from PIL import Image

from core.config import ConfigError, DataConfig
from core.registry import Registry
from core.shapes import ShapesSource


class DataError(ConfigError):
  """Bad data input (a path, a file, a value), reported on one line naming it."""


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> dict: ...


SOURCES: Registry[Callable[[DataConfig, int, str], Source]] = Registry("data source")

IMAGE_EXTS = frozenset((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                        ".ppm", ".pgm"))
_CACHE_MIN_FILES = 20_000   # smaller folders are listed again each time (fast enough)
_THREADS = min(8, os.cpu_count() or 1)   # in-process reader threads (num_workers 0)


def _first_line(e: BaseException) -> str:
  s = str(e).strip().splitlines()
  return f"{type(e).__name__}: {s[0] if s else ''}"


# --- image decoding ------------------------------------------------------------------------

class ImageModeError(ValueError):
  """An image whose pixel format has no faithful 8-bit RGB reading."""


def to_rgb8(img: Image.Image) -> Image.Image:
  """Any mode PIL opens -> 8-bit RGB, by value, not by truncation. PIL's own convert("RGB")
  clips 16- and 32-bit integer pixels at 255, which turns a 16-bit PNG all white.

  - 1, L, P, PA, CMYK, YCbCr, LAB, HSV: PIL's conversion (palette looked up, CMYK inverted);
  - RGBA, LA, PA: the alpha channel is dropped, as the FID reference code does;
  - I;16 (16-bit PNG, TIFF): value / 257, rounded; I (32-bit integer, which is how PIL opens
    16-bit grayscale files of other formats): the same if its values fit 16 bits, as 8-bit if
    they fit 8, else refused;
  - F (32-bit float) and anything else: refused (ImageModeError), since no range is implied.
  """
  mode = img.mode
  if mode == "RGB":
    return img
  if mode in ("1", "L", "P", "PA", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV",
              "RGBX"):
    return img.convert("RGB")
  if mode.startswith("I"):
    a = np.asarray(img).astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
      raise ImageModeError(f"{mode} image with values {lo}..{hi}: not 8- or 16-bit; convert "
                           "it to 8-bit RGB first")
    if mode.startswith("I;16") or hi > 255:
      a = (a * 255 + 32767) // 65535          # round(a / 257), exactly
    g = a.astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, -1), "RGB")
  raise ImageModeError(f"image mode {mode!r} (e.g. 32-bit float) has no implied 8-bit range; "
                       "convert it to 8-bit RGB first")


def crop_resize(img: Image.Image, resolution: int) -> np.ndarray:
  """Centre crop to a square, resize to (resolution, resolution); returns uint8 (R, R, 3)."""
  img = to_rgb8(img)
  w, h = img.size
  if w != resolution or h != resolution:
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    # reducing_gap: a box reduction by an integer factor that keeps >= 3x the size, then bicubic.
    img = img.resize((resolution, resolution), Image.Resampling.BICUBIC,
                     box=(left, top, left + s, top + s),
                     reducing_gap=3.0 if s >= 3 * resolution else None)
  return np.asarray(img, dtype=np.uint8)


def decode_image(src, resolution: int) -> np.ndarray:
  """Decodes a path or encoded bytes; raises on anything PIL cannot read in full."""
  if not isinstance(src, (bytes, bytearray, memoryview)):
    with open(src, "rb") as f:   # one read: PIL would issue dozens of small ones
      src = f.read()
  with Image.open(io.BytesIO(src)) as img:
    if img.format == "JPEG":
      # Let libjpeg scale by 1/2..1/8 in the DCT while the short side stays >= 2R (speed).
      w, h = img.size
      k = min(1.0, 2 * resolution / min(w, h))
      img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
    img.load()
    return crop_resize(img, resolution)


def array_to_image(a: np.ndarray, resolution: int) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.shape == (resolution, resolution, 3):
    return a.astype(np.uint8, copy=False)
  return crop_resize(Image.fromarray(a.astype(np.uint8, copy=False)), resolution)


# --- sources that decode files: folder and array_record ----------------------------------

class _DecodingSource:
  """Decodes item i; a bad file raises naming it, or with skip_corrupt is replaced by the
  next decodable item (deterministic) and counted in `self.skipped` (this process only)."""

  max_substitutes = 64

  def __init__(self, resolution: int, skip_corrupt: bool):
    self.resolution = resolution
    self.skip_corrupt = skip_corrupt
    self.skipped: set[int] = set()

  def _raw(self, i: int):         # -> (path or bytes, label)
    raise NotImplementedError

  def name(self, i: int) -> str:  # what an error message calls item i
    raise NotImplementedError

  def load(self, i) -> tuple[dict, list[int]]:
    """Returns (example, indices of the undecodable items that were skipped for it)."""
    n = len(self)
    i = int(i)
    if not 0 <= i < n:
      raise IndexError(f"index {i} out of range for a source of {n} items")
    bad = []
    for k in range(min(n, self.max_substitutes)):
      j = (i + k) % n
      try:
        raw, label = self._raw(j)
        image = decode_image(raw, self.resolution)
      except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        if not self.skip_corrupt:
          raise DataError(f"cannot decode image {self.name(j)} ({_first_line(e)}); set "
                          "data.skip_corrupt=true to skip such files") from None
        bad.append(j)
        self.skipped.add(j)
        continue
      return {"image": image, "label": np.int32(label)}, bad
    raise DataError(f"{len(bad)} undecodable files in a row from {self.name(i)}")

  def __getitem__(self, i) -> dict:
    return self.load(i)[0]


def _cache_dir() -> str:
  from core.runio import cache_dir
  return cache_dir("filelists")


def _scan(split_dir: str, classes: list[str]):
  """Sorted (relative paths, labels, {dir: mtime_ns}) of the images under each class."""
  files, labels, mtimes = [], [], {}
  for label, cls in enumerate(classes):
    top = os.path.join(split_dir, cls) if cls else split_dir
    if not os.path.isdir(top):
      continue
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
      mtimes[dirpath] = os.stat(dirpath).st_mtime_ns
      # A flat folder (one class, cls == '') must not descend into anything else.
      dirnames[:] = [] if not cls else sorted(d for d in dirnames if not d.startswith("."))
      found += [os.path.relpath(os.path.join(dirpath, f), split_dir) for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS]
    found.sort()
    files += found
    labels += [label] * len(found)
  return files, labels, mtimes


_LISTINGS: dict[tuple, tuple[list[str], np.ndarray, dict]] = {}


def _fresh(mtimes: dict) -> bool:
  try:
    return all(os.stat(d).st_mtime_ns == m for d, m in mtimes.items())
  except OSError:
    return False


def _listing(split_dir: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
  """The sorted file list, cached in memory and, for large folders, on disk; either cache is
  used only while every folder walked keeps its mtime (a file added or removed changes it)."""
  key = [os.path.abspath(split_dir), list(classes)]
  mem_key = (key[0], tuple(classes))
  hit = _LISTINGS.get(mem_key)
  if hit is not None and _fresh(hit[2]):
    return hit[0], hit[1]
  digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:20]
  cache = os.path.join(_cache_dir(), digest + ".json")
  files = None
  try:
    with open(cache) as f:
      c = json.load(f)
    if c["key"] == key and _fresh(c["mtimes"]):
      files, labels, mtimes = c["files"], c["labels"], c["mtimes"]
  except (OSError, ValueError, KeyError, TypeError):
    pass
  if files is None:
    files, labels, mtimes = _scan(split_dir, classes)
    if len(files) >= _CACHE_MIN_FILES:
      try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
          json.dump({"key": key, "mtimes": mtimes, "files": files, "labels": labels}, f)
        os.replace(tmp, cache)
      except OSError:
        pass  # a read-only home only costs a re-scan
  labels = np.asarray(labels, np.int32)
  _LISTINGS[mem_key] = (files, labels, mtimes)
  return files, labels


_SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "eval")


def _class_names(d: str) -> list[str]:
  subdirs = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
  return subdirs or [""]   # no sub-folders: the folder itself is one class


class FolderSource(_DecodingSource):
  """An image folder, one sub-folder per class."""

  def __init__(self, root: str, split: str, resolution: int, skip_corrupt: bool = False,
               train_split: str = "train"):
    super().__init__(resolution, skip_corrupt)
    if not root:
      raise DataError("data.path is empty: set data.path to the image folder root "
                      "(one sub-folder per class, optionally under train/ and test/)")
    if not os.path.isdir(root):
      raise DataError(f"data.path={root!r} is not a directory: set data.path to the image "
                      "folder root")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      present = [s for s in _SPLIT_NAMES if os.path.isdir(os.path.join(root, s))]
      if present:
        raise DataError(f"split {split!r} not found under data.path={root!r} (it has "
                        f"{', '.join(present)})")
      split_dir = root
    # Labels come from the training split's classes, so that every split agrees on them.
    train_dir = os.path.join(root, train_split)
    self.classes = _class_names(train_dir if os.path.isdir(train_dir) else split_dir)
    for c in _class_names(split_dir):
      if c and c not in self.classes:
        raise DataError(f"class folder {os.path.join(split_dir, c)!r} has no counterpart in "
                        f"the training split {train_dir!r}")
    self.root, self.split_dir = root, os.path.abspath(split_dir)
    self.files, self.labels = _listing(self.split_dir, self.classes)
    self.num_classes = len(self.classes)
    if not self.files:
      raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under {split_dir!r}"
                      "; check data.path")

  def __len__(self) -> int:
    return len(self.files)

  def name(self, i: int) -> str:
    return os.path.join(self.split_dir, self.files[i])

  def _raw(self, i: int):
    return self.name(i), self.labels[i]

  def __repr__(self) -> str:
    return f"FolderSource({self.split_dir!r}, {len(self)} images, {self.num_classes} classes)"


def encode_record(image_bytes: bytes, label: int) -> bytes:
  """array_record record: int32 little-endian label, then the encoded image."""
  return struct.pack("<i", int(label)) + bytes(image_bytes)


def decode_record(record: bytes) -> tuple[bytes, int]:
  if len(record) < 4:
    raise ValueError(f"record of {len(record)} bytes is shorter than its 4-byte label")
  return record[4:], struct.unpack("<i", record[:4])[0]


def _require(module: str, extra: str, package: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    raise DataError(f"data.source={extra!r} needs the optional package {package}: "
                    f"pip install 'simplediff[{extra}]'") from None


def write_array_record(path: str, examples) -> int:
  """Writes (image_bytes, label) pairs as one array_record file; returns their count."""
  mod = _require("array_record.python.array_record_module", "array_record", "array-record")
  w = mod.ArrayRecordWriter(path, "group_size:1")   # group_size 1: fast random access
  n = 0
  for image_bytes, label in examples:
    w.write(encode_record(image_bytes, label))
    n += 1
  w.close()
  return n


class ArrayRecordSource(_DecodingSource):
  def __init__(self, path: str, split: str, resolution: int, skip_corrupt: bool = False):
    super().__init__(resolution, skip_corrupt)
    mod = _require("array_record.python.array_record_data_source", "array_record",
                   "array-record")
    if not path:
      raise DataError("data.path is empty: set data.path to an .array_record file, glob or "
                      "folder")
    p = path.replace("{split}", split)
    if os.path.isdir(p):
      files = sorted(glob.glob(os.path.join(p, f"{split}*.array_record*")))
    elif any(c in p for c in "*?["):
      files = sorted(glob.glob(p))
    else:
      files = [p] if os.path.isfile(p) else []
    if not files:
      raise DataError(f"data.path={path!r}: no array_record files for split {split!r}")
    self.paths = files
    self.num_classes = None
    self._ds = mod.ArrayRecordDataSource(files)

  def __len__(self) -> int:
    return len(self._ds)

  def name(self, i: int) -> str:
    return f"{','.join(self.paths)} record {i}"

  def _raw(self, i: int):
    return decode_record(self._ds[i])


# --- sources of arrays: npz and tfds -----------------------------------------------------

class ArraySource:
  """Examples held as arrays (in memory, or behind a random-access reader)."""

  def __init__(self, images, labels, resolution: int, num_classes: Optional[int] = None,
               image_key: Optional[str] = None, label_key: Optional[str] = None):
    self.images, self.labels, self.resolution = images, labels, resolution
    self.image_key, self.label_key = image_key, label_key
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for a source of {len(self)} items")
    x = self.images[i]
    if self.image_key is not None:   # a reader of dicts (tfds)
      x, label = x[self.image_key], (x[self.label_key] if self.label_key in x else 0)
    else:
      label = 0 if self.labels is None else self.labels[i]
    return {"image": array_to_image(x, self.resolution), "label": np.int32(label)}


def npz_source(path: str, split: str, resolution: int) -> ArraySource:
  if not path:
    raise DataError("data.path is empty: set data.path to an .npz file with an 'images' array")
  p = path.replace("{split}", split)
  if not os.path.isfile(p):
    raise DataError(f"data.path={p!r}: no such .npz file")
  with np.load(p) as z:
    if "images" not in z.files:
      raise DataError(f"{p}: no 'images' array (it has {', '.join(z.files) or 'none'})")
    images = z["images"]
    labels = z["labels"] if "labels" in z.files else None
  if images.dtype != np.uint8 or not (images.ndim == 3 or (
      images.ndim == 4 and images.shape[-1] in (1, 3))):
    raise DataError(f"{p}: 'images' must be uint8 (N, H, W, 3), got {images.dtype} "
                    f"{images.shape}")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{p}: 'labels' must be integers of shape ({len(images)},), got "
                      f"{labels.dtype} {labels.shape}")
    labels = labels.astype(np.int32)
  nc = int(labels.max()) + 1 if labels is not None and len(labels) else None
  return ArraySource(images, labels, resolution, num_classes=nc)


PROCEDURAL = ("shapes", "shapes_simple")   # rendered on demand; cfg.size images a split


@SOURCES.register("shapes")
def _shapes(cfg: DataConfig, resolution: int, split: str) -> ShapesSource:
  if cfg.size <= 0:
    raise DataError(f"data.size must be positive for the {cfg.source} source, got {cfg.size}")
  return ShapesSource(cfg.size, resolution, split,
                      style="simple" if cfg.source == "shapes_simple" else "full")


SOURCES.register("shapes_simple")(_shapes)


@SOURCES.register("folder")
def _folder(cfg: DataConfig, resolution: int, split: str) -> FolderSource:
  return FolderSource(cfg.path, split, resolution, cfg.skip_corrupt, train_split=cfg.split)


@SOURCES.register("npz")
def _npz(cfg: DataConfig, resolution: int, split: str) -> ArraySource:
  return npz_source(cfg.path, split, resolution)


@SOURCES.register("array_record")
def _array_record(cfg: DataConfig, resolution: int, split: str) -> ArrayRecordSource:
  return ArrayRecordSource(cfg.path, split, resolution, cfg.skip_corrupt)


@SOURCES.register("tfds")
def _tfds(cfg: DataConfig, resolution: int, split: str) -> ArraySource:
  tfds = _require("tensorflow_datasets", "tfds", "tensorflow-datasets")
  if not cfg.path:
    raise DataError("data.path is empty: set data.path to a TFDS name, e.g. imagenet2012")
  try:
    ds = tfds.data_source(cfg.path, split=split, download=False)
  except Exception as e:
    raise DataError(f"tfds: cannot open data.path={cfg.path!r} split {split!r} "
                    f"(tfds.data_source needs file_format=array_record): "
                    f"{_first_line(e)}") from None
  nc = None
  try:
    nc = ds.dataset_info.features["label"].num_classes
  except Exception:
    pass
  return ArraySource(ds, None, resolution, num_classes=nc, image_key="image",
                     label_key="label")


def make_source(cfg: DataConfig, resolution: int, split: str) -> Source:
  """The source named by cfg.source, for one split, at one resolution."""
  if not isinstance(resolution, (int, np.integer)) or resolution < 1:
    raise DataError(f"resolution must be a positive integer, got {resolution!r}")
  if cfg.source not in SOURCES:
    raise ConfigError(f"data.source={cfg.source!r} is unknown; choose one of: "
                      f"{', '.join(SOURCES.names())}")
  src = SOURCES.get(cfg.source)(cfg, int(resolution), split)
  if len(src) == 0:
    raise DataError(f"data.source={cfg.source!r} split {split!r} has no examples "
                    f"(data.path={cfg.path!r})")
  nc = getattr(src, "num_classes", None)
  if cfg.num_classes > 0 and nc and nc > cfg.num_classes:
    raise ConfigError(f"data.num_classes={cfg.num_classes} but data.source={cfg.source!r} "
                      f"split {split!r} has {nc} classes")
  return src


def reference_indices(n_split: int, num: int) -> np.ndarray:
  """The images of a split that reference statistics use: all, or a fixed random subset of
  `num` in index order (the first `num` of a class-sorted folder would be its first classes)."""
  if num >= n_split:
    return np.arange(n_split)
  from core.fid import subset
  return subset(np.arange(n_split), num)


def data_fingerprint(cfg: DataConfig, split: str, num: int) -> str:
  """12 hex digits naming the images that `iterate_uint8(cfg, ..., split, num)` reads, for the
  reference-statistics cache: the source and absolute path, and each image file's name and
  size (folder), or the files' sizes and mtimes (npz, array_record), or the size of the
  procedural set (shapes). Two folders of one name, or a folder whose files changed, differ."""
  h = hashlib.sha1()
  add = lambda *xs: h.update(json.dumps(xs, default=str).encode())
  add(cfg.source, split, num)
  if cfg.source in PROCEDURAL:
    add(cfg.size)
  elif cfg.source == "tfds":
    add(cfg.path)
  else:
    src = make_source(cfg, 8, split)
    if isinstance(src, FolderSource):
      add(src.split_dir)
      for i in reference_indices(len(src), num):
        name = src.name(int(i))
        add(src.files[int(i)], os.path.getsize(name))
    else:
      p = os.path.abspath(cfg.path.replace("{split}", split))
      files = (sorted(glob.glob(os.path.join(p, "*"))) if os.path.isdir(p) else
               sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])
      for f in files:
        st = os.stat(f)
        add(os.path.abspath(f), st.st_size, st.st_mtime_ns)
  return h.hexdigest()[:12]


# --- the grain pipeline -------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _mix(*xs: int) -> int:
  """splitmix64 over a tuple of integers: independent streams from (seed, purpose, ...)."""
  h = 0x9E3779B97F4A7C15
  for x in xs:
    h = (h ^ (int(x) & _M64)) + 0x9E3779B97F4A7C15 & _M64
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _M64
    h ^= h >> 31
  return h


class SkipCounter:
  """Undecodable files met by the batches consumed in this process (data.skip_corrupt)."""

  def __init__(self, source):
    self._source = source
    self.files: set[int] = set()
    self.events = 0                 # counts a file again each time an epoch meets it

  @property
  def count(self) -> int:
    return len(self.files)

  def names(self) -> list[str]:
    name = getattr(self._source, "name", str)
    return [name(i) for i in sorted(self.files)]

  def __call__(self, batch: dict) -> dict:
    skipped = batch.pop("_skipped")
    if len(skipped):
      self.events += len(skipped)
      self.files.update(int(i) for i in skipped)
    return batch


class _Elements:
  """The source as the pipeline sees it: checked shapes, plus the skipped-file indices."""

  def __init__(self, src, resolution: int):
    self.src, self.resolution = src, resolution

  def __len__(self) -> int:
    return len(self.src)

  def __getitem__(self, i) -> dict:
    if hasattr(self.src, "load"):
      ex, skipped = self.src.load(i)
    else:
      ex, skipped = self.src[i], ()
    image = np.asarray(ex["image"])
    r = self.resolution
    if image.shape != (r, r, 3) or image.dtype != np.uint8:
      raise DataError(f"source item {int(i)} is {image.dtype} {image.shape}, expected uint8 "
                      f"({r}, {r}, 3)")
    return {"image": image, "label": int(ex["label"]), "skipped": tuple(skipped)}


class _Flip:
  """Horizontal flip with probability 1/2, a function of (seed, position in the stream)."""

  def __init__(self, seed: int):
    self.seed = seed

  def __call__(self, index: int, el: dict) -> dict:
    if _mix(self.seed, index) >> 63:
      el = dict(el, image=el["image"][:, ::-1])
    return el


def _stack(els) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  images = np.stack([e["image"] for e in els])
  labels = np.asarray([e["label"] for e in els], np.int32)
  skipped = np.asarray([j for e in els for j in e["skipped"]], np.int64)
  return images, labels, skipped


def _float_batch(els) -> dict:
  images, labels, skipped = _stack(els)
  x = images.astype(np.float32)
  x *= 1 / 127.5
  x -= 1
  return {"image": x, "label": labels, "_skipped": skipped}


def _uint8_batch(els) -> dict:
  images, labels, skipped = _stack(els)
  return {"image": images, "label": labels, "_skipped": skipped}


def _allow_unparsed_absl_flags() -> None:
  # grain 0.2.18 reads an absl flag in mp_prefetch, which fails in programs that never parse
  # absl flags (google/grain#1355); mark that one flag as given, as grain does for others.
  try:
    from absl import flags
    fl = flags.FLAGS["grain_enable_multiprocess_worker_profiling"]
    if not flags.FLAGS.is_parsed():
      fl.present = True
  except (ImportError, KeyError):
    pass


def _batched(ds, batch_size: int, batch_fn, cfg: DataConfig, drop_remainder: bool,
             counter: SkipCounter):
  """Element MapDataset -> prefetched IterDataset of batches, the same batches whatever
  num_workers: workers take whole batches in turn, threads take elements in order."""
  import grain
  if cfg.num_workers < 0:
    raise ConfigError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
  if cfg.prefetch < 0:
    raise ConfigError(f"data.prefetch must be >= 0, got {cfg.prefetch}")
  if cfg.num_workers > 0:
    _allow_unparsed_absl_flags()
    it = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
    it = it.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=max(cfg.prefetch, 1)))
  else:
    threads = _THREADS if cfg.prefetch > 0 else 0
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=cfg.prefetch * batch_size))
    it = it.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
  it = it.map(counter)   # in this process, after any workers
  it.skip_counter = counter
  return it


def make_dataset(cfg: DataConfig, resolution: int, batch_size: int, seed: int,
                 split: str = "train", train: bool = True, process_index: int = 0,
                 process_count: int = 1):
  """Batches of this process's share of each global batch.

  train=True: shuffled afresh each epoch (seed and cfg.shuffle_seed), randomly flipped if
  cfg.random_flip, repeated forever. train=False: one pass in order, no flip. batch_size is
  per process; process p of P takes elements p, p + P, ... of each global batch of
  batch_size * P, so the processes' batches are disjoint and together make the global batch.
  Incomplete batches are dropped (train=False: the last global batch, identically on every
  process). The result has `.skip_counter` (a SkipCounter) for logging data.skip_corrupt.
  """
  import grain
  if batch_size < 1:
    raise ConfigError(f"batch_size must be positive, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index} must lie in [0, process_count="
                      f"{process_count})")
  src = make_source(cfg, resolution, split)
  counter = SkipCounter(src)
  ds = grain.MapDataset.source(_Elements(src, int(resolution)))
  global_batch = batch_size * process_count
  if train:
    ds = ds.shuffle(seed=_mix(seed, cfg.shuffle_seed, 1) % 2**32).repeat()
    if cfg.random_flip:
      ds = ds.map_with_index(_Flip(_mix(seed, cfg.shuffle_seed, 2)))
  else:
    usable = len(src) // global_batch * global_batch
    if usable == 0:
      raise DataError(f"split {split!r} of data.source={cfg.source!r} has {len(src)} examples,"
                      f" fewer than one global batch of {global_batch}")
    ds = ds[:usable]
  if process_count > 1:
    ds = ds[process_index::process_count]
  return _batched(ds, batch_size, _float_batch, cfg, True, counter)


def iterate_uint8(cfg: DataConfig, resolution: int, split: str, num: int, batch_size: int,
                  progress: bool = False) -> Iterator[np.ndarray]:
  """`num` images of a split (all, or a fixed random subset in index order), unflipped, as uint8 (b, R, R, 3) batches
  (the last one may be smaller); for reference statistics. A split with fewer images yields
  all of them, with a warning."""
  import grain
  if batch_size < 1 or num < 1:
    raise ConfigError(f"iterate_uint8: num={num} and batch_size={batch_size} must be positive")
  src = make_source(cfg, resolution, split)
  n = min(num, len(src))
  if n < num:
    warnings.warn(f"split {split!r} of data.source={cfg.source!r} has {len(src)} images; "
                  f"iterating over all of them instead of {num}", stacklevel=2)
  counter = SkipCounter(src)
  ds = grain.MapDataset.source(_Elements(src, int(resolution)))
  if n < len(src):  # a fixed random subset: the first n of a class-sorted folder are few classes
    keep = reference_indices(len(src), n)
    full = ds
    ds = grain.MapDataset.range(n).map(lambda i: full[int(keep[i])])
  it = _batched(ds, batch_size, _uint8_batch, cfg, False, counter)

  def gen():
    bar = None
    if progress:
      from tqdm import tqdm
      bar = tqdm(total=n, unit="img", desc=f"{cfg.source}/{split}")
    try:
      for b in it:
        if bar is not None:
          bar.update(len(b["image"]))
        yield b["image"]
    finally:
      if bar is not None:
        bar.close()
  return gen()


# --- iterator checkpoints -----------------------------------------------------------------

_STATE_FORMAT = "simplediff.data/1"


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    if all(isinstance(k, str) for k in x) and _INT_KEYS not in x:
      return {k: _jsonable(v) for k, v in x.items()}
    # grain keys some (elastic) states by int: keep them ints through JSON.
    return {_INT_KEYS: [[_jsonable(k), _jsonable(v)] for k, v in x.items()]}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  raise TypeError(f"iterator state holds a {type(x).__name__}, which JSON cannot hold")


def _unjson(x: Any) -> Any:
  if isinstance(x, dict):
    if set(x) == {_INT_KEYS}:
      return {k: _unjson(v) for k, v in x[_INT_KEYS]}
    return {k: _unjson(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_unjson(v) for v in x]
  return x


_INT_KEYS = "__non_str_keys__"


def iterator_state_to_json(it) -> str:
  """The iterator's position as JSON, for a checkpoint next to the model's (orbax)."""
  return json.dumps({"format": _STATE_FORMAT, "state": _jsonable(it.get_state())})


def restore_iterator(it, state_json: str):
  """Moves `it` (a fresh iter() of an identically built dataset) to the saved position."""
  try:
    d = json.loads(state_json)
    ok = d.get("format") == _STATE_FORMAT
  except (ValueError, AttributeError):
    ok = False
  if not ok:
    raise DataError(f"not a data iterator state ({_STATE_FORMAT}): {state_json[:80]!r}")
  it.set_state(_unjson(d["state"]))
  return it
