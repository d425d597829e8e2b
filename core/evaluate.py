"""The evaluation of a trained run, from its checkpoints: its record and its command.

    python -m core.evaluate RUN_DIR [eval.*=... sampler.*=... ema.sigma_rel=...]
        ->  RUN_DIR/evals/<name>.json

`evaluate_dir` is the one path from a run directory to its figures: it reads the run's
config.yaml, restores each stage's EMA parameters from its model directory
(core.runtime.checkpoint.restore_ema; no data pipeline, no optimiser; with ema.sigma_rel, the post-hoc EMA
of that length from the snapshots, core.runtime.phema), samples, scores, computes the variational
bound in bits/dim on held-out images (core.diffusion.bound) and writes the record. The sweep
(sweeps.execute) calls it for eval.json after training; the command calls it for a new record
in evals/. FID "train" compares the samples with the training split's statistics, FID "eval"
with the evaluation split's (docs/paper.md §3).

The record is the union of what each function of RECORD returns for an Evaluation: a new
figure is one more such function, added there.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

from core.diffusion import bound
from core import eval_record
from core.metrics import memorisation, oracle as oracle_lib
from core.diffusion.cdm import stage_configs
from core.config import ConfigError, ExperimentConfig, parse_assignments, set_dotted, to_dict
from core.metrics.features import inception_extractor
from core.metrics.fid import floor_metrics, inception_score, sample_metrics
from core.runtime.generate import (gather_rows, generate, local_rows, sampling_schedule_config,
                                   to_global)
from core.data.images import save_grid
from core.runtime.log import METRICS_FILE, combined_speed, run_speed
from core.metrics.reference import box_downsample, reference_figures
from core.runio import read_json, read_jsonl, write_json_atomic
from core.data.sources import content_resolution
from core.runtime.checkpoint import TrainedModel, restore_ema
from core.runtime.state import ema_sigma_rel


@dataclasses.dataclass(frozen=True)
class Stage:
  """One trained stage of a run (a cascade has several, base first): the restored model and its
  training rows (its model directory's metrics.jsonl)."""
  model: TrainedModel
  rows: list


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What the record's figures are computed from."""
  cfg: ExperimentConfig
  stages: tuple[Stage, ...]
  grid_path: str        # where the sample grid goes (os.devnull off process 0)
  progress: bool = True
  reads_path: str = os.devnull   # the oracle's per-sample reading (core.metrics.oracle.save_reads)
  # the samples' features, drawn once for every RECORD function that reads them (drawn())
  memo: dict = dataclasses.field(default_factory=dict, compare=False)


# ---------------------------------------------------------------------------------------------
# The record's figures


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
  """Training images per second of a run's stages (core.runtime.log: the median logged interval;
  a stage without logged speeds: its images over its training seconds; a cascade's stages
  combined as images per second of all their training)."""
  imgs = [s.model.cfg.train.steps * s.model.cfg.train.batch_size for s in stages]
  speeds = [run_speed(list(s.rows)) or (n / s.model.train_time_s if s.model.train_time_s > 0
                                        else None) for s, n in zip(stages, imgs)]
  return combined_speed(imgs, speeds)


def model_figures(ev: Evaluation) -> dict:
  """What was trained and how the samples are drawn."""
  cfg, last = ev.cfg, ev.stages[-1].model
  n = cfg.eval.num_samples if cfg.eval.fid else cfg.eval.grid_size
  out = {"params": sum(s.model.num_params for s in ev.stages), "step": last.step,
         "steps": cfg.train.steps, "resolution": cfg.resolution,
         "schedule": schedule_record(cfg), "train_img_per_s": training_speed(ev.stages),
         "train_time_s": sum(s.model.train_time_s for s in ev.stages),
         "guidance_scale": cfg.sampler.guidance_scale, "num_samples": n,
         # how the samples were drawn: a record's FID depends on it
         "sampler": {"name": cfg.sampler.name, "steps": cfg.sampler.steps,
                     "noise_param": cfg.sampler.noise_param, "clip_x": cfg.sampler.clip_x,
                     "schedule": sampler_schedule_record(cfg)},
         "devices": jax.device_count(), "processes": jax.process_count(),
         "ema": ema_record(cfg, last.step)}
  if jax.process_count() == 1:
    from core.devices import devices_for_batch
    out["devices"] = len(devices_for_batch(min(cfg.eval.batch_size, n)))
  if cfg.cond.task == "super_res":
    out["cond_s"] = cfg.sampler.cond_s
  if len(ev.stages) > 1:
    out["stages"] = [s.model.cfg.resolution for s in ev.stages]
  return out


def sampler_schedule_record(cfg: ExperimentConfig) -> dict:
  """The schedule the sampler walked (core.runtime.generate.sampling_schedule), as schedule_record
  gives the training one, with "trained": whether it is the training schedule."""
  sc = sampling_schedule_config(cfg)
  return {**schedule_record(dataclasses.replace(cfg, schedule=sc)),
          "trained": not cfg.sampler.schedule}


def ema_record(cfg: ExperimentConfig, step: int) -> dict:
  """Which average of the parameters was evaluated, and its length as EDM2's sigma_rel: the
  post-hoc EMA that ema.sigma_rel asked for, or the run's own EMA (optim.ema_decay, its
  warm-up, over the run's steps), whose equivalent sigma_rel is recorded either way."""
  own = ema_sigma_rel(cfg.optim, step) if step > 0 else None
  post_hoc = cfg.ema.sigma_rel > 0
  return {"post_hoc": post_hoc, "sigma_rel": cfg.ema.sigma_rel if post_hoc else own,
          "own_sigma_rel": own}


def scored_content(cfg: ExperimentConfig) -> Optional[int]:
  """The content resolution a run's samples are also scored at (box-downsampled to it), where
  its data are made there and upsampled (data.content_resolution); None otherwise."""
  c = content_resolution(cfg.data, cfg.resolution)
  return c if c < cfg.resolution and cfg.resolution % c == 0 else None


def content_figures(cfg: ExperimentConfig, feats: np.ndarray, extractor, at: int,
                    progress: bool) -> dict:
  """FID and KID of samples box-downsampled to the content resolution `at`, against the eval
  split downsampled alike, with the floor (train split images downsampled alike): the test
  that a model at R with data made at `at` matches a model trained at `at` itself."""
  ref = reference_figures(cfg, cfg.data.eval_split, extractor, progress, at=at)
  other = reference_figures(cfg, cfg.data.split, extractor, progress, at=at)
  m = sample_metrics(feats, ref)
  fm, num = floor_metrics(len(feats), ref, other)
  return {"resolution": at, "fid_eval": m["fid"], "kid_eval": m["kid"],
          "kid_eval_std": m["kid_std"],
          "floor": {"num": num, "fid_eval": fm["fid"], "kid_eval": fm["kid"]}}


def _draw(ev: Evaluation, ext, content: Optional[int], orc=None) -> dict:
  """Samples with the EMA parameters: writes the grid and returns every sample's features
  ('pool', 'spatial', 'logits', and 'content': pool_3 at the content resolution; with an
  oracle, its reading 'oracle_<key>' and the labels asked, 'asked'), gathered across
  processes. Each process draws its share of every batch and extracts the features of the
  images it holds, so every statistic is computed from all samples, as on one device."""
  cfg = ev.cfg
  n = cfg.eval.num_samples if cfg.eval.fid else cfg.eval.grid_size
  *lower, last = [(s.model, s.model.params, s.model.cfg) for s in ev.stages]
  want_logits = bool(ext is not None and cfg.eval.compute_is and ext.has_logits)
  grid, rows = [], []
  feats: dict = {"pool": [], "spatial": [], "logits": [], "content": [], "asked": []}
  for imgs, labels, idx in generate(last[0], last[1], cfg, n, seed=cfg.eval.seed,
                                    progress=ev.progress, lower=lower):
    if sum(len(g) for g in grid) < cfg.eval.grid_size:
      grid.append(gather_rows(imgs, idx)[:cfg.eval.grid_size - sum(len(g) for g in grid)])
    rows.append(idx)
    if ext is not None:
      o = ext(imgs)
      feats["pool"].append(o["pool"])
      feats["spatial"].append(o["spatial"])
      if want_logits:
        feats["logits"].append(o["logits"])
      if content is not None:
        feats["content"].append(ext(box_downsample(imgs, content))["pool"])
    if cfg.eval.memorisation:   # the samples at the content resolution, for core.metrics.memorisation
      at = content_resolution(cfg.data, cfg.resolution)
      feats.setdefault("content_images", []).append(
          box_downsample(imgs, at) if at < cfg.resolution else imgs)
    if orc is not None:
      for k, v in oracle_lib.read_images(orc, imgs).items():
        feats.setdefault(f"oracle_{k}", []).append(v)
      if labels is not None:
        feats["asked"].append(labels)
  if jax.process_index() == 0:
    save_grid(np.concatenate(grid), ev.grid_path)
  rows = np.concatenate(rows)
  return {k: gather_rows(np.concatenate(v), rows) for k, v in feats.items() if v}


def drawn(ev: Evaluation) -> dict:
  """_draw's features of the run's samples, drawn once per evaluation (the first RECORD
  function that asks draws them; the others read them)."""
  if "drawn" not in ev.memo:
    cfg = ev.cfg
    ext = inception_extractor(cfg.eval.inception_weights) if cfg.eval.fid else None
    content = scored_content(cfg) if cfg.eval.fid else None
    orc = oracle_lib.for_run(cfg, ev.progress)
    ev.memo.update(drawn=_draw(ev, ext, content, orc), extractor=ext, oracle=orc)
  return ev.memo["drawn"]


_NO_SCORES = {"fid_train": None, "fid_eval": None, "kid_train": None, "kid_eval": None,
              "precision_train": None, "recall_train": None, "precision_eval": None,
              "recall_eval": None, "is_mean": None, "is_std": None, "sfid_train": None,
              "sfid_eval": None}


def sample_figures(ev: Evaluation) -> dict:
  """FID, KID, precision/recall and sFID against both splits, each beside the data's floor
  (real images of the other split, as many as the samples), IS, and the content-resolution
  figures; with eval.fid off, only the grid and empty scores."""
  cfg = ev.cfg
  feats = drawn(ev)
  ext = ev.memo["extractor"]
  content = scored_content(cfg) if cfg.eval.fid else None
  out = dict(_NO_SCORES)
  if ext is None:
    return out
  refs = {name: reference_figures(cfg, split, ext, ev.progress)
          for name, split in (("train", cfg.data.split), ("eval", cfg.data.eval_split))}
  floor = {"resolution": cfg.resolution}
  for name, other in (("train", "eval"), ("eval", "train")):
    m = sample_metrics(feats["pool"], refs[name], spatial=feats["spatial"])
    out[f"fid_{name}"], out[f"kid_{name}"], out[f"kid_{name}_std"] = \
        m["fid"], m["kid"], m["kid_std"]
    out[f"sfid_{name}"] = m["sfid"]
    out[f"precision_{name}"], out[f"recall_{name}"] = m["precision"], m["recall"]
    fm, floor["num"] = floor_metrics(len(feats["pool"]), refs[name], refs[other])
    floor[f"fid_{name}"], floor[f"kid_{name}"], floor[f"kid_{name}_std"] = \
        fm["fid"], fm["kid"], fm["kid_std"]
    floor[f"sfid_{name}"] = fm["sfid"]
    # real images' own precision/recall at this n: what "perfect" reads as (below 1)
    floor[f"precision_{name}"], floor[f"recall_{name}"] = fm.get("precision"), fm.get("recall")
  out["floor"] = floor
  out["ref_num"] = {name: int(r["count"]) for name, r in refs.items()}
  if content is not None:
    out["content"] = content_figures(cfg, feats["content"], ext, content, ev.progress)
  elif cfg.data.content_resolution:   # made at its own resolution: the content figures are
    out["content"] = {"resolution": cfg.resolution, "fid_eval": out["fid_eval"],   # its own
                      "kid_eval": out["kid_eval"], "kid_eval_std": out["kid_eval_std"],
                      "floor": {"num": floor["num"], "fid_eval": floor["fid_eval"],
                                "kid_eval": floor["kid_eval"]}}
  if "logits" in feats:
    out["is_mean"], out["is_std"] = inception_score(feats["logits"])
  return out


def oracle_figures(ev: Evaluation) -> dict:
  """The oracle's figures (core.metrics.oracle.run_scores) on eval.oracle_num samples: the first
  those Inception scored, and where oracle_num asks more, further samples of stream 1 (so
  that the paper's metrics keep their samples); None where the run has no oracle. Writes the
  per-sample reading to ev.reads_path."""
  cfg = ev.cfg
  feats = drawn(ev)
  orc = ev.memo["oracle"]
  if orc is None:
    return {"oracle": None}
  reads = {k[len("oracle_"):]: v for k, v in feats.items() if k.startswith("oracle_")}
  asked = feats.get("asked")
  want = cfg.eval.oracle_num or len(reads["label"])
  if want > len(reads["label"]):
    *lower, last = [(s.model, s.model.params, s.model.cfg) for s in ev.stages]
    more, more_asked, rows = [], [], []
    for imgs, labels, idx in generate(last[0], last[1], cfg, want - len(reads["label"]),
                                      seed=cfg.eval.seed, progress=ev.progress, lower=lower,
                                      stream=1, desc="sampling (oracle)"):
      more.append(oracle_lib.read_images(orc, imgs))
      more_asked.append(labels)
      rows.append(idx)
    rows = np.concatenate(rows)
    reads = {k: np.concatenate([v, gather_rows(np.concatenate([m[k] for m in more]), rows)])
             for k, v in reads.items()}
    if asked is not None:
      asked = np.concatenate([asked, gather_rows(np.concatenate(more_asked), rows)])
  reads = {k: v[:want] for k, v in reads.items()}
  asked = None if asked is None else asked[:want]
  rec = oracle_lib.run_scores(cfg, orc, reads, asked)
  if jax.process_index() == 0 and ev.reads_path != os.devnull:
    oracle_lib.save_reads(ev.reads_path, reads, asked,
                          oracle_lib.real_reads(cfg, cfg.data.eval_split, want, orc))
  return {"oracle": rec}


def memorisation_figures(ev: Evaluation) -> dict:
  """How near the samples come to the training images (core.metrics.memorisation), where
  eval.memorisation asks; None otherwise."""
  cfg = ev.cfg
  if not cfg.eval.memorisation:
    return {"memorisation": None}
  samples = drawn(ev)["content_images"]
  return {"memorisation": memorisation.run_scores(cfg, samples, samples.shape[1])}


_NO_BOUND = {"bpd_eval": None, "bpd_eval_se": None, "bpd_train": None, "bpd_train_se": None}
_SPLIT_STREAM = {"eval": 0, "train": 1}   # the bound's randomness, one stream per split


def bound_program(model: TrainedModel, cfg: ExperimentConfig, batch: int):
  """The jitted bound of one batch over the mesh, (images uint8, labels, image indices, split)
  -> per-image terms in nats (core.diffusion.bound.bound_terms). Image i's times and noise come from
  fold_in(key of its split, i), so its terms do not depend on the batching."""
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from core.devices import make_mesh
  from core.diffusion.process import get_prediction
  e = cfg.eval
  mesh = make_mesh(batch=batch)
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  pred = get_prediction(cfg.model.prediction)
  schedule = bound.eval_schedule(e.bound_schedule, e.bound_logsnr_min, e.bound_logsnr_max)

  # Parameters are an argument, not a closure (closed-over arrays become constants).
  @functools.partial(jax.jit, out_shardings=rows)
  def terms(params, images, labels, idx, key_data):
    x = images.astype(jnp.float32) / 127.5 - 1.0
    base = jax.random.wrap_key_data(key_data)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)

    def x_hat(z, logsnr):   # the network's raw output (x, eps or v) as x_hat, exactly
      out = model.apply(params, z, logsnr, labels, train=False)
      return pred.to_x(out.astype(jnp.float32), z, logsnr)
    return bound.bound_terms(x_hat, x, keys, schedule, e.bound_logsnr_min,
                             e.bound_logsnr_max, e.bound_times)

  params = jax.device_put(model.params, rep)

  def run(images, labels, idx, stream: int):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(e.seed), 7), stream)
    return terms(params, to_global(images, rows), to_global(labels, rows),
                 to_global(idx, rows), to_global(np.asarray(jax.random.key_data(key)), rep))
  return run


