"""FID (and IS) between two image sets, as the paper measures them.

  python -m analysis.fid PATH_A PATH_B [--is] [--kid] [--batch-size N] [--num N] [--weights PATH]
                         [--save-stats OUT.npz] [--save-stats-b OUT.npz]
  python -m analysis.fid PATH_A --is

A path is an image folder (recursive, jpg/png), an .npz of uint8 NHWC images (key 'images' or
'arr_0'), or a statistics .npz (mu, sigma[, count][, mu_s, sigma_s]; an ADM evaluator reference
batch is one). Prints `FID: x`, then `sFID: x` (the ADM evaluator's spatial FID) where both
sides have spatial statistics or images (--save-stats keeps them); with --kid then
`KID: mean ± std` (core.metrics.fid.kid_from_features over the pool_3 features, unscaled; needs images
on both sides, since a statistics .npz holds no features); with --is `IS: mean +- std` of PATH_A
(10 splits; needs weights with logits). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from core.metrics import fid as F
from core.metrics.features import extract_features
from core.data.images import IMAGE_EXTS, ImageModeError, image_files, to_rgb8
from core.metrics.reference import load_stats, save_stats
from core.data.sources import subset


def _parser():
  ap = argparse.ArgumentParser(prog="python -m analysis.fid", description=__doc__.split("\n")[0])
  ap.add_argument("path_a", metavar="PATH_A", help="image folder, .npz of images, or statistics .npz")
  ap.add_argument("path_b", metavar="PATH_B", nargs="?", help="the same kinds; optional with --is")
  ap.add_argument("--is", dest="inception_score", action="store_true", help="also print IS of PATH_A")
  ap.add_argument("--splits", type=int, default=10, help="IS splits (default 10)")
  ap.add_argument("--kid", action="store_true", help="also print KID between PATH_A and PATH_B")
  ap.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
  ap.add_argument("--kid-subset-size", type=int, default=1000,
                  help="KID subset size (default 1000; clamped to the smaller set)")
  ap.add_argument("--batch-size", type=int, default=None,
                  help="Inception batch (default 1 on CPU, where it runs fastest, 50 elsewhere)")
  ap.add_argument("--num", type=int, default=None, help="use N images of each set, a fixed random subset (seed 0)")
  ap.add_argument("--weights", default=None, help="Inception weights file (else the default search)")
  ap.add_argument("--save-stats", metavar="OUT.npz", default=None, help="save PATH_A's statistics")
  ap.add_argument("--save-stats-b", metavar="OUT.npz", default=None, help="save PATH_B's statistics")
  ap.add_argument("--quiet", action="store_true", help="no progress bars or weights line")
  return ap


# ----------------------------------------------------------------------------------------------
# What a path on the command line holds


def list_images(folder) -> list[Path]:
  """Image files under folder (recursive), sorted by relative path: core.data.images.image_files,
  the folder source's reader."""
  return [Path(folder) / f for f in image_files(str(folder), recursive=True)]


def _load_rgb(path: Path) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    try:
      return np.asarray(to_rgb8(im), np.uint8)
    except ImageModeError as e:
      raise ImageModeError(f"{path}: {e}") from None


def iterate_image_files(files: list, batch_size: int) -> Iterator[np.ndarray]:
  """uint8 (N, H, W, 3) batches; a batch closes early where the image size changes."""
  batch: list = []
  for f in files:
    im = _load_rgb(Path(f))
    if batch and im.shape != batch[0].shape:
      yield np.stack(batch)
      batch = []
    batch.append(im)
    if len(batch) == batch_size:
      yield np.stack(batch)
      batch = []
  if batch:
    yield np.stack(batch)


