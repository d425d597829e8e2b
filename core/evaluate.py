"""Evaluation of a trained run: samples with the EMA parameters, a PNG grid, FID and IS.

FID "train" compares the samples with the training split's statistics, FID "eval" with the
evaluation split's (SPEC section 3); reference statistics are computed once per data set,
split and resolution and cached (core.fid).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from core.config import ExperimentConfig
from core.devices import devices_for_batch
from core.runio import STOP
from core.samplers import sample


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255]."""
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def local_rows(x) -> tuple[np.ndarray, np.ndarray]:
  """(this process's rows of a batch-sharded global array, their global row indices). One
  process: the whole array. Replicated shards of a row are taken once."""
  if x.is_fully_addressable:
    return np.asarray(x), np.arange(x.shape[0])
  parts = {}
  for sh in x.addressable_shards:
    start = sh.index[0].start or 0
    parts.setdefault(start, sh.data)
  starts = sorted(parts)
  rows = np.concatenate([np.asarray(parts[s]) for s in starts])
  idx = np.concatenate([np.arange(s, s + parts[s].shape[0]) for s in starts])
  return rows, idx


def gather_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Every process's rows of `a` (row i of this process is global row idx[i]), in global
  order, on every process; one process: `a` itself. The statistics of FID, KID and IS are then
  computed from exactly the features one process would have had."""
  if jax.process_count() == 1:
    return a
  from jax.experimental import multihost_utils
  all_a = np.asarray(multihost_utils.process_allgather(a, tiled=True))
  all_idx = np.asarray(multihost_utils.process_allgather(idx, tiled=True))
  return all_a[np.argsort(all_idx, kind="stable")]


def _global(x: np.ndarray, sharding):
  """A host array that every process holds alike -> a global array of `sharding` (works across
  processes, where device_put of host data would need every device to be local)."""
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def class_labels(n: int, num_classes: int, seed: int) -> Optional[np.ndarray]:
  """Balanced labels in a fixed random order (as the paper samples every class equally)."""
  if num_classes == 0:
    return None
  rng = np.random.default_rng(seed)
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def make_sampler(trainer, params, cfg: ExperimentConfig, batch: int,
                 t_end: float = 0.0, mesh=None, trajectory: bool = False) -> Callable:
  """A jitted function key, labels, low=None -> samples of one batch (floats for to_uint8).

  The batch is split over the mesh's 'data' axis (default: the devices that divide it, one per
  core on CPU), parameters replicated: each device draws its share. low: the lower cascade
  stage's output, for a super-resolution model (cond.task); t_end > 0 stops at z_{t_end}
  (truncated CDM augmentation of the next stage). trajectory: return (samples, trajectory) as
  core.samplers.sample does.
  """
  from jax.sharding import NamedSharding, PartitionSpec as P
  from core.conditioning import make_task, repeat_batch
  from core.devices import make_mesh
  from core.schedules import make_schedule
  schedule = make_schedule(cfg.schedule, cfg.resolution)
  shape = (batch, cfg.resolution, cfg.resolution, cfg.model.out_channels)
  task = make_task(cfg)
  mesh = mesh or make_mesh(batch=batch)
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jax.device_put(params, rep)

  # Parameters are an argument, not a closure: closed-over arrays become constants of the
  # compiled program (slow to compile and held twice).
  @functools.partial(jax.jit, out_shardings=None if trajectory else rows)
  def _draw(params, key_data, labels, low):
    key = jax.random.wrap_key_data(key_data)
    # A stream apart from sample()'s split(key), so a plain model's samples are unchanged.
    cond = task.sample(low, jax.random.fold_in(key, 2))

    def model_fn(z, logsnr, labels):
      return trainer.apply(params, z, logsnr, labels, train=False,
                           **repeat_batch(cond, z.shape[0]))
    return sample(model_fn, shape, key, schedule, cfg.sampler, labels=labels, t_end=t_end,
                  sharding=rows, return_trajectory=trajectory, prediction=cfg.model.prediction)

  def args(key, labels, low=None):
    # Host inputs, the same on every process, become global arrays; `low` (a lower cascade
    # stage's output) already is one.
    def put(x):
      if x is None or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return x
      return jax.device_put(x, rows) if jax.process_count() == 1 else _global(np.asarray(x), rows)
    kd = _global(np.asarray(jax.random.key_data(key)), rep)
    return params, kd, put(labels), put(low)

  def draw(key, labels, low=None):
    return _draw(*args(key, labels, low))
  draw.mesh = mesh
  # The compiled program's HLO text (scripts/profile_step.py names its ops with it).
  draw.hlo_text = lambda key, labels, low=None: _draw.lower(*args(key, labels, low)).compile(
      ).as_text()
  return draw


def make_cascade_sampler(stages, batch: int) -> Callable:
  """key, labels -> samples of the last stage, each stage conditioned on the one before.

  stages: (trainer, params, cfg) base first (SPEC section 4). A stage before a truncated
  super-resolution stage stops at that stage's sampler.cond_s.
  """
  from core.conditioning import truncated_at
  draws = []
  for i, (trainer, params, cfg) in enumerate(stages):
    t_end = truncated_at(stages[i + 1][2]) if i + 1 < len(stages) else 0.0
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
      STOP.check()
      lab = None if labels_all is None else labels_all[i * bs:(i + 1) * bs]
      x, idx = local_rows(draw(jax.random.fold_in(key, i), lab))
      take = min(bs, num - done)
      keep = idx < take
      yield (to_uint8(x[keep]), None if lab is None else lab[idx[keep]], done + idx[keep])
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


def inception_extractor(weights: str = "", need_logits: bool = False, spatial: bool = True):
  """One extractor per weights source and process, so the network compiles once; with the
  spatial features for sFID by default (its pool_3 output is the same either way)."""
  from core.inception import InceptionExtractor
  key = (weights or "", need_logits, spatial)
  if key not in _EXTRACTORS:
    _EXTRACTORS[key] = InceptionExtractor(weights or None, need_logits=need_logits,
                                          spatial=spatial)
  return _EXTRACTORS[key]


def reference_num(cfg: ExperimentConfig, split: str) -> int:
  from core import data as data_lib
  n_split = len(data_lib.make_source(cfg.data, cfg.resolution, split))
  return min(n_split, cfg.eval.ref_num or 50_000)


def data_name(cfg: ExperimentConfig, split: str) -> str:
  """Identifies a split's reference images in the statistics cache: the source, the folder's
  name for people to read, and a fingerprint of what is read (core.data.data_fingerprint)."""
  from core import data as data_lib
  d = cfg.data
  label = f"{d.source}{d.size}" if d.source in data_lib.PROCEDURAL else \
      f"{d.source}-{os.path.basename(os.path.normpath(d.path)) or 'default'}"
  return f"{label}-{data_lib.data_fingerprint(d, split, reference_num(cfg, split))}"


def scored_content(cfg: ExperimentConfig) -> Optional[int]:
  """The content resolution a run's samples are also scored at (box-downsampled to it), where
  its data are made there and upsampled (data.content_resolution); None otherwise."""
  from core.sources import content_resolution
  c = content_resolution(cfg.data, cfg.resolution)
  return c if c < cfg.resolution and cfg.resolution % c == 0 else None


def box_downsample(images: np.ndarray, r: int) -> np.ndarray:
  """uint8 (n, R, R, 3) -> uint8 (n, r, r, 3), each pixel the mean of its (R/r)^2 block (the
  D_s of section 3.2): how a sample at R is seen at its content resolution r."""
  from core.diffusion import avg_pool_to
  x = avg_pool_to(np.asarray(images, np.float32), r)
  return np.asarray(jnp.clip(jnp.round(x), 0, 255)).astype(np.uint8)


def reference_figures(cfg: ExperimentConfig, split: str, extractor, progress: bool,
                      at: Optional[int] = None) -> dict:
  """mu, sigma, count and 'features' (up to core.fid.REFERENCE_FEATURES_MAX) of a split; with
  an extractor of spatial features also sFID's mu_s, sigma_s and 'features_s'. at: the split's
  images box-downsampled to this resolution first (scored_content), as the samples are."""
  from core import data as data_lib
  from core.fid import reference_stats
  num = reference_num(cfg, split)
  bs = min(cfg.eval.batch_size, num)
  images = lambda: data_lib.iterate_uint8(cfg.data, cfg.resolution, split, num, bs)
  name, res = data_name(cfg, split), cfg.resolution
  if at is not None and at != cfg.resolution:
    images = lambda f=images: (box_downsample(b, at) for b in f())
    name, res = f"{name}-from{cfg.resolution}", at
  return reference_stats(
      name, images, cfg.eval.stats_dir or None, split=split, resolution=res, num=num,
      extractor=extractor, total=num, progress=progress,
      spatial=bool(getattr(extractor, "has_spatial", False)))


def sample_metrics(features: np.ndarray, ref: dict, kid_subsets: int = 100,
                   spatial: Optional[np.ndarray] = None) -> dict:
  """FID, KID (mean, std over subsets), precision/recall (Kynkaanniemi et al. 2019, k = 3)
  and sFID of features against a reference split's figures. KID and precision/recall use the
  split's kept features (up to core.fid.REFERENCE_FEATURES_MAX); precision/recall are None
  where either set has no more than k rows (no k-th neighbour); sFID (from `spatial`, the
  same samples' spatial features) is None without them or without the split's mu_s."""
  from core.fid import (fid_features_vs_stats, kid_from_features, precision_recall,
                        sfid_features_vs_stats)
  kid, kid_std = kid_from_features(features, ref["features"], subsets=kid_subsets)
  precision = recall = None
  if min(len(features), len(ref["features"])) > 3:
    precision, recall = precision_recall(ref["features"], features, k=3)
  sfid = None if spatial is None else sfid_features_vs_stats(spatial, ref)
  return {"fid": fid_features_vs_stats(features, ref), "kid": kid, "kid_std": kid_std,
          "precision": precision, "recall": recall, "sfid": sfid}


def floor_metrics(n: int, ref: dict, other: dict, kid_subsets: int = 100) -> tuple[dict, int]:
  """What a perfect model scores against `ref` at n samples: n real images of the other split
  (independent of ref's images), measured like samples. Uses the other split's kept features,
  or its full statistics where it has exactly n images; returns (metrics, images used)."""
  from core.fid import fid_from_stats, kid_from_features, sfid_from_stats
  feats = other["features"]
  if len(feats) >= n:
    spatial = other["features_s"][:n] if "features_s" in other else None
    return sample_metrics(feats[:n], ref, kid_subsets, spatial=spatial), n
  # fewer kept features than n (n > REFERENCE_FEATURES_MAX): FID from the full statistics
  kid, kid_std = kid_from_features(feats, ref["features"], subsets=kid_subsets)
  return {"fid": fid_from_stats(other, ref), "kid": kid, "kid_std": kid_std,
          "sfid": sfid_from_stats(other, ref)}, int(other["count"])


def content_figures(cfg: ExperimentConfig, feats: np.ndarray, extractor, at: int,
                    progress: bool) -> dict:
  """FID and KID of samples box-downsampled to the content resolution `at`, against the eval
  split downsampled alike, with the floor (train split images downsampled alike): the issue-26
  test that a model at R with data made at `at` matches a model trained at `at` itself."""
  ref = reference_figures(cfg, cfg.data.eval_split, extractor, progress, at=at)
  other = reference_figures(cfg, cfg.data.split, extractor, progress, at=at)
  m = sample_metrics(feats, ref)
  fm, num = floor_metrics(len(feats), ref, other)
  return {"resolution": at, "fid_eval": m["fid"], "kid_eval": m["kid"],
          "kid_eval_std": m["kid_std"],
          "floor": {"num": num, "fid_eval": fm["fid"], "kid_eval": fm["kid"]}}


def schedule_record(cfg: ExperimentConfig) -> dict:
  """The run's noise schedule for its evaluation record, with its shift in nats of logSNR
  (eq. 5: 2 ln(noise_d / resolution); 0 for cosine; None where it varies with t)."""
  sc = cfg.schedule
  rec = {"name": sc.name}
  if sc.name == "shifted":
    rec.update(noise_d=sc.noise_d, logsnr_shift=2.0 * math.log(sc.noise_d / cfg.resolution))
  else:
    rec["logsnr_shift"] = 0.0 if sc.name == "cosine" else None
  return rec


def training_speed(stages) -> Optional[float]:
  """Training images per second of (TrainResult, train rows) stages (core.metrics: the median
  logged interval; a cascade's stages combined as images per second of all their training)."""
  from core.metrics import combined_speed, run_speed
  speeds = [run_speed(list(rows)) or r.images_per_s or None for r, rows in stages]
  imgs = [r.trainer.cfg.train.steps * r.trainer.cfg.train.batch_size for r, _ in stages]
  return combined_speed(imgs, speeds)


def evaluate_run(result, cfg: ExperimentConfig, run_dir: str, train_rows: list[dict] = (),
                 progress: bool = True, lower=(), grid_path: Optional[str] = None) -> dict:
  """Samples with the EMA parameters, writes the grid and returns the run's figures.

  lower: a cascade's lower stages as (TrainResult, train rows), base first, `result` being its
  last stage; params and train_time_s are then sums over the stages. grid_path: where the
  sample grid goes (default run_dir/samples.png).
  """
  import time
  from core.fid import inception_score
  t_start = time.perf_counter()
  trainer, state = result.trainer, result.state
  stages = [*lower, (result, train_rows)]
  ev = cfg.eval
  n = ev.num_samples if ev.fid else ev.grid_size
  params = sum(int(np.prod(x.shape)) for r, _ in stages for x in jax.tree.leaves(r.state.params))
  out = {"params": params, "step": int(state.step), "steps": cfg.train.steps,
         "resolution": cfg.resolution, "schedule": schedule_record(cfg),
         "train_img_per_s": training_speed(stages),
         "train_time_s": sum(r.train_time_s for r, _ in stages),
         "guidance_scale": cfg.sampler.guidance_scale,
         "num_samples": n, "fid_train": None, "fid_eval": None, "kid_train": None,
         "kid_eval": None, "precision_train": None, "recall_train": None,
         "precision_eval": None, "recall_eval": None, "is_mean": None, "is_std": None,
         "sfid_train": None, "sfid_eval": None,
         # how the samples were drawn (issue 13: evaluation records say so)
         "sampler": {"name": cfg.sampler.name, "steps": cfg.sampler.steps,
                     "noise_param": cfg.sampler.noise_param, "clip_x": cfg.sampler.clip_x},
         "devices": len(devices_for_batch(min(ev.batch_size, n))) if jax.process_count() == 1
                    else jax.device_count(),
         "processes": jax.process_count()}
  if cfg.cond.task == "super_res":
    out["cond_s"] = cfg.sampler.cond_s
  if lower:
    out["stages"] = [r.trainer.cfg.resolution for r, _ in stages]
  ext = inception_extractor(ev.inception_weights) if ev.fid else None
  want_logits = bool(ev.fid and ev.compute_is and ext.has_logits)
  content = scored_content(cfg) if ev.fid else None
  grid, feats, logits, rows, spatial, feats_c = [], [], [], [], [], []
  # Each process draws its share of every batch (the sampler's mesh spans every process) and
  # extracts the features of the images it holds; the features are then gathered, so that
  # every statistic is computed from all samples, as on one device.
  for imgs, _, idx in generate(trainer, state.ema_params, cfg, n, seed=ev.seed,
                               progress=progress,
                               lower=[(r.trainer, r.state.ema_params) for r, _ in lower]):
    if sum(len(g) for g in grid) < ev.grid_size:
      grid.append(gather_rows(imgs, idx)[:ev.grid_size - sum(len(g) for g in grid)])
    rows.append(idx)
    if ext is not None:
      o = ext(imgs)
      feats.append(o["pool"])
      spatial.append(o["spatial"])
      if want_logits:
        logits.append(o["logits"])
      if content is not None:
        feats_c.append(ext(box_downsample(imgs, content))["pool"])
  if jax.process_index() == 0:
    save_grid(np.concatenate(grid), grid_path or os.path.join(run_dir, "samples.png"))
  if ext is not None:
    rows = np.concatenate(rows)
    feats = gather_rows(np.concatenate(feats), rows)
    spatial = gather_rows(np.concatenate(spatial), rows)
    if want_logits:
      logits = [gather_rows(np.concatenate(logits), rows)]
    refs = {name: reference_figures(cfg, split, ext, progress)
            for name, split in (("train", cfg.data.split), ("eval", cfg.data.eval_split))}
    floor = {"resolution": cfg.resolution}
    for name, other in (("train", "eval"), ("eval", "train")):
      m = sample_metrics(feats, refs[name], spatial=spatial)
      out[f"fid_{name}"], out[f"kid_{name}"], out[f"kid_{name}_std"] = \
          m["fid"], m["kid"], m["kid_std"]
      out[f"sfid_{name}"] = m["sfid"]
      out[f"precision_{name}"], out[f"recall_{name}"] = m["precision"], m["recall"]
      fm, floor["num"] = floor_metrics(len(feats), refs[name], refs[other])
      floor[f"fid_{name}"], floor[f"kid_{name}"], floor[f"kid_{name}_std"] = \
          fm["fid"], fm["kid"], fm["kid_std"]
      floor[f"sfid_{name}"] = fm["sfid"]
      # real images' own precision/recall at this n: what "perfect" reads as (below 1)
      floor[f"precision_{name}"], floor[f"recall_{name}"] = fm.get("precision"), fm.get("recall")
    out["floor"] = floor
    out["ref_num"] = {name: int(r["count"]) for name, r in refs.items()}
    if content is not None:
      out["content"] = content_figures(cfg, gather_rows(np.concatenate(feats_c), rows), ext,
                                       content, progress)
    elif cfg.data.content_resolution:   # made at its own resolution: the content figures are
      out["content"] = {"resolution": cfg.resolution, "fid_eval": out["fid_eval"],   # its own
                        "kid_eval": out["kid_eval"], "kid_eval_std": out["kid_eval_std"],
                        "floor": {"num": floor["num"], "fid_eval": floor["fid_eval"],
                                  "kid_eval": floor["kid_eval"]}}
    if want_logits:
      out["is_mean"], out["is_std"] = inception_score(np.concatenate(logits))
  # sampling, Inception, reference statistics (once per data set) and metrics, with compiling
  out["eval_time_s"] = time.perf_counter() - t_start
  return out


# ---------------------------------------------------------------------------------------------
# Evaluation as its own stage: python -m core.evaluate RUN_DIR [eval.*=... sampler.*=...]

# What may change between training and an evaluation: anything else would be another model.
EVAL_SECTIONS = ("eval", "sampler")


def model_dirs(run_dir: str, cfg: ExperimentConfig) -> list[str]:
  """Where each stage's checkpoints are: core.experiment.model_dir for sweep runs (base stage
  first for a cascade), or run_dir itself for a run trained by `python -m core.train`."""
  from core.cdm import stage_configs
  from core.experiment import model_dir
  sweep = os.path.dirname(os.path.abspath(run_dir))
  dirs = [model_dir(sweep, c) for c in stage_configs(cfg)]
  if all(os.path.isdir(os.path.join(d, "ckpt")) for d in dirs):
    return dirs
  if len(dirs) == 1 and os.path.isdir(os.path.join(run_dir, "ckpt")):
    return [run_dir]
  from core.config import ConfigError
  missing = [d for d in dirs if not os.path.isdir(os.path.join(d, "ckpt"))]
  raise ConfigError(f"{run_dir}: no checkpoint of its trained model in {missing[0]}/ckpt "
                    f"(nor {run_dir}/ckpt); train it first with the sweep command")


def restore_trained(cfg: ExperimentConfig, model_dir: str):
  """A TrainResult from model_dir's newest readable checkpoint, without the data pipeline."""
  from core.train import Trainer, TrainResult, _checkpoint_manager, restore_latest
  trainer = Trainer(cfg)
  mngr = _checkpoint_manager(model_dir, cfg)
  try:
    state, data = restore_latest(mngr, trainer)
  finally:
    mngr.close()
  if state is None:
    from core.config import ConfigError
    raise ConfigError(f"{model_dir}/ckpt has no readable checkpoint")
  return TrainResult(trainer=trainer, state=state, steps_run=0, images_per_s=0.0,
                     train_time_s=float(data.get("train_time_s", 0.0)))


def eval_config(run_dir: str, overrides: dict) -> ExperimentConfig:
  """The run's resolved config (config.yaml) with evaluation-only overrides applied."""
  import yaml
  from core.config import ConfigError, set_dotted
  from core.experiment import resolve
  path = os.path.join(run_dir, "config.yaml")
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist: RUN_DIR must be a run directory "
                      "(results/<sweep>_<tier>/<run_id>)")
  try:
    with open(path) as f:
      d = yaml.safe_load(f)
  except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
    raise ConfigError(f"{path} cannot be read ({type(e).__name__}); RUN_DIR must be a run "
                      "directory with the config.yaml its training wrote") from None
  if not isinstance(d, dict):
    raise ConfigError(f"{path} holds no config mapping; RUN_DIR must be a run directory with "
                      "the config.yaml its training wrote")
  for k, v in overrides.items():
    if k.split(".")[0] not in EVAL_SECTIONS:
      raise ConfigError(f"{k}: only {' and '.join(s + '.*' for s in EVAL_SECTIONS)} keys can "
                        "change at evaluation (any other key is another trained model)")
    set_dotted(d, k, v)
  return resolve(d)


def evaluate_dir(run_dir: str, overrides: Optional[dict] = None, progress: bool = True) -> str:
  """Samples a finished run from its saved EMA parameters and writes a new evaluation record,
  run_dir/evals/<name>.json (and its grid <name>.png); returns the record's path.

  Nothing already in run_dir changes: eval.json and samples.png stay the sweep's own
  evaluation, which the tables read; earlier records in evals/ are kept.
  """
  import datetime
  from core.cdm import stage_configs
  from core.runio import read_jsonl, write_json_atomic
  cfg = eval_config(run_dir, overrides or {})
  configs, dirs = stage_configs(cfg), model_dirs(run_dir, cfg)
  stages = []
  for c, d in zip(configs, dirs):
    rows = read_jsonl(os.path.join(d, "metrics.jsonl"))
    stages.append((restore_trained(c, d), rows))
  (result, rows), lower = stages[-1], stages[:-1]
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  name = (f"{stamp}-n{cfg.eval.num_samples}-{cfg.sampler.name}{cfg.sampler.steps}"
          f"-g{cfg.sampler.guidance_scale:g}-seed{cfg.eval.seed}")
  out_dir = os.path.join(run_dir, "evals")
  base, i = name, 1
  while os.path.exists(os.path.join(out_dir, name + ".json")):   # never overwrite a record
    name, i = f"{base}-{i}", i + 1
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(out_dir, exist_ok=True)
  figures = evaluate_run(result, cfg, run_dir, train_rows=rows, progress=progress, lower=lower,
                         grid_path=os.path.join(out_dir, name + ".png") if is_main else os.devnull)
  from core.config import to_dict
  figures.update(created=stamp, overrides=dict(overrides or {}),
                 settings={k: to_dict(getattr(cfg, k)) for k in EVAL_SECTIONS},
                 model_dirs=[os.path.relpath(d, run_dir) for d in dirs])
  path = os.path.join(out_dir, name + ".json")
  if is_main:
    write_json_atomic(path, figures)
  return path


def main(argv: Optional[list] = None) -> int:
  """python -m core.evaluate RUN_DIR [eval.num_samples=N sampler.steps=S ...] [--no-progress]"""
  import argparse
  import sys
  from core.config import ConfigError
  ap = argparse.ArgumentParser(description="Evaluate a finished run from its saved EMA "
                               "parameters into RUN_DIR/evals/, without retraining.")
  ap.add_argument("run_dir")
  ap.add_argument("overrides", nargs="*", help="eval.* and sampler.* keys, key=value")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_intermixed_args(argv)
  try:
    import yaml
    over = {}
    for it in args.overrides:
      if "=" not in it:
        raise ConfigError(f"override {it!r} is not of the form key=value")
      k, v = it.split("=", 1)
      try:
        over[k] = yaml.safe_load(v)
      except yaml.YAMLError:   # not YAML: the string itself, which the config's types check
        over[k] = v
    path = evaluate_dir(args.run_dir, over, progress=not args.no_progress)
  except (ConfigError, KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  from core.runio import read_json
  rec = read_json(path) or {}
  print(f"{path}: FID eval {rec.get('fid_eval')}, KID eval {rec.get('kid_eval')}, "
        f"{rec['num_samples']} samples, {rec['eval_time_s']:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