def bound_terms_of_split(program, cfg: ExperimentConfig, split: str, stream: int, num: int,
                         batch: int, progress: bool) -> dict:
  """The bound's per-image terms in nats on `num` images of `split` (those that reference
  statistics read), as float64 arrays."""
  from core.data.pipeline import iterate_uint8
  out: dict = {}
  done = 0
  for images, labels in iterate_uint8(cfg.data, cfg.resolution, split, num, batch, progress,
                                      labels=True):
    n = len(images)
    take = np.arange(batch) % n           # a short last batch padded with its own rows
    t = program(images[take], labels[take].astype(np.int32),
                (done + take).astype(np.int32), stream)
    for k, v in t.items():
      local, at = local_rows(v)
      out.setdefault(k, []).append(gather_rows(local, at)[:n])
    done += n
  return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def bound_figures(ev: Evaluation) -> dict:
  """The variational bound in bits/dim (core.diffusion.bound) on held-out images of the eval split and
  on the train split: the mean over images and its standard error, with the terms and the
  evaluation schedule it was computed under. A cascade, or a model conditioned on more than
  its class, has no single model's bound: null."""
  cfg, e = ev.cfg, ev.cfg.eval
  if not e.bound:
    return dict(_NO_BOUND)
  if len(ev.stages) > 1 or cfg.cond.task != "none":
    return {**_NO_BOUND, "bound": {"skipped": "a cascade or a super-resolution stage: no "
                                   "single model's bound"}}
  num = e.bound_num or (e.num_samples if e.fid else e.grid_size)   # as many as the samples
  batch = min(e.batch_size, num)
  program = bound_program(ev.stages[-1].model, cfg, batch)
  dims = cfg.resolution ** 2 * cfg.model.out_channels
  out = dict(_NO_BOUND)
  rec = {"schedule": e.bound_schedule, "logsnr_min": e.bound_logsnr_min,
         "logsnr_max": e.bound_logsnr_max, "times": e.bound_times,
         "decoder": "discretized, 256 values",
         "labels": "the images' own" if cfg.model.num_classes else "none (unconditional)"}
  for name, split in (("eval", cfg.data.eval_split), ("train", cfg.data.split)):
    nats = bound_terms_of_split(program, cfg, split, _SPLIT_STREAM[name], num, batch,
                                ev.progress)
    bpd = {k: bound.bits_per_dim(v, dims) for k, v in nats.items()}
    total = bpd["prior"] + bpd["diffusion"] + bpd["recon"]
    se = float(np.std(total, ddof=1) / math.sqrt(len(total))) if len(total) > 1 else None
    out[f"bpd_{name}"], out[f"bpd_{name}_se"] = float(np.mean(total)), se
    rec[name] = {"num": len(total), "bpd": float(np.mean(total)), "bpd_se": se,
                 **{k: float(np.mean(v)) for k, v in bpd.items()}}
  out["bound"] = rec
  return out


