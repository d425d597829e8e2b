"""Sweep files: one YAML per paper ablation, expanded into runs with deterministic ids.

File layout (see ablations/*.yaml):

    name: noise_shift            # results/<name>_<tier>/
    table: "2"                   # the paper table it reproduces (SPEC section 3)
    title: ...
    reference: null              # arm label that relative training speed is measured against
    seeds: 1
    base: {...}                  # the experiment at the paper's settings (dotted or nested keys)
    arms:                        # zipped list: one run per arm (and seed)
      - {label: cosine, group: "128", set: {resolution: 128, schedule.name: cosine}}
    grid: {key: [values, ...]}   # optional: the arms are crossed with every grid combination
    grid_label: "{label} {guidance_scale:.2f}"  # optional: row label from the grid values
    tiers:                       # paper | gpu | cpu | smoke
      cpu: {scale: 8, set: {...}}

Order of application: base, arm (and grid) values, then resolutions divided by the tier's
`scale` (keys in RES_KEYS that the file set, so a shift ablation keeps its ratios at every
tier), then the tier's own `set` for keys the arm did not set, then command-line overrides.
A value written {paper: A, cpu: B, ...} is chosen per tier and taken as already scaled.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from typing import Any

import yaml

from core.config import (ConfigError, ExperimentConfig, deep_merge, flatten, set_dotted,
                         to_dict)
from core.experiment import resolve, train_key  # noqa: F401  (train_key: re-exported)

TIERS = ("paper", "gpu", "cpu", "smoke")
RES_KEYS = ("resolution", "schedule.noise_d", "schedule.noise_d_low", "schedule.noise_d_high",
            "loss.multiscale_base", "model.dropout_max_res", "cond.low_resolution",
            "cascade.stages")
FILE_KEYS = {"name", "table", "title", "description", "reference", "seeds", "base", "arms",
             "grid", "grid_label", "tiers"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  run_id: str
  arm: str
  group: str
  seed: int
  values: dict
  config: ExperimentConfig
  train_key: str    # runs that differ only in sampling/evaluation share one trained model
  paper: tuple = ()  # the published rows this run reproduces: ({"table", "group", "arm"}, ...)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in (flat or {}).items():
    if isinstance(v, dict) and not _is_tier_choice(v):
      for kk, vv in _flatten(v).items():
        set_dotted(out, f"{k}.{kk}", vv)
    else:
      set_dotted(out, k, v)
  return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  return flatten(d, prefix, leaf=_is_tier_choice)   # a per-tier choice is one value


def _is_tier_choice(v: Any) -> bool:
  return isinstance(v, dict) and bool(v) and set(v) <= set(TIERS)


def slug(s: str) -> str:
  s = re.sub(r"[^A-Za-z0-9.=+]+", "-", str(s)).strip("-")
  return s or "run"


def load_sweep(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    raise ConfigError(f"sweep file {path!r} does not exist")
  if os.path.isdir(path):
    raise ConfigError(f"sweep file {path!r} is a directory; pass a sweep file in it, e.g. "
                      "ablations/noise_shift.yaml")
  try:
    with open(path) as f:
      spec = yaml.safe_load(f)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    raise ConfigError(f"sweep file {path!r} is not valid YAML: "
                      f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}{at}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"sweep file {path!r} cannot be read ({e}); pass a readable YAML "
                      "file") from None
  if not isinstance(spec, dict):
    got = "nothing (an empty file, or null)" if spec is None else repr(spec)[:60]
    raise ConfigError(f"sweep file {path!r} must hold a mapping with 'name' and 'arms' (as "
                      f"ablations/*.yaml do), but holds {got}")
  unknown = set(spec) - FILE_KEYS
  if unknown:
    raise ConfigError(f"sweep file {path!r}: unknown key {sorted(unknown)[0]!r}; valid: "
                      f"{', '.join(sorted(FILE_KEYS))}")
  for k in ("name", "arms"):
    if k not in spec:
      raise ConfigError(f"sweep file {path!r} lacks the key {k!r}")
  arms = spec["arms"]
  if not isinstance(arms, list) or not arms:
    raise ConfigError(f"sweep file {path!r}: 'arms' must be a non-empty list of "
                      f"{{label: ..., set: {{key: value}}}}, got {arms!r}")
  for k in ("base", "grid", "tiers"):
    if spec.get(k) is not None and not isinstance(spec[k], dict):
      raise ConfigError(f"sweep file {path!r}: {k!r} must be a mapping of key: value, got "
                        f"{spec[k]!r}")
  return spec


def _parse_value(s: str) -> Any:
  try:
    return yaml.safe_load(s)
  except yaml.YAMLError:
    return s


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """key=value strings -> (runner options: tier, seeds; config overrides, flat)."""
  opts: dict[str, Any] = {}
  over: dict[str, Any] = {}
  for it in items:
    if "=" not in it:
      raise ConfigError(f"override {it!r} is not of the form key=value")
    k, v = it.split("=", 1)
    if k == "tier":
      opts[k] = v
    elif k == "seeds":
      if not v.isdigit() or int(v) < 1:
        raise ConfigError(f"seeds={v!r} must be a positive integer, e.g. seeds=3")
      opts[k] = int(v)
    else:
      over[k] = _parse_value(v)
  return opts, over


def _scale_values(flat: dict[str, Any], scale: int, where: str,
                  skip: set[str] = frozenset()) -> dict[str, Any]:
  out = dict(flat)
  for k in RES_KEYS:
    if k in out and k not in skip and scale != 1:
      v = out[k]
      vs = v if isinstance(v, list) else [v]   # cascade.stages is a list of resolutions
      if not all(isinstance(x, int) and x % scale == 0 for x in vs):
        raise ConfigError(f"{where}: {k}={v!r} cannot be divided by the tier scale {scale}")
      out[k] = [x // scale for x in v] if isinstance(v, list) else v // scale
  return out


def _pick_tier(flat: dict[str, Any], tier: str) -> tuple[dict[str, Any], set[str]]:
  """Chooses per-tier values; a choice without this tier drops the key (the tier's defaults
  apply). Returns the values and the keys that were chosen per tier (already scaled)."""
  out, chosen = {}, set()
  for k, v in flat.items():
    if _is_tier_choice(v):
      if tier in v:
        out[k] = v[tier]
        chosen.add(k)
    else:
      out[k] = v
  return out, chosen


def _paper_rows(refs, label: str, group: str, where: str) -> tuple:
  """An arm's `paper:` ("TABLE/GROUP/ROW", or a list of them; {label} and {group} stand for
  the arm's own) -> the published rows it reproduces. The first is the sweep's own table's."""
  if refs is None:
    return ()
  out = []
  for ref in refs if isinstance(refs, list) else [refs]:
    parts = str(ref).format(label=label, group=group).split("/", 2)
    if len(parts) != 3 or not all(parts):
      raise ConfigError(f"{where}: paper: {ref!r} must read TABLE/GROUP/ROW, e.g. 2/128/cosine")
    out.append({"table": parts[0], "group": parts[1], "arm": parts[2]})
  return tuple(out)


