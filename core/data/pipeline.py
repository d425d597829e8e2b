"""The grain pipeline: batches of a source (core.data.sources) with a resumable state.

`make_dataset` returns a grain IterDataset of batches {'image': float32 (B, R, R, 3) in
[-1, 1], 'label': int32 (B,)}. `it = iter(ds)` is a grain DatasetIterator: `it.get_state()` /
`it.set_state(state)` (or `iterator_state_to_json` / `restore_iterator`) resume the exact
batch sequence, provided the data config, batch size, seed, process layout and num_workers
are unchanged. `iterate_uint8` reads a split once, in order, for reference statistics.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Iterator

import numpy as np

from core.config import ConfigError, DataConfig
from core.data.sources import DataError, make_source, reference_indices, render_cached

_THREADS = min(8, os.cpu_count() or 1)   # in-process reader threads (num_workers 0)


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
  import grain   # data.num_workers and data.prefetch >= 0: core.config.check_values
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
                 process_count: int = 1, progress: bool = False):
  """Batches of this process's share of each global batch.

  train=True: shuffled afresh each epoch (seed and cfg.shuffle_seed), randomly flipped if
  cfg.random_flip, repeated forever. train=False: one pass in order, no flip. batch_size is
  per process; process p of P takes elements p, p + P, ... of each global batch of
  batch_size * P, so the processes' batches are disjoint and together make the global batch.
  Incomplete batches are dropped (train=False: the last global batch, identically on every
  process). The result has `.skip_counter` (a SkipCounter) for logging data.skip_corrupt.
  For training, the procedural set is read from its render in the cache folder
  (sources.render_cached; `progress` shows that render the first time).
  """
  import grain
  if batch_size < 1:
    raise ConfigError(f"batch_size must be positive, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index} must lie in [0, process_count="
                      f"{process_count})")
  src = make_source(cfg, resolution, split)
  if train:
    src = render_cached(src, progress)
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
                  progress: bool = False, labels: bool = False) -> Iterator[Any]:
  """`num` images of a split (all, or a fixed random subset in index order), unflipped, as
  uint8 (b, R, R, 3) batches (the last one may be smaller); for reference statistics. A split with fewer images yields
  all of them, with a warning. labels: (images, int32 labels) pairs instead."""
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
        yield (b["image"], b["label"]) if labels else b["image"]
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
