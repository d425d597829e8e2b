"""From a nested dict (YAML, Hydra, sweep arm) to a validated ExperimentConfig.

`model.preset` names a model preset (core.models.presets); the other model keys override it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from core.config import (ConfigError, ExperimentConfig, check_choice, check_values, deep_merge,
                         flatten, from_dict, to_dict)


def resolve(d: dict[str, Any], runnable: bool = False) -> ExperimentConfig:
  """The boundary where a config is checked: a nested dict -> a validated ExperimentConfig.

  Every check that needs only the config runs here (check_config), so a bad key or value fails
  when the config is resolved, before any work; runnable=True adds check_runnable (the model
  builds, the data and the metrics backends are there)."""
  d = dict(d or {})
  model = dict(d.get("model") or {})
  name = model.get("preset")
  if name:
    from core.models.presets import PRESETS
    if name not in PRESETS:
      raise ConfigError(f"unknown model.preset {name!r}; choose one of: "
                        f"{', '.join(PRESETS.names())}")
    base = to_dict(PRESETS.get(name)())
    base["preset"] = name
    model = deep_merge(base, model)
  if model:
    d["model"] = model
  cfg = from_dict(ExperimentConfig, d)
  check_config(cfg)
  if runnable:
    check_runnable(cfg)
  return cfg


def check_config(cfg: ExperimentConfig) -> None:
  """What the config alone decides: impossible values, unknown component names, cond and
  cascade against the model, metrics backends by name (each a ConfigError naming the key)."""
  from core.diffusion.conditioning import validate
  from core.runtime.log import check_backends
  check_values(cfg)
  check_names(cfg)
  validate(cfg)   # cond / cascade against the model: fails at expansion, before any training
  check_backends(cfg.train.log_to, installed=False)


def check_runnable(cfg: ExperimentConfig, data: bool = True) -> None:
  """What the config alone cannot tell, checked before any training: the model builds at this
  resolution (shapes, divisibility), the train.log_to backends are installed, and (data=True)
  the data can be had. ConfigError names the key and the fix."""
  import importlib.util
  import os
  from core.runtime.log import check_backends
  from core.models import build_model
  build_model(cfg.model, cfg.resolution)
  check_backends(cfg.train.log_to)
  if not data:
    return
  d = cfg.data
  if d.source in ("folder", "npz", "array_record"):
    if not d.path:
      raise ConfigError(f"data.source={d.source} needs data.path; pass data.path=/path/to/data")
    if not os.path.exists(d.path):
      raise ConfigError(f"data.path={d.path!r} does not exist; pass data.path=/path/to/data")
  elif d.source == "tfds" and importlib.util.find_spec("tensorflow_datasets") is None:
    raise ConfigError(f"data.source=tfds ({d.path or 'imagenet2012'}) needs tensorflow-datasets "
                      "and the prepared data set: pip install 'simplediff[tfds]', or pass "
                      "data.source=folder data.path=/path/to/imagenet")


def check_names(cfg: ExperimentConfig) -> None:
  """Components chosen by name exist (a ConfigError naming the key and the choices), so that a
  typo fails when the config is resolved rather than when training or sampling reaches it."""
  from core.diffusion.bound import EVAL_SCHEDULES
  from core.diffusion.process import LOSSES, PREDICTIONS
  from core.metrics.oracle import RECIPES
  from core.diffusion.samplers import SAMPLERS
  from core.diffusion.schedules import SCHEDULES
  from core.data.sources import SOURCES, UPSAMPLE
  for key, value, registry in (("schedule.name", cfg.schedule.name, SCHEDULES),
                               ("loss.name", cfg.loss.name, LOSSES),
                               ("model.prediction", cfg.model.prediction, PREDICTIONS),
                               ("sampler.name", cfg.sampler.name, SAMPLERS),
                               ("data.source", cfg.data.source, SOURCES),
                               ("data.upsample", cfg.data.upsample, UPSAMPLE),
                               ("eval.bound_schedule", cfg.eval.bound_schedule,
                                EVAL_SCHEDULES),
                               ("eval.oracle_recipe", cfg.eval.oracle_recipe, RECIPES)):
    check_choice(key, value, registry)
  if cfg.sampler.schedule:
    check_choice("sampler.schedule", cfg.sampler.schedule, SCHEDULES)


# Settings that never change the trained parameters: how a run logs, checkpoints, shows
# progress, feeds its data (the batches are the same whatever the workers), lays out devices
# and processes, and everything that only sampling and evaluation read.
NOT_TRAINING = ("name", "sampler.", "eval.", "ema.", "data.eval_split", "data.num_workers",
                "data.prefetch", "train.log_every", "train.ckpt_every", "train.keep_ckpts",
                "train.progress", "train.fsdp", "train.distributed", "train.coordinator_address",
                "train.num_processes", "train.process_id", "train.log_to", "model.preset")
# Bump when a default of a training setting changes: keys hold only the settings off their
# defaults, so a changed default would otherwise give an old key a new meaning.
KEY_VERSION = 2


def _dormant(cfg: ExperimentConfig) -> tuple[str, ...]:
  """Settings that the rest of cfg makes inert, so they must not split one model into two
  (a multiscale base with the multiscale loss off, the shift of a cosine schedule, ...)."""
  out = []
  if not cfg.loss.multiscale:
    out.append("loss.multiscale_base")
  if cfg.loss.name != "sigmoid":
    out.append("loss.sigmoid_bias")
  if cfg.schedule.name != "shifted":
    out.append("schedule.noise_d")
  if cfg.schedule.name != "interpolated":
    out += ["schedule.noise_d_low", "schedule.noise_d_high"]
  if cfg.model.dropout == 0:
    out.append("model.dropout_max_res")
  if not 0 < cfg.data.content_resolution < cfg.resolution:   # images made at the resolution
    out += ["data.content_resolution", "data.upsample"]
  if not cfg.optim.phema:
    out += ["optim.phema_sigma_rels", "optim.phema_every"]
  return tuple(out)


def train_settings(cfg: ExperimentConfig) -> dict[str, Any]:
  """The dotted settings that define cfg's trained model: those off their defaults, less
  NOT_TRAINING and the dormant ones. A field added with its default therefore leaves every
  key as it was."""
  new = flatten(to_dict(cfg))
  default = flatten(to_dict(ExperimentConfig()))
  skip = NOT_TRAINING + _dormant(cfg)
  norm = lambda v: json.loads(json.dumps(v))   # tuples and lists compare alike
  return {k: v for k, v in new.items()
          if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in skip)
          and (k not in default or norm(v) != norm(default[k]))}


def train_key(cfg: ExperimentConfig) -> str:
  """The trained model's identity: a hash of train_settings(cfg). Runs with one key share one
  trained model, in one store per results root (model_dir), across sweep files: guidance
  scales, and the rows that several of the paper's tables print from one model."""
  d = {"v": KEY_VERSION, **train_settings(cfg)}
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def legacy_train_key(cfg: ExperimentConfig) -> str:
  """The key of models trained before KEY_VERSION 2 (in <sweep>/_models/), so that their
  runs still resume and evaluate."""
  d = to_dict(cfg)
  for k in ("sampler", "eval", "name", "ema"):
    d.pop(k)
  if not cfg.optim.phema:   # fields added since, at their defaults
    for k in ("phema", "phema_sigma_rels", "phema_every"):
      d["optim"].pop(k)
  for k in ("cond", "cascade"):
    if d[k] == to_dict(getattr(ExperimentConfig(), k)):
      d.pop(k)
  return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


MODELS = "_models"


def model_dir(sweep_dir: str, cfg: ExperimentConfig) -> str:
  """Where cfg's trained model lives: <results>/_models/<train_key>, shared by every sweep of
  the results root <results> = dirname(sweep_dir); a model an older version trained in
  <sweep>/_models/<legacy key> is used where it exists."""
  old = os.path.join(sweep_dir, MODELS, legacy_train_key(cfg))
  if os.path.isdir(os.path.join(old, "ckpt")):
    return old
  root = os.path.dirname(os.path.abspath(sweep_dir))
  return os.path.join(root, MODELS, train_key(cfg))
