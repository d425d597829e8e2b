"""Evaluation of a trained run: samples with the EMA parameters, a PNG grid, FID and IS.

FID "train" compares the samples with the training split's statistics, FID "eval" with the
evaluation split's (SPEC section 3); reference statistics are computed once per data set,
split and resolution and cached (core.fid).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from core.config import ExperimentConfig
from core.samplers import sample


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255]."""
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def class_labels(n: int, num_classes: int, seed: int) -> Optional[np.ndarray]:
  """Balanced labels in a fixed random order (as the paper samples every class equally)."""
  if num_classes == 0:
    return None
  rng = np.random.default_rng(seed)
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def make_sampler(trainer, params, cfg: ExperimentConfig, batch: int) -> Callable:
  """A jitted function key, labels -> uint8-ready float samples of one batch."""
  from core.schedules import make_schedule
  schedule = make_schedule(cfg.schedule, cfg.resolution)
  shape = (batch, cfg.resolution, cfg.resolution, cfg.model.out_channels)

  def model_fn(z, logsnr, labels):
    return trainer.apply(params, z, logsnr, labels, train=False)

  @jax.jit
  def draw(key, labels):
    return sample(model_fn, shape, key, schedule, cfg.sampler, labels=labels)
  return draw


def generate(trainer, params, cfg: ExperimentConfig, num: int, seed: int = 0,
             progress: bool = True, desc: str = "sampling"):
  """Yields (uint8 images, labels) batches until `num` samples; the last batch is trimmed."""
  from tqdm.auto import tqdm
  bs = min(cfg.eval.batch_size, num)
  draw = make_sampler(trainer, params, cfg, bs)
  labels_all = class_labels(-(-num // bs) * bs, cfg.model.num_classes, seed)
  key = jax.random.fold_in(jax.random.key(cfg.train.seed), 2 + seed)
  done = 0
  with tqdm(total=num, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
    for i in range(-(-num // bs)):
      lab = None if labels_all is None else jnp.asarray(labels_all[i * bs:(i + 1) * bs])
      x = to_uint8(draw(jax.random.fold_in(key, i), lab))
      take = min(bs, num - done)
      yield x[:take], (None if lab is None else np.asarray(lab)[:take])
      done += take
      bar.update(take)


def image_grid(images: np.ndarray, min_tile: int = 64) -> np.ndarray:
  """Tiles N images into a near-square grid; small images are enlarged (nearest) to be seen."""
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  f = max(1, min_tile // h)
  pad = 2
  grid = np.full((rows * (h * f + pad) + pad, cols * (w * f + pad) + pad, c), 255, np.uint8)
  for i, im in enumerate(images):
    r, q = divmod(i, cols)
    big = np.repeat(np.repeat(im, f, 0), f, 1)
    y, x = pad + r * (h * f + pad), pad + q * (w * f + pad)
    grid[y:y + h * f, x:x + w * f] = big
  return grid


def save_grid(images: np.ndarray, path: str) -> None:
  from core.runio import write_bytes_atomic
  import io
  buf = io.BytesIO()
  Image.fromarray(image_grid(images)).save(buf, format="PNG")
  write_bytes_atomic(path, buf.getvalue())


_EXTRACTORS: dict = {}


def inception_extractor(weights: str = "", need_logits: bool = False):
  """One extractor per weights source and process, so the network compiles once."""
  from core.inception import InceptionExtractor
  key = (weights or "", need_logits)
  if key not in _EXTRACTORS:
    _EXTRACTORS[key] = InceptionExtractor(weights or None, need_logits=need_logits)
  return _EXTRACTORS[key]


def data_name(cfg: ExperimentConfig) -> str:
  """Identifies a reference data set in the statistics cache."""
  d = cfg.data
  if d.source == "shapes":
    return f"shapes{d.size}"
  return f"{d.source}-{os.path.basename(os.path.normpath(d.path)) or 'default'}"


def reference_figures(cfg: ExperimentConfig, split: str, extractor, progress: bool) -> dict:
  from core import data as data_lib
  from core.fid import reference_stats
  n_split = len(data_lib.make_source(cfg.data, cfg.resolution, split))
  num = min(n_split, cfg.eval.ref_num or 50_000)
  bs = min(cfg.eval.batch_size, num)
  return reference_stats(
      data_name(cfg), lambda: data_lib.iterate_uint8(cfg.data, cfg.resolution, split, num, bs),
      cfg.eval.stats_dir or None, split=split, resolution=cfg.resolution, num=num,
      extractor=extractor, total=num, progress=progress)


def train_speed(rows: list[dict]) -> Optional[float]:
  """Median images/s of the logged intervals, leaving out the first (it holds compilation)."""
  v = [r["img_per_s"] for r in rows if "img_per_s" in r]
  v = v[1:] if len(v) > 1 else v
  return float(np.median(v)) if v else None


def evaluate_run(result, cfg: ExperimentConfig, run_dir: str, train_rows: list[dict] = (),
                 progress: bool = True) -> dict:
  """Samples with the EMA parameters, writes samples.png and returns the run's figures."""
  from core.fid import compute_stats, fid_from_stats, inception_score
  trainer, state = result.trainer, result.state
  ev = cfg.eval
  n = ev.num_samples if ev.fid else ev.grid_size
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  out = {"params": params, "step": int(state.step), "steps": cfg.train.steps,
         "train_img_per_s": train_speed(list(train_rows)) or result.images_per_s or None,
         "train_time_s": result.train_time_s, "guidance_scale": cfg.sampler.guidance_scale,
         "num_samples": n, "fid_train": None, "fid_eval": None, "is_mean": None, "is_std": None}
  ext = inception_extractor(ev.inception_weights) if ev.fid else None
  want_logits = bool(ev.fid and ev.compute_is and ext.has_logits)
  grid, feats, logits = [], [], []
  for imgs, _ in generate(trainer, state.ema_params, cfg, n, seed=ev.seed, progress=progress):
    if sum(len(g) for g in grid) < ev.grid_size:
      grid.append(imgs[:ev.grid_size - sum(len(g) for g in grid)])
    if ext is not None:
      o = ext(imgs)
      feats.append(o["pool"])
      if want_logits:
        logits.append(o["logits"])
  save_grid(np.concatenate(grid), os.path.join(run_dir, "samples.png"))
  if ext is not None:
    stats = compute_stats(np.concatenate(feats))
    out["fid_train"] = fid_from_stats(stats, reference_figures(cfg, cfg.data.split, ext, progress))
    out["fid_eval"] = fid_from_stats(stats, reference_figures(cfg, cfg.data.eval_split, ext,
                                                              progress))
    if want_logits:
      out["is_mean"], out["is_std"] = inception_score(np.concatenate(logits))
  return out
