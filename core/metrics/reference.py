"""Reference statistics of a run's data: computed once per data set, split, resolution and
count, and kept in the cache folder (<cache>/fid_stats/<key>.npz) with a subset of the features
(for KID, precision/recall and the data's floor); the statistics .npz format (ADM reference
batches read too); and a run's reference figures (reference_figures), at its resolution or box-
downsampled to its content resolution.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Optional

import jax.numpy as jnp
import numpy as np

from core import runio
from core.config import ExperimentConfig
from core.diffusion.process import avg_pool_to
from core.metrics.features import InceptionExtractor, extract_features
from core.metrics.fid import compute_stats
from core.data.pipeline import iterate_uint8
from core.data.sources import PROCEDURAL, data_fingerprint, make_source, subset


# ----------------------------------------------------------------------------------------------
# The statistics file


def _npz_rows(path, key: str) -> int:
  """Rows of one array of an .npz, read from its header: an ADM reference batch's images
  (arr_0, ~2 GB at 256px) are not loaded to count them."""
  import zipfile
  with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:   # a newer header version: load the array after all
      with np.load(path) as z:
        return len(z[key])
    shape = read(f)[0]
  return int(shape[0]) if shape else -1


def load_stats(path) -> dict:
  """A statistics .npz -> {'mu', 'sigma', 'count'[, 'mu_s', 'sigma_s'][, 'features',
  'features_s']}: a cache entry, one saved by analysis.fid --save-stats, or an ADM evaluator
  reference batch (arr_0, mu, sigma, mu_s, sigma_s; its count the number of images in arr_0)."""
  path = Path(path)
  with np.load(path) as z:
    keys = set(z.files)
    for a, b, what in (("mu", "sigma", "FID"), ("mu_s", "sigma_s", "sFID")):
      if (a in keys) != (b in keys):
        have, miss = (a, b) if a in keys else (b, a)
        raise ValueError(f"{path}: has '{have}' but no '{miss}'; {what} statistics need both "
                         "(an ADM reference batch holds mu, sigma, mu_s, sigma_s)")
    if "mu_s" in keys and "mu" not in keys:
      raise ValueError(f"{path}: has sFID statistics (mu_s, sigma_s) but no 'mu' and 'sigma'")
    if "mu" not in keys:
      raise ValueError(f"{path}: not a statistics .npz (no 'mu' and 'sigma')")
    count = int(z["count"]) if "count" in keys else (_npz_rows(path, "arr_0") if "arr_0" in keys else -1)
    out = {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64), "count": count}
    if "mu_s" in keys:
      out.update(mu_s=z["mu_s"].astype(np.float64), sigma_s=z["sigma_s"].astype(np.float64))
    # a reference cache entry keeps features for KID and floors (features_s: sFID's)
    for k in ("features", "features_s"):
      if k in keys:
        out[k] = z[k].astype(np.float32)
    return out


def save_stats(path, stats: dict, **extra) -> Path:
  """Writes mu, sigma, count (and mu_s, sigma_s where present: the ADM reference batches'
  names) and `extra` arrays as an .npz, atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")   # two writers never share one
  arrays = {k: np.asarray(stats[k], np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s")
            if k in stats}
  np.savez(tmp, **arrays, count=np.int64(stats["count"]), **extra)
  os.replace(tmp, path)
  return path


# ----------------------------------------------------------------------------------------------
# The cache


def stats_key(name: str, split: str | None = None, resolution=None, num: int | None = None) -> str:
  parts = [name, split, None if resolution is None else f"{resolution}px", None if num is None else f"n{num}"]
  key = "-".join(str(p) for p in parts if p is not None)
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


REFERENCE_FEATURES_MAX = 10_000   # reference features kept beside the statistics, for KID


def reference_stats(name: str, images_fn: Callable[[], Iterable[np.ndarray]], cache_dir=None, *,
                    split: str | None = None, resolution=None, num: int | None = None,
                    extractor=None, total: int | None = None, progress: bool = True,
                    spatial: bool = False) -> dict:
  """Statistics of a data set, computed once and kept as <cache>/fid_stats/<key>.npz, with the
  features of up to REFERENCE_FEATURES_MAX of its images (a fixed random subset, for KID and the
  metric's floor) under 'features'. With `spatial` (an extractor made with spatial=True) also
  sFID's mu_s, sigma_s and the same subset's spatial features under 'features_s'.

  `name` must identify the images (core.data.sources.data_fingerprint does for a run's data): two data
  sets given one name share an entry. `images_fn()` yields uint8 NHWC batches; it is called
  only when the cache has no entry, or an entry written before features were kept, or (with
  `spatial`) one written before sFID: that entry is computed again, once, and its pool_3
  figures come out the same (the network's pool_3 output does not change with spatial).
  `extractor` defaults to an InceptionExtractor with the default weights.
  """
  if cache_dir is None:
    cache_dir = runio.cache_dir()
  path = Path(cache_dir) / "fid_stats" / f"{stats_key(name, split, resolution, num)}.npz"
  if path.is_file():
    try:
      out = load_stats(path)
    except (OSError, ValueError, EOFError):   # a torn or foreign file: computed afresh
      out = {}
    if "features" in out and (not spatial or "features_s" in out):
      return out
  if extractor is None:
    extractor = InceptionExtractor(spatial=spatial)
  feats = extract_features(images_fn(), extractor, total=total, num=num, spatial=spatial,
                           desc=path.stem, progress=progress)
  stats = compute_stats(feats["pool"], feats.get("spatial"))
  kept = {k: subset(feats[v], REFERENCE_FEATURES_MAX).astype(np.float32)
          for k, v in (("features", "pool"), ("features_s", "spatial")) if v in feats}
  network = "inception-2015-12-05 pool_3" + (", mixed_6/conv[..., :7]" if spatial else "")
  save_stats(path, stats, network=np.array(network), **kept)
  return {**stats, **kept}


# ----------------------------------------------------------------------------------------------
# A run's references


def reference_num(cfg: ExperimentConfig, split: str) -> int:
  n_split = len(make_source(cfg.data, cfg.resolution, split))
  return min(n_split, cfg.eval.ref_num or 50_000)


def data_name(cfg: ExperimentConfig, split: str) -> str:
  """Identifies a split's reference images in the statistics cache: the source, the folder's
  name for people to read, and a fingerprint of what is read (core.data.sources.data_fingerprint)."""
  d = cfg.data
  label = f"{d.source}{d.size}" if d.source in PROCEDURAL else \
      f"{d.source}-{os.path.basename(os.path.normpath(d.path)) or 'default'}"
  return f"{label}-{data_fingerprint(d, split, reference_num(cfg, split))}"


def box_downsample(images: np.ndarray, r: int) -> np.ndarray:
  """uint8 (n, R, R, 3) -> uint8 (n, r, r, 3), each pixel the mean of its (R/r)^2 block (the
  D_s of section 3.2): how a sample at R is seen at its content resolution r."""
  x = avg_pool_to(np.asarray(images, np.float32), r)
  return np.asarray(jnp.clip(jnp.round(x), 0, 255)).astype(np.uint8)


def reference_figures(cfg: ExperimentConfig, split: str, extractor, progress: bool,
                      at: Optional[int] = None) -> dict:
  """mu, sigma, count and 'features' (up to REFERENCE_FEATURES_MAX) of a split; with
  an extractor of spatial features also sFID's mu_s, sigma_s and 'features_s'. at: the split's
  images box-downsampled to this resolution first (scored_content), as the samples are."""
  num = reference_num(cfg, split)
  bs = min(cfg.eval.batch_size, num)
  images = lambda: iterate_uint8(cfg.data, cfg.resolution, split, num, bs)
  name, res = data_name(cfg, split), cfg.resolution
  if at is not None and at != cfg.resolution:
    images = lambda f=images: (box_downsample(b, at) for b in f())
    name, res = f"{name}-from{cfg.resolution}", at
  return reference_stats(
      name, images, cfg.eval.stats_dir or None, split=split, resolution=res, num=num,
      extractor=extractor, total=num, progress=progress,
      spatial=bool(getattr(extractor, "has_spatial", False)))
