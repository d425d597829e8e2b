"""Data sources: random-access image sets chosen by name (data.source), and what names them.

A source is any object with `len(src)` and `src[i] -> {'image': uint8 (R, R, 3), 'label':
int32}`, built by `make_source(cfg, resolution, split)` from the factory registered in
SOURCES under `cfg.source`:

  shapes        the embedded procedural data set (core/data/shapes.py); cfg.size images per split
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

Every image is centre-cropped to a square and resized to the resolution (core.data.images), or,
with data.content_resolution below it, made at the content resolution and upsampled
(Upsampled). The batches built from a source are core.data.pipeline's.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import json
import os
import struct
from typing import Callable, Optional, Protocol

import numpy as np

from core.config import ConfigError, DataConfig, check_choice
from core.data.images import (IMAGE_EXTS, UPSAMPLE_FILTERS, array_to_image, decode_image,
                              image_files, upsample)
from core.registry import Registry
from core.runio import cache_dir
from core.data.shapes import ShapesSource


class DataError(ConfigError):
  """Bad data input (a path, a file, a value), reported on one line naming it."""


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> dict: ...


SOURCES: Registry[Callable[[DataConfig, int, str], Source]] = Registry("data source")
UPSAMPLE: Registry[str] = Registry("data.upsample")
for _name in UPSAMPLE_FILTERS:
  UPSAMPLE.register(_name)(_name)

_CACHE_MIN_FILES = 20_000   # smaller folders are listed again each time (fast enough)


def _first_line(e: BaseException) -> str:
  s = str(e).strip().splitlines()
  return f"{type(e).__name__}: {s[0] if s else ''}"


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


def _scan(split_dir: str, classes: list[str]):
  """Sorted (relative paths, labels, {dir: mtime_ns}) of the images under each class."""
  files, labels, mtimes = [], [], {}
  for label, cls in enumerate(classes):
    top = os.path.join(split_dir, cls) if cls else split_dir
    if not os.path.isdir(top):
      continue
    # A flat folder (one class, cls == '') must not descend into anything else.
    found = image_files(top, recursive=bool(cls), mtimes=mtimes)
    files += [os.path.join(cls, f) if cls else f for f in found]
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
  cache = cache_dir("filelists", digest + ".json")
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


# ---------------------------------------------------------------------------------------------
# Training on the procedural set: render each image once, not once per epoch and run

ENV_RENDER_CACHE = "SIMPLEDIFF_SHAPES_CACHE"   # 0: render shapes on the fly in every run
MAX_RENDER_CACHE_BYTES = 1 << 30   # a split larger than this (gpu tier's 128 px) renders on the fly


def _renderer_version() -> str:
  """Hash of core/data/shapes.py: an edit to the renderer makes earlier renders stale, not wrong."""
  import core.data.shapes
  with open(core.data.shapes.__file__, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:12]


class RenderedShapes(ArraySource):
  """A ShapesSource's split read from its render in the cache folder (memory-mapped): the same
  items, bit for bit, without the Python rendering of every image (on 2 cores that work took
  CPU from XLA: 1.17-1.28x training speed at 16 px). Pickles as its path (grain workers)."""

  def __init__(self, src: ShapesSource, folder: str):
    self.src, self.folder = src, folder
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(folder, "labels.npy"))
    r = src.resolution
    if images.shape != (len(src), r, r, 3) or images.dtype != np.uint8 or \
        labels.shape != (len(src),):
      raise ValueError(f"{folder}: render of the wrong shape {images.shape}")
    super().__init__(images, labels, r, num_classes=src.num_classes)

  def __getstate__(self):
    return {"src": self.src, "folder": self.folder}

  def __setstate__(self, state):
    self.__init__(state["src"], state["folder"])

  def __repr__(self) -> str:
    return f"RenderedShapes({self.src!r}, {self.folder!r})"


def render_cached(src, progress: bool = False):
  """A procedural training source rendered once into <cache>/shapes/ and read from there.

  Returns src itself for any other source, when $SIMPLEDIFF_SHAPES_CACHE=0, or when the split
  exceeds MAX_RENDER_CACHE_BYTES. The first run at a (style, split, seed, resolution, size)
  renders the whole split (about 6 s for 50,000 images at 16 or 32 px), where a
  2,000-step run at batch 32 would render 64,000 on the fly; later runs, seeds and arms read
  it. Processes that render the same split at once each write a private folder and rename it
  into place; the first rename wins and the others read the winner's.
  """
  import shutil
  import tempfile
  if isinstance(src, Upsampled):   # the content is rendered once, upsampled as it is read
    return Upsampled(render_cached(src.src, progress), src.resolution, src.method)
  if not isinstance(src, ShapesSource):
    return src
  if os.environ.get(ENV_RENDER_CACHE, "1").strip().lower() in ("0", "false", "no", "off"):
    return src
  r = src.resolution
  if len(src) * r * r * 3 > MAX_RENDER_CACHE_BYTES:
    return src
  key = (f"{src.style}-{src.split}-seed{src.seed}-{r}px-n{len(src)}-"
         f"{_renderer_version()}")
  folder = cache_dir("shapes", key)
  try:
    return RenderedShapes(src, folder)
  except (OSError, ValueError, EOFError):
    pass   # absent, or unreadable (a torn copy): render it again
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{key}-")
  try:
    from tqdm.auto import tqdm
    images = np.lib.format.open_memmap(os.path.join(tmp, "images.npy"), mode="w+",
                                       dtype=np.uint8, shape=(len(src), r, r, 3))
    labels = np.empty((len(src),), np.int32)
    for i in tqdm(range(len(src)), desc=f"rendering {src.style} {src.split} at {r} px (once)",
                  unit="img", disable=not progress, dynamic_ncols=True):
      ex = src[i]
      images[i] = ex["image"]
      labels[i] = ex["label"]
    images.flush()
    del images
    np.save(os.path.join(tmp, "labels.npy"), labels)
    if os.path.isdir(folder):   # an unreadable render: replaced by the new one
      shutil.rmtree(folder, ignore_errors=True)
    try:
      os.rename(tmp, folder)
    except OSError:   # another process renamed its render into place first
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return RenderedShapes(src, folder)


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


class Upsampled:
  """A source made at a content resolution, upsampled item by item to `resolution` with the
  filter cfg.upsample names: every resolution then carries the same content. With nearest and
  a factor f, the f x f block means of an image are its content exactly."""

  def __init__(self, src, resolution: int, method: str):
    self.src, self.resolution, self.method = src, resolution, method
    self.num_classes = getattr(src, "num_classes", None)

  def __len__(self) -> int:
    return len(self.src)

  def load(self, i) -> tuple[dict, list[int]]:
    ex, skipped = self.src.load(i) if hasattr(self.src, "load") else (self.src[i], [])
    return dict(ex, image=upsample(ex["image"], self.resolution, self.method)), skipped

  def __getitem__(self, i) -> dict:
    return self.load(i)[0]

  def name(self, i: int) -> str:
    return self.src.name(i) if hasattr(self.src, "name") else str(i)

  def __repr__(self) -> str:
    return f"Upsampled({self.src!r}, {self.resolution}, {self.method!r})"


def content_resolution(cfg: DataConfig, resolution: int) -> int:
  """The resolution a source's images are made at before any upsampling."""
  return min(cfg.content_resolution, resolution) if cfg.content_resolution else resolution