def iterate_arrays(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
  for i in range(0, len(images), batch_size):
    yield images[i: i + batch_size]


def _as_uint8_nhwc(images, where: str) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
    images = images.transpose(0, 2, 3, 1)  # NCHW
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{where}: expected images of shape (N, H, W, 3), got {images.shape}")
  if images.dtype != np.uint8:
    if np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 255:
      raise ValueError(f"{where}: images must be uint8 in [0, 255], got {images.dtype}")
    images = images.astype(np.uint8)
  return images


def load_npz(path) -> dict:
  """An .npz of images ('images' or 'arr_0', uint8 NHWC) -> {'images'}; of statistics ->
  core.metrics.reference.load_stats's dict (an ADM evaluator reference batch is statistics)."""
  path = Path(path)
  with np.load(path) as z:
    keys = set(z.files)
    if keys & {"mu", "sigma", "mu_s", "sigma_s"}:
      return load_stats(path)
    for key in ("images", "arr_0"):
      if key in keys:
        return {"images": _as_uint8_nhwc(z[key], str(path))}
  raise ValueError(f"{path}: an .npz needs 'images'/'arr_0' (uint8 NHWC) or 'mu' and 'sigma'")


class Input:
  """What a path on the command line holds: statistics, or images (files or an array) to run
  through the network at their own size."""

  def __init__(self, path, *, stats: dict | None = None, files: list | None = None,
               images: np.ndarray | None = None):
    self.path, self.stats, self.files, self.images = Path(path), stats, files, images

  @property
  def count(self) -> int:
    if self.stats is not None:
      return int(self.stats["count"])
    return len(self.files) if self.files is not None else len(self.images)

  def batches(self, batch_size: int, num: int | None = None) -> Iterator[np.ndarray]:
    if self.files is not None:
      return iterate_image_files(self.files[:num], batch_size)
    return iterate_arrays(self.images[:num], batch_size)


def open_source(path, num: int | None = None) -> Input:
  """An image folder, an .npz of images, or a statistics .npz. Errors name the path."""
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{path}: no such file or directory")
  if p.is_dir():
    files = list_images(p)
    if not files:
      raise ValueError(f"{path}: no {'/'.join(IMAGE_EXTS)} images in this folder")
    return Input(p, files=subset(files, num))
  if p.suffix.lower() == ".npz":
    try:
      data = load_npz(p)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: unreadable .npz ({e})") from None
    if "images" in data:
      if len(data["images"]) == 0:
        raise ValueError(f"{path}: holds no images")
      return Input(p, images=data["images"][subset(np.arange(len(data["images"])), num)])
    return Input(p, stats=data)
  if p.suffix.lower() in IMAGE_EXTS:
    return Input(p, files=[p])
  raise ValueError(f"{path}: not an image folder, an .npz of images or a statistics .npz")


def source_features(source: Input, extractor, *, batch_size: int = 50, num: int | None = None,
                    logits: bool = False, spatial: bool = False,
                    progress: bool = True) -> dict[str, np.ndarray]:
  return extract_features(source.batches(batch_size, num), extractor, total=source.count, num=num,
                          logits=logits, spatial=spatial, desc=source.path.name or str(source.path),
                          progress=progress)


LOAD_BATCH = 50  # images read and decoded a batch; the Inception batch is --batch-size


def _fail(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def _check_pair(path, stats: dict, mu_key: str, sigma_key: str, what: str, nan_what: str):
  """Why stats[mu_key], stats[sigma_key] are not a mean (D,) and a finite covariance (D, D)."""
  mu, sigma = np.asarray(stats[mu_key]), np.asarray(stats[sigma_key])
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    return (f"{path}: {what} need {mu_key} of shape (D,) and {sigma_key} (D, D), got {mu.shape} "
            f"and {sigma.shape}; save them with --save-stats")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    return f"{path}: {nan_what} NaN or infinite values; compute them again (--save-stats)"
  return None


def _check_stats(path, stats: dict) -> str | None:
  """Why a statistics .npz cannot give an FID (or its sFID part), or None."""
  why = _check_pair(path, stats, "mu", "sigma", "statistics", "the statistics hold")
  if why is None and "mu_s" in stats:
    why = _check_pair(path, stats, "mu_s", "sigma_s", "spatial statistics", "mu_s or sigma_s hold")
  return why


def _bad_image(files) -> object:
  """The first of files that does not decode (the batch reader's error names only the folder)."""
  for f in files:
    try:
      next(iterate_image_files([f], 1))
    except (OSError, ValueError):
      return f
  return None


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.path_b is None and not args.inception_score:
    return _fail("PATH_B is required unless --is is given")
  if (args.batch_size is not None and args.batch_size < 1) or (args.num is not None and args.num < 1):
    return _fail("--batch-size and --num must be positive")
  if args.kid and args.path_b is None:
    return _fail("--kid needs PATH_B")
  if args.kid_subsets < 1 or args.kid_subset_size < 2:
    return _fail("--kid-subsets must be positive and --kid-subset-size at least 2")
  sources = []
  for p in (args.path_a, args.path_b):
    if p is None:
      sources.append(None)
      continue
    try:
      sources.append(open_source(p, num=args.num))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__   # np.load's: no path
      return _fail(msg if msg.startswith(str(p)) else
                   f"{p}: unreadable ({msg}); pass an image folder, an .npz of images or a "
                   "statistics .npz")
  a, b = sources
  for p, src in ((args.path_a, a), (args.path_b, b)):
    why = src is not None and src.stats is not None and _check_stats(p, src.stats)
    if why:
      return _fail(why)
  if a.stats is not None and b is not None and b.stats is not None and \
      len(a.stats["mu"]) != len(b.stats["mu"]):
    return _fail(f"{args.path_b}: statistics of dimension {len(b.stats['mu'])}, but "
                 f"{args.path_a} has {len(a.stats['mu'])}; compare statistics of one network")
  if args.inception_score and a.stats is not None:
    return _fail(f"{args.path_a}: IS needs images, not statistics")
  for p, src in ((args.path_a, a), (args.path_b, b)):
    if args.kid and src.stats is not None:  # checked before any image goes through the network
      return _fail(f"{p}: KID needs images (features); a statistics .npz has none")
  for src, out in ((a, args.save_stats), (b, args.save_stats_b)):
    if out is not None and src is None:
      return _fail("--save-stats-b needs PATH_B")

  extractor = None
  if any(s is not None and s.stats is None for s in sources):
    from core.devices import setup
    setup()
    from core.metrics.features import InceptionExtractor
    from core.metrics.inception_weights import InceptionWeightsNotFound, load_inception_params
    try:
      extractor = InceptionExtractor(args.weights, need_logits=args.inception_score,
                                     batch_size=args.batch_size, verbose=not args.quiet,
                                     spatial=True)
    except InceptionWeightsNotFound as e:
      if args.inception_score:
        try:  # weights exist but lack the 1008-way head: say that in one line
          _, src = load_inception_params(args.weights)
        except InceptionWeightsNotFound:
          return _fail(str(e))
        return _fail(f"IS needs Inception weights with logits, but {src} has features only; pass "
                     "NVIDIA's inception-2015-12-05.pt or pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                     "with --weights (or SIMPLEDIFF_INCEPTION)")
      return _fail(str(e))

  stats, logits, pools, spatials = [], None, [], [None, None]
  for i, src in enumerate(sources):
    if src is None:
      stats.append(None)
      continue
    if src.stats is not None:
      stats.append(src.stats)
      continue
    t = time.perf_counter()
    try:
      feats = source_features(src, extractor, batch_size=args.batch_size or LOAD_BATCH,
                                num=args.num,
                                logits=args.inception_score and i == 0, spatial=True,
                                progress=not args.quiet)
    except (OSError, ValueError) as e:  # an unreadable image, say
      bad = _bad_image(src.files) if src.files is not None else None
      if bad is not None:
        return _fail(f"{bad}: {e}; remove or replace this file")
      return _fail(f"{src.path}: {e}")
    n = len(feats["pool"])
    dt = time.perf_counter() - t
    print(f"{src.path}: {n} images, {n / dt:.1f} images/s", file=sys.stderr)
    if n < 2:
      return _fail(f"{src.path}: FID needs at least 2 images, got {n}")
    stats.append(F.compute_stats(feats["pool"], feats["spatial"]))
    pools.append(feats["pool"])
    spatials[i] = feats["spatial"]
    if "logits" in feats:
      logits = feats["logits"]

  if stats[1] is not None and len(stats[0]["mu"]) != len(stats[1]["mu"]):
    return _fail(f"{args.path_a} has features of dimension {len(stats[0]['mu'])} and "
                 f"{args.path_b} of {len(stats[1]['mu'])}; pass statistics of this network")

  sa, sb = (None if st is None else F.spatial_stats(st) for st in stats)
  if sa is not None and sb is not None and len(sa["mu"]) != len(sb["mu"]):
    return _fail(f"{args.path_a} has spatial statistics of dimension {len(sa['mu'])} and "
                 f"{args.path_b} of {len(sb['mu'])}; pass statistics of this network")

  for st, out in ((stats[0], args.save_stats), (stats[1], args.save_stats_b)):
    if out is not None:
      save_stats(out, st)
      print(f"saved statistics to {out}", file=sys.stderr)
  if stats[1] is not None:
    print(f"FID: {F.fid_from_stats(stats[0], stats[1]):.4f}")
    # sFID from one side's features where there are some: the low-rank route, fast with fewer
    # images than the 2023 dimensions (same value to ~1e-7 relative)
    if spatials[0] is not None or spatials[1] is not None:
      j = 0 if spatials[0] is not None else 1
      sfid = F.sfid_features_vs_stats(spatials[j], stats[1 - j])
    else:
      sfid = F.sfid_from_stats(stats[0], stats[1])
    if sfid is not None:
      print(f"sFID: {sfid:.4f}")
    elif not args.quiet:
      lacking = args.path_a if sa is None else args.path_b
      print(f"no sFID: {lacking} holds no spatial statistics (mu_s, sigma_s)", file=sys.stderr)
  if args.kid:
    mean, std = F.kid_from_features(pools[0], pools[1], subsets=args.kid_subsets,
                                    subset_size=args.kid_subset_size)
    print(f"KID: {mean:.6f} ± {std:.6f}")
  if args.inception_score:
    if len(logits) < args.splits:
      return _fail(f"{args.path_a}: IS with {args.splits} splits needs at least {args.splits} images")
    mean, std = F.inception_score(logits, args.splits)
    print(f"IS: {mean:.4f} +- {std:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
