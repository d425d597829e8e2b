"""Memorisation: how close a model's samples come to its training images, read at the content
resolution (box-downsampled there, as the oracle reads them).

For each sample, the L2 distances to its nearest and second-nearest training image (d1, d2):
  - copy fraction: the share of samples with d1 < d2 / 3, Carlini et al. (2023)'s test for a
    generated image that reproduces one training image rather than blending several;
  - nearest-neighbour ratio: the median d1 of the samples over the median d1 of held-out real
    images (fresh images of the eval split, as many as the samples): a model that generalises
    lies about as far from its training set as new images do (ratio near 1), one that
    memorises nearer (ratio well below 1).
What makes them move is a small training set seen for many epochs (data.size): the regime of
the paper's dropout ablation (table 3). eval.memorisation turns them on; an evaluation and a
learning curve (core.curve) then record them.
"""
from __future__ import annotations

import numpy as np


def nearest_two(a: np.ndarray, b: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """For each row of a (n, D), the two smallest Euclidean distances to the rows of b (N >= 2,
  D), by |a|^2 + |b|^2 - 2 a.b in float64 (in float32 the cancellation leaves an exact copy
  ~1e-4 away) in blocks of `batch` rows."""
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  if len(b) < 2:
    raise ValueError(f"need at least 2 training images to compare against, got {len(b)}")
  b2 = (b ** 2).sum(1)
  d1, d2 = np.empty(len(a)), np.empty(len(a))
  for i in range(0, len(a), batch):
    x = a[i:i + batch]
    sq = (x ** 2).sum(1)[:, None] + b2[None, :] - 2.0 * (x @ b.T)
    two = np.partition(np.maximum(sq, 0.0), 1, axis=1)[:, :2]
    two.sort(axis=1)
    d1[i:i + len(x)], d2[i:i + len(x)] = np.sqrt(two[:, 0]), np.sqrt(two[:, 1])
  return d1, d2


def scores(samples: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> dict:
  """The record's "memorisation" entry: samples, training images and held-out real images as
  uint8 (n, r, r, 3) at one resolution (distances in [0, 1] pixel units)."""
  s, t, h = (np.asarray(x, np.float32) / 255.0 for x in (samples, train, held_out))
  d1, d2 = nearest_two(s, t)
  h1, h2 = nearest_two(h, t)
  return {"num": int(len(s)), "train_images": int(len(t)), "held_out": int(len(h)),
          "copy_fraction": float(np.mean(d1 < d2 / 3.0)),
          "held_out_copy_fraction": float(np.mean(h1 < h2 / 3.0)),
          "d1_median": float(np.median(d1)), "held_out_d1_median": float(np.median(h1)),
          "nn_ratio": float(np.median(d1) / max(np.median(h1), 1e-12))}


_REAL: dict = {}


def real_images(cfg, split: str, num: int, at: int) -> np.ndarray:
  """num images of a split (core.data.sources' fixed subset) as a run's samples are read: at the
  run's resolution, box-downsampled to `at`; uint8, kept for the process."""
  from core.data.pipeline import iterate_uint8
  from core.metrics.reference import box_downsample
  from core.data.sources import data_fingerprint
  key = (data_fingerprint(cfg.data, split, num), cfg.resolution, at)
  if key not in _REAL:
    parts = [box_downsample(b, at) if b.shape[1] != at else b for b in iterate_uint8(
        cfg.data, cfg.resolution, split, num, min(cfg.eval.batch_size, num))]
    _REAL[key] = np.concatenate(parts)
  return _REAL[key]


def run_scores(cfg, samples: np.ndarray, at: int) -> dict:
  """scores() of a run's samples (uint8 at `at`) against its training split (all of it, at
  most eval.memorisation_train images; 0: 50,000) and as many held-out eval-split images."""
  from core.data.sources import make_source
  n_train = min(len(make_source(cfg.data, cfg.resolution, cfg.data.split)),
                cfg.eval.memorisation_train or 50_000)
  return scores(samples, real_images(cfg, cfg.data.split, n_train, at),
                real_images(cfg, cfg.data.eval_split, len(samples), at))
