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


def make_sampler(trainer, params, cfg: ExperimentConfig, batch: int,
                 t_end: float = 0.0) -> Callable:
  """A jitted function key, labels, low=None -> samples of one batch (floats for to_uint8).

  low: the lower cascade stage's output, for a super-resolution model (cond.task); t_end > 0
  stops at z_{t_end} (truncated CDM augmentation of the next stage).
  """
  from core.conditioning import make_task, repeat_batch
  from core.schedules import make_schedule
  schedule = make_schedule(cfg.schedule, cfg.resolution)
  shape = (batch, cfg.resolution, cfg.resolution, cfg.model.out_channels)
  task = make_task(cfg)

  @jax.jit
  def draw(key, labels, low=None):
    # A stream apart from sample()'s split(key), so a plain model's samples are unchanged.
    cond = task.sample(low, jax.random.fold_in(key, 2))

    def model_fn(z, logsnr, labels):
      return trainer.apply(params, z, logsnr, labels, train=False,
                           **repeat_batch(cond, z.shape[0]))
    return sample(model_fn, shape, key, schedule, cfg.sampler, labels=labels, t_end=t_end)
  return draw


def make_cascade_sampler(stages, batch: int) -> Callable:
  """key, labels -> samples of the last stage, each stage conditioned on the one before.

  stages: (trainer, params, cfg) base first (SPEC section 4). A stage before a truncated
  super-resolution stage stops at that stage's sampler.cond_s.
  """
  draws = []
  for i, (trainer, params, cfg) in enumerate(stages):
    nxt = stages[i + 1][2].sampler if i + 1 < len(stages) else None
    t_end = nxt.cond_s if nxt is not None and nxt.cond_truncated else 0.0
    draws.append(make_sampler(trainer, params, cfg, batch, t_end=t_end))

  def draw(key, labels):
    x = None
    for d, k in zip(draws, jax.random.split(key, len(draws))):
      x = d(k, labels, x)
    return x
  return draw


def generate(trainer, params, cfg: ExperimentConfig, num: int, seed: int = 0,
             progress: bool = True, desc: str = "sampling", lower=()):
  """Yields (uint8 images, labels) batches until `num` samples; the last batch is trimmed.

  lower: a cascade's lower stages as (trainer, params), base first; trainer, params and cfg are
  then its last super-resolution stage.
  """
  from tqdm.auto import tqdm
  bs = min(cfg.eval.batch_size, num)
  if lower:
    draw = make_cascade_sampler([(t, p, t.cfg) for t, p in lower] + [(trainer, params, cfg)], bs)
  else:
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


def training_speed(stages) -> Optional[float]:
  """Training images per second of (TrainResult, train rows) stages; a cascade's stages add up
  as seconds per image, so that it reads as images (of every stage) per second of training."""
  speeds = [train_speed(list(rows)) or r.images_per_s or None for r, rows in stages]
  if len(speeds) == 1:
    return speeds[0]
  if not all(speeds):
    return None
  imgs = [r.trainer.cfg.train.steps * r.trainer.cfg.train.batch_size for r, _ in stages]
  return sum(imgs) / sum(i / v for i, v in zip(imgs, speeds))


def evaluate_run(result, cfg: ExperimentConfig, run_dir: str, train_rows: list[dict] = (),
                 progress: bool = True, lower=()) -> dict:
  """Samples with the EMA parameters, writes samples.png and returns the run's figures.

  lower: a cascade's lower stages as (TrainResult, train rows), base first, `result` being its
  last stage; params and train_time_s are then sums over the stages.
  """
  from core.fid import compute_stats, fid_from_stats, inception_score
  trainer, state = result.trainer, result.state
  stages = [*lower, (result, train_rows)]
  ev = cfg.eval
  n = ev.num_samples if ev.fid else ev.grid_size
  params = sum(int(np.prod(x.shape)) for r, _ in stages for x in jax.tree.leaves(r.state.params))
  out = {"params": params, "step": int(state.step), "steps": cfg.train.steps,
         "train_img_per_s": training_speed(stages),
         "train_time_s": sum(r.train_time_s for r, _ in stages),
         "guidance_scale": cfg.sampler.guidance_scale,
         "num_samples": n, "fid_train": None, "fid_eval": None, "is_mean": None, "is_std": None}
  if cfg.cond.task == "super_res":
    out["cond_s"] = cfg.sampler.cond_s
  if lower:
    out["stages"] = [r.trainer.cfg.resolution for r, _ in stages]
  ext = inception_extractor(ev.inception_weights) if ev.fid else None
  want_logits = bool(ev.fid and ev.compute_is and ext.has_logits)
  grid, feats, logits = [], [], []
  for imgs, _ in generate(trainer, state.ema_params, cfg, n, seed=ev.seed, progress=progress,
                          lower=[(r.trainer, r.state.ema_params) for r, _ in lower]):
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
