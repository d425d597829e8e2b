"""From a nested dict (YAML, Hydra, sweep arm) to a validated ExperimentConfig.

`model.preset` names a model preset (core.models.presets); the other model keys override it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from core.config import ConfigError, ExperimentConfig, check_values, deep_merge, from_dict, to_dict


def resolve(d: dict[str, Any]) -> ExperimentConfig:
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
  check_values(cfg)
  check_names(cfg)
  from core.conditioning import validate
  validate(cfg)   # cond / cascade against the model: fails at expansion, before any training
  return cfg


def check_names(cfg: ExperimentConfig) -> None:
  """Components chosen by name exist (a ConfigError naming the key and the choices), so that a
  typo fails when the config is resolved rather than when training or sampling reaches it."""
  from core.data import SOURCES
  from core.diffusion import LOSSES
  from core.samplers import SAMPLERS
  from core.schedules import SCHEDULES
  for key, value, registry in (("schedule.name", cfg.schedule.name, SCHEDULES),
                               ("loss.name", cfg.loss.name, LOSSES),
                               ("sampler.name", cfg.sampler.name, SAMPLERS),
                               ("data.source", cfg.data.source, SOURCES)):
    if value not in registry:
      raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(registry.names())}")


def train_key(cfg: ExperimentConfig) -> str:
  """The trained model's identity: the config less what only sampling and evaluation read.

  Runs with one key share one trained model (<sweep>/_models/<key>/), e.g. guidance scales.
  """
  d = to_dict(cfg)
  for k in ("sampler", "eval", "name"):
    d.pop(k)
  for k in ("cond", "cascade"):   # sections added later count only when set: old keys hold
    if d[k] == to_dict(getattr(ExperimentConfig(), k)):
      d.pop(k)
  return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