# Each returns some of the record's keys; together they are the record (eval.json).
RECORD: tuple[Callable[[Evaluation], dict], ...] = (model_figures, sample_figures, oracle_figures,
                                                    memorisation_figures, bound_figures)


def evaluate(ev: Evaluation) -> dict:
  """The evaluation record of ev: every RECORD function's keys, and eval_time_s (sampling,
  Inception, reference statistics the first time per data set, and compiling)."""
  t0 = time.perf_counter()
  out: dict = {}
  for figures in RECORD:
    out.update(figures(ev))
  out["eval_time_s"] = time.perf_counter() - t0
  return out


# ---------------------------------------------------------------------------------------------
# A run directory


# What may change between training and an evaluation: anything else would be another model.
EVAL_SECTIONS = ("eval", "sampler", "ema")


def model_dirs(run_dir: str, cfg: ExperimentConfig) -> list[str]:
  """Where each stage's checkpoints are: core.experiment.model_dir for sweep runs (base stage
  first for a cascade), or run_dir itself for a run trained by `python -m core.train`."""
  from core.experiment import model_dir
  sweep = os.path.dirname(os.path.abspath(run_dir))
  dirs = [model_dir(sweep, c) for c in stage_configs(cfg)]
  if all(os.path.isdir(os.path.join(d, "ckpt")) for d in dirs):
    return dirs
  if len(dirs) == 1 and os.path.isdir(os.path.join(run_dir, "ckpt")):
    return [run_dir]
  missing = [d for d in dirs if not os.path.isdir(os.path.join(d, "ckpt"))]
  raise ConfigError(f"{run_dir}: no checkpoint of its trained model in {missing[0]}/ckpt "
                    f"(nor {run_dir}/ckpt); train it first with the sweep command")