def expand(path: str, tier: str = "paper", overrides: dict[str, Any] | None = None,
           seeds: int | None = None) -> tuple[dict[str, Any], list[RunSpec]]:
  """The sweep's metadata and its runs, every config resolved and validated."""
  spec = load_sweep(path)
  if tier not in TIERS:
    raise ConfigError(f"tier={tier!r} is not one of {', '.join(TIERS)}")
  tiers = spec.get("tiers") or {}
  defaults_path = os.path.join(os.path.dirname(os.path.abspath(path)), "_tiers.yaml")
  if os.path.exists(defaults_path):  # tier settings shared by every sweep file beside it
    with open(defaults_path) as f:
      tiers = deep_merge(yaml.safe_load(f) or {}, tiers)
  tier_spec = tiers.get(tier, {}) or {}
  if not isinstance(tier_spec, dict):
    raise ConfigError(f"{path}: tiers.{tier} must be a mapping (scale, set, seeds), got "
                      f"{tier_spec!r}")
  bad = set(tier_spec) - {"scale", "set", "seeds"}
  if bad:
    raise ConfigError(f"{path}: tiers.{tier} has unknown key {sorted(bad)[0]!r}; valid: scale, set, seeds")
  scale = int(tier_spec.get("scale", 1))
  tier_set = _flatten(tier_spec.get("set") or {})
  base = _flatten(spec.get("base") or {})
  n_seeds = seeds or int(tier_spec.get("seeds", spec.get("seeds", 1)))

  arms = []
  grid = {k: (v.get(tier, []) if _is_tier_choice(v) else v)
          for k, v in (spec.get("grid") or {}).items()}
  for k, v in grid.items():
    if not isinstance(v, list):
      raise ConfigError(f"{path}: grid.{k} must be a list of values, got {v!r}")
  combos = list(itertools.product(*grid.values())) if grid else [()]
  for i, arm in enumerate(spec["arms"]):
    if not isinstance(arm, dict) or "label" not in arm:
      raise ConfigError(f"{path}: arms[{i}] needs a 'label'")
    bad = set(arm) - {"label", "group", "set", "paper"}
    if bad:
      raise ConfigError(f"{path}: arms[{i}] has unknown key {sorted(bad)[0]!r}; valid: label, group, set, paper")
    if arm.get("set") is not None and not isinstance(arm["set"], dict):
      raise ConfigError(f"{path}: arms[{i}].set must be a mapping of key: value, got "
                        f"{arm['set']!r}")
    for combo in combos:
      vals = _flatten(arm.get("set") or {})
      label = str(arm["label"])
      fields = {"label": label}
      for k, v in zip(grid.keys(), combo):
        vals[k] = v
        fields[k.split(".")[-1]] = v
        label = f"{label} {k.split('.')[-1]}={v}"
      if grid and spec.get("grid_label"):
        label = spec["grid_label"].format(**fields)
      arms.append((label, str(arm.get("group", "")), vals,
                   _paper_rows(arm.get("paper"), label, str(arm.get("group", "")),
                               f"{path}: arms[{i}]")))

  runs: list[RunSpec] = []
  seen = set()
  for label, group, vals, paper in arms:
    where = f"{path}: arm {label!r}"
    base_t, base_chosen = _pick_tier(base, tier)
    arm_t, arm_chosen = _pick_tier(vals, tier)
    flat = _scale_values({**base_t, **arm_t}, scale, where,
                         skip=(base_chosen - set(arm_t)) | arm_chosen)
    for k, v in tier_set.items():  # per-tier choices in the file beat the tier's defaults
      if k not in arm_t and k not in base_chosen:
        flat[k] = v
    flat.update(overrides or {})
    for seed in range(n_seeds):
      run_id = slug(f"{group}_{label}" if group else label) + f"-s{seed}"
      if run_id in seen:
        raise ConfigError(f"{path}: two arms give the run id {run_id!r}; make labels unique")
      seen.add(run_id)
      d = _nest({**flat, "name": f"{spec['name']}/{run_id}"})
      if seed or "train.seed" not in flat:
        set_dotted(d, "train.seed", int(flat.get("train.seed", 0)) + seed)
      try:
        cfg = resolve(d)
      except (ConfigError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ConfigError(f"{where}: {msg}") from None
      runs.append(RunSpec(run_id=run_id, arm=label, group=group, seed=seed, values=vals,
                          config=cfg, train_key=train_key(cfg), paper=paper))

  ref = spec.get("reference")
  ref_id = None
  if ref is not None:
    matches = [r.run_id for r in runs if r.arm == str(ref) and r.seed == 0]
    if not matches:
      raise ConfigError(f"{path}: reference {ref!r} is not an arm label")
    ref_id = matches[0]
  meta = {"sweep": spec["name"], "file": path, "table": str(spec.get("table", "")),
          "title": spec.get("title", spec["name"]), "tier": tier, "reference": ref_id,
          "axes": sorted({k for _, _, v, _ in arms for k in v}),
          "runs": [{"run_id": r.run_id, "arm": r.arm, "group": r.group, "seed": r.seed,
                    "values": {k: v for k, v in r.values.items()},
                    "paper": list(r.paper)} for r in runs]}
  return meta, runs