def make_source(cfg: DataConfig, resolution: int, split: str) -> Source:
  """The source named by cfg.source, for one split, at one resolution (made at
  content_resolution(cfg, resolution) and upsampled where that is lower)."""
  if not isinstance(resolution, (int, np.integer)) or resolution < 1:
    raise DataError(f"resolution must be a positive integer, got {resolution!r}")
  check_choice("data.source", cfg.source, SOURCES)
  check_choice("data.upsample", cfg.upsample, UPSAMPLE)
  made = content_resolution(cfg, int(resolution))
  src = SOURCES.get(cfg.source)(cfg, made, split)
  if made < resolution:
    src = Upsampled(src, int(resolution), cfg.upsample)
  if len(src) == 0:
    raise DataError(f"data.source={cfg.source!r} split {split!r} has no examples "
                    f"(data.path={cfg.path!r})")
  nc = getattr(src, "num_classes", None)
  if cfg.num_classes > 0 and nc and nc > cfg.num_classes:
    raise ConfigError(f"data.num_classes={cfg.num_classes} but data.source={cfg.source!r} "
                      f"split {split!r} has {nc} classes")
  return src


def subset(items, num: Optional[int]):
  """`num` items drawn at random (seed 0, order kept): a class-sorted folder cut to its first
  `num` files would hold only its first classes and inflate the FID."""
  if num is None or num >= len(items):
    return items
  keep = np.sort(np.random.default_rng(0).choice(len(items), num, replace=False))
  return [items[i] for i in keep] if isinstance(items, list) else items[keep]


def reference_indices(n_split: int, num: int) -> np.ndarray:
  """The images of a split that reference statistics use: all, or a fixed random subset of
  `num` in index order (the first `num` of a class-sorted folder would be its first classes)."""
  if num >= n_split:
    return np.arange(n_split)
  return subset(np.arange(n_split), num)


def data_fingerprint(cfg: DataConfig, split: str, num: int) -> str:
  """12 hex digits naming the images that `iterate_uint8(cfg, ..., split, num)` reads, for the
  reference-statistics cache: the source and absolute path, and each image file's name and
  size (folder), or the files' sizes and mtimes (npz, array_record), or the size of the
  procedural set (shapes). Two folders of one name, or a folder whose files changed, differ."""
  h = hashlib.sha1()
  add = lambda *xs: h.update(json.dumps(xs, default=str).encode())
  add(cfg.source, split, num)
  if cfg.content_resolution:   # images made at the content resolution, then upsampled
    add("content", cfg.content_resolution, cfg.upsample)
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