def eval_config(run_dir: str, overrides: dict) -> ExperimentConfig:
  """The run's resolved config (config.yaml) with evaluation-only overrides applied."""
  import yaml
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
      raise ConfigError(f"{k}: only {', '.join(s + '.*' for s in EVAL_SECTIONS)} keys can "
                        "change at evaluation (any other key is another trained model)")
    set_dotted(d, k, v)
  return resolve(d)


def _record_name(cfg: ExperimentConfig, out_dir: str) -> tuple[str, str]:
  """(a new record's name in out_dir, its UTC time stamp); never an existing record's."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  base = (f"{stamp}-n{cfg.eval.num_samples}-{cfg.sampler.name}{cfg.sampler.steps}"
          f"-g{cfg.sampler.guidance_scale:g}-seed{cfg.eval.seed}")
  if cfg.ema.sigma_rel > 0:
    base += f"-phema{cfg.ema.sigma_rel:g}"
  if cfg.sampler.schedule:   # sampled under another schedule than training's
    base += f"-sched-{cfg.sampler.schedule}{cfg.sampler.schedule_noise_d or ''}"
  name, i = base, 1
  while os.path.exists(os.path.join(out_dir, name + ".json")):
    name, i = f"{base}-{i}", i + 1
  return name, stamp


def evaluate_dir(run_dir: str, overrides: Optional[dict] = None, progress: bool = True,
                 record: Optional[str] = None) -> str:
  """Evaluates a run directory from its checkpoints and writes the record; returns its path.

  record=None: a new record run_dir/evals/<name>.json with its grid <name>.png, nothing else
  in run_dir touched (what the command writes). record="eval.json": the run's own record,
  with its grid samples.png (what the sweep writes, which the tables read). overrides:
  eval.*, sampler.* and ema.* keys only (ema.sigma_rel: a post-hoc EMA, core.runtime.phema).
  """
  overrides = dict(overrides or {})
  cfg = eval_config(run_dir, overrides)
  dirs = model_dirs(run_dir, cfg)
  stages = tuple(Stage(restore_ema(c, d), read_jsonl(os.path.join(d, METRICS_FILE)))
                 for c, d in zip(stage_configs(cfg), dirs))
  is_main = jax.process_index() == 0
  if record is None:
    out_dir = os.path.join(run_dir, "evals")
    name, stamp = _record_name(cfg, out_dir)
    path, grid = os.path.join(out_dir, name + ".json"), os.path.join(out_dir, name + ".png")
    reads = os.path.join(out_dir, name + ".oracle.npz")
  else:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path, grid = os.path.join(run_dir, record), os.path.join(run_dir, "samples.png")
    reads = os.path.join(run_dir, "oracle.npz")
  if is_main:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  figures = evaluate(Evaluation(cfg, stages, grid if is_main else os.devnull, progress,
                                reads if is_main else os.devnull))
  figures.update(created=stamp, overrides=overrides,
                 settings={k: to_dict(getattr(cfg, k)) for k in EVAL_SECTIONS},
                 model_dirs=[os.path.relpath(d, run_dir) for d in dirs],
                 schema=eval_record.VERSION)
  eval_record.check(figures, path)   # the layout's one definition, before anything is written
  if is_main:
    write_json_atomic(path, figures)
  return path


def main(argv: Optional[list] = None) -> int:
  """python -m core.evaluate RUN_DIR [eval.num_samples=N sampler.steps=S ...] [--no-progress]"""
  import argparse
  from core.devices import setup
  ap = argparse.ArgumentParser(description="Evaluate a finished run from its saved EMA "
                               "parameters into RUN_DIR/evals/, without retraining.")
  ap.add_argument("run_dir")
  ap.add_argument("overrides", nargs="*", help="eval.*, sampler.* and ema.* keys, key=value")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_intermixed_args(argv)
  setup()
  try:
    path = evaluate_dir(args.run_dir, parse_assignments(args.overrides),
                        progress=not args.no_progress)
  except (ConfigError, KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  rec = read_json(path) or {}
  bpd = "" if rec.get("bpd_eval") is None else \
      f", bits/dim eval {rec['bpd_eval']:.4f} ± {rec.get('bpd_eval_se') or 0:.4f} (s.e.)"
  o = rec.get("oracle") or {}
  if o.get("class_acc") is not None:
    bpd += (f", class accuracy {o['class_acc']:.3f} [{o['class_acc_lo']:.3f}, "
            f"{o['class_acc_hi']:.3f}] (real {o['floor']['class_acc']:.3f})")
  if o:
    bpd += f", oracle FD {o['fd_eval']:.2f} (floor {o['floor']['fd_eval']:.2f}, n={o['num']})"
  print(f"{path}: FID eval {rec.get('fid_eval')}, KID eval {rec.get('kid_eval')}{bpd}, "
        f"{rec['num_samples']} samples, {rec['eval_time_s']:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
