"""Sweep files: one YAML per paper ablation, expanded into runs with deterministic ids.

File layout (see ablations/*.yaml):

    name: noise_shift            # results/<name>_<tier>/
    table: "2"                   # the paper table it reproduces (docs/paper.md §3)
    title: ...
    reference: null              # arm label that relative training speed is measured against
    seeds: 1
    base: {...}                  # the experiment at the paper's settings (dotted or nested keys)
    arms:                        # zipped list: one run per arm (and seed)
      - {label: cosine, group: "128", set: {resolution: 128, schedule.name: cosine}}
      - {label: cosine, group: "64", tiers: [cpu, smoke], set: {...}}   # only at these tiers
    grid: {key: [values, ...]}   # optional: the arms are crossed with every grid combination
    grid_label: "{label} {guidance_scale:.2f}"  # optional: row label from the grid values
    tiers:                       # paper | gpu | cpu | smoke; over ablations/_tiers.yaml's
      cpu: {scale: 8, presets: {unet: unet_tiny}, set: {...}}
    shared_models:               # optional: arms that are one model on purpose (see below)
      !tier {smoke: [[none, r=32]]}    # or a plain list of lists: at every tier

The rule. A key takes its value from the last of four layers that sets it: the file's `base`,
the tier's `set` (ablations/_tiers.yaml, then the file's own `tiers:`), the arm (its `set` and
grid values), the command line. So the base is the paper's experiment, the tier shrinks it,
and the arm's axis is kept at every tier. A value written `!tier {paper: A, cpu: B}` is its
layer's value at the tiers it names; at the others that layer does not set the key. The plain
values of the file (base, arm, grid) are the paper's, and the tier adapts them: resolutions
(RES_KEYS) are divided by its `scale`, and a `model.preset` is swapped for the tier's preset of
the same architecture (`presets`), which keeps the paper preset's front-end unless a layer sets
model.frontend. Everything else is taken as written: `!tier` values, the tier's `set`, the
command line. (seeds: the file's, then the tier's, then seeds=N.)

No silent collapse. Arms that set a training key apart are meant to be different models; if
at a tier they are one model anyway (a tier's set overriding the axis, values that select the
same levels), expansion stops with one line naming the arms and the keys. They are compared
on the network they build (effective_model: dropout as the levels it reaches), not only on
the model key. Arms that differ only in sampling or evaluation (guidance scales, CDM's
cond_s) share one model by design and pass. Arms that are one model on purpose are declared
in `shared_models`: a list of lists of arm labels (an arm's label as written in `arms`, or a
grid row's label), or `!tier {tier: [[...]]}` for some tiers only, with a comment saying why.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any

import yaml

from core.config import ConfigError, ExperimentConfig, flatten, parse_assignments, set_dotted
from core.experiment import NOT_TRAINING, resolve, train_settings
from core.experiment import train_key  # noqa: F401  (re-exported)

TIERS = ("paper", "gpu", "cpu", "smoke")
RES_KEYS = ("resolution", "schedule.noise_d", "schedule.noise_d_low", "schedule.noise_d_high",
            "loss.multiscale_base", "model.dropout_max_res", "cond.low_resolution",
            "cascade.stages")
FILE_KEYS = {"name", "table", "title", "description", "reference", "seeds", "base", "arms",
             "grid", "grid_label", "tiers", "shared_models"}


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


class PerTier(dict):
  """A value written `!tier {paper: A, cpu: B}`: its layer's value at each tier it names."""


class _Loader(yaml.SafeLoader):
  """yaml.SafeLoader with the `!tier` tag."""


def _per_tier(loader: yaml.SafeLoader, node: yaml.Node) -> PerTier:
  if not isinstance(node, yaml.MappingNode):
    raise yaml.constructor.ConstructorError(
        None, None, "!tier takes a mapping of tier: value, e.g. !tier {paper: unet128, cpu: "
        "unet_tiny}", node.start_mark)
  return PerTier(loader.construct_mapping(node, deep=True))


_Loader.add_constructor("!tier", _per_tier)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in (flat or {}).items():
    set_dotted(out, k, v)
  return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  return flatten(d, prefix, leaf=lambda v: isinstance(v, PerTier))   # a !tier value is one value


def _check_values(flat: dict[str, Any], where: str, per_tier: bool = True) -> None:
  """!tier values name known tiers (and only where allowed); an untagged {paper: .., cpu: ..}
  is a value per tier written without its tag."""
  for k, v in flat.items():
    if isinstance(v, PerTier):
      if not per_tier:
        raise ConfigError(f"{where}: {k}: a tier's set is already per tier; write the value "
                          "without !tier")
      bad = sorted(set(map(str, v)) - set(TIERS))
      if bad or not v:
        raise ConfigError(f"{where}: {k}: !tier {dict(v)!r} names "
                          f"{'no tier' if not v else 'the unknown tier ' + repr(bad[0])}; tiers: "
                          f"{', '.join(TIERS)}")
  for k in flat:
    head, _, last = k.rpartition(".")
    if head and last in TIERS:   # no config key is named after a tier: an untagged !tier
      names = [t for t in TIERS if f"{head}.{t}" in flat]
      raise ConfigError(f"{where}: {head}: a value per tier needs its tag: {head}: !tier "
                        f"{{{', '.join(t + ': ...' for t in names)}}}")


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
      spec = yaml.load(f, Loader=_Loader)
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


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """key=value strings -> (runner options: tier, seeds; config overrides, flat)."""
  over = parse_assignments(items)
  opts: dict[str, Any] = {}
  if "tier" in over:
    opts["tier"] = str(over.pop("tier"))
  if "seeds" in over:
    v = over.pop("seeds")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(f"seeds={v!r} must be a positive integer, e.g. seeds=3")
    opts["seeds"] = v
  return opts, over


def _layer(flat: dict[str, Any], tier: str, paper: bool) -> dict[str, tuple[Any, bool]]:
  """One layer's values at `tier`: key -> (value, whether it is a paper value the tier adapts).
  A !tier value that omits the tier leaves the key unset."""
  out = {}
  for k, v in flat.items():
    if isinstance(v, PerTier):
      if tier in v:
        out[k] = (v[tier], False)
    else:
      out[k] = (v, paper)
  return out


def _adapt(layered: dict[str, tuple[Any, bool]], scale: int, presets: dict[str, str],
           where: str) -> dict[str, Any]:
  """The paper values adapted to the tier (resolutions / scale, presets swapped), the others as
  written."""
  out = {k: v for k, (v, _) in layered.items()}
  for k in RES_KEYS:
    if k in layered and layered[k][1] and scale != 1:
      v = out[k]
      vs = v if isinstance(v, list) else [v]   # cascade.stages is a list of resolutions
      if not all(isinstance(x, int) and x % scale == 0 for x in vs):
        raise ConfigError(f"{where}: {k}={v!r} cannot be divided by the tier scale {scale}")
      out[k] = [x // scale for x in v] if isinstance(v, list) else v // scale
  name, paper = layered.get("model.preset", ("", True))
  if presets and paper:
    from core.config import ModelConfig
    from core.models.presets import PRESETS
    if name and name not in PRESETS:
      raise ConfigError(f"{where}: unknown model.preset {name!r}; choose one of: "
                        f"{', '.join(PRESETS.names())}")
    own = PRESETS.get(name)() if name else None
    arch = own.arch if own else out.get("model.arch", ModelConfig.arch)
    if arch not in presets:
      raise ConfigError(f"{where}: the tier's presets name no model for arch {arch!r} "
                        f"(model.preset {name!r}); add presets: {{{arch}: PRESET}}")
    out["model.preset"] = presets[arch]
    small = PRESETS.get(presets[arch])()
    if own and "model.frontend" not in out and own.frontend != small.frontend:
      out["model.frontend"] = own.frontend   # the tier shrinks the model, not its front-end
  return out


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


def _tier_spec(path: str, spec: dict[str, Any], tier: str) -> dict[str, Any]:
  """The tier's scale, presets, set and seeds: ablations/_tiers.yaml (beside the file), then the
  file's own `tiers:`, key by key (set: dotted keys, so nested and dotted forms merge alike)."""
  layers = []
  defaults_path = os.path.join(os.path.dirname(os.path.abspath(path)), "_tiers.yaml")
  if os.path.exists(defaults_path):  # tier settings shared by every sweep file beside it
    with open(defaults_path) as f:
      layers.append((defaults_path, (yaml.load(f, Loader=_Loader) or {}).get(tier)))
  layers.append((path, (spec.get("tiers") or {}).get(tier)))
  out: dict[str, Any] = {"set": {}, "presets": {}, "from": {}}
  shown = {defaults_path: os.path.join(os.path.dirname(path), "_tiers.yaml"), path: path}
  for where, t in layers:
    t = t or {}
    if not isinstance(t, dict):
      raise ConfigError(f"{where}: tiers.{tier} must be a mapping (scale, presets, set, seeds), "
                        f"got {t!r}")
    bad = set(t) - {"scale", "presets", "set", "seeds"}
    if bad:
      raise ConfigError(f"{where}: tiers.{tier} has unknown key {sorted(bad)[0]!r}; valid: "
                        "scale, presets, set, seeds")
    for k in ("set", "presets"):
      if t.get(k) is not None and not isinstance(t[k], dict):
        raise ConfigError(f"{where}: tiers.{tier}.{k} must be a mapping, got {t[k]!r}")
    s = _flatten(t.get("set") or {})
    _check_values(s, f"{where}: tiers.{tier}.set", per_tier=False)
    out["set"].update(s)
    out["from"].update(dict.fromkeys(s, shown[where]))   # for the collapse check's message
    from core.models.presets import PRESETS
    for arch, name in (t.get("presets") or {}).items():
      if name not in PRESETS:
        raise ConfigError(f"{where}: tiers.{tier}.presets.{arch}: unknown model preset {name!r}; "
                          f"choose one of: {', '.join(PRESETS.names())}")
      out["presets"][arch] = name
    out.update({k: t[k] for k in ("scale", "seeds") if k in t})
  return out


def expand(path: str, tier: str = "paper", overrides: dict[str, Any] | None = None,
           seeds: int | None = None) -> tuple[dict[str, Any], list[RunSpec]]:
  """The sweep's metadata and its runs, every config resolved and validated."""
  spec = load_sweep(path)
  if tier not in TIERS:
    raise ConfigError(f"tier={tier!r} is not one of {', '.join(TIERS)}")
  tier_spec = _tier_spec(path, spec, tier)
  scale = int(tier_spec.get("scale", 1))
  presets = tier_spec.get("presets") or {}
  tier_set = tier_spec.get("set") or {}
  base = _flatten(spec.get("base") or {})
  _check_values(base, f"{path}: base")
  n_seeds = seeds or int(tier_spec.get("seeds", spec.get("seeds", 1)))

  arms = []
  grid_file = _flatten(spec.get("grid") or {})
  _check_values(grid_file, f"{path}: grid")
  grid = {k: (v.get(tier, []) if isinstance(v, PerTier) else v) for k, v in grid_file.items()}
  written = {k for k, v in grid_file.items() if isinstance(v, PerTier)}  # !tier: as written
  for k, v in grid.items():
    if not isinstance(v, list):
      raise ConfigError(f"{path}: grid.{k} must be a list of values, got {v!r}")
  combos = list(itertools.product(*grid.values())) if grid else [()]
  entry = {}   # (group, label) -> the label as written in arms (a grid row's arm)
  for i, arm in enumerate(spec["arms"]):
    if not isinstance(arm, dict) or "label" not in arm:
      raise ConfigError(f"{path}: arms[{i}] needs a 'label'")
    bad = set(arm) - {"label", "group", "set", "paper", "tiers"}
    if bad:
      raise ConfigError(f"{path}: arms[{i}] has unknown key {sorted(bad)[0]!r}; valid: label, "
                        "group, set, paper, tiers")
    only = arm.get("tiers")
    if only is not None:
      if not isinstance(only, list) or not only or set(map(str, only)) - set(TIERS):
        raise ConfigError(f"{path}: arms[{i}].tiers must be a list of tiers ({', '.join(TIERS)})"
                          f", got {only!r}")
      if tier not in only:
        continue   # an arm of other tiers (a control group the paper has no row for)
    if arm.get("set") is not None and not isinstance(arm["set"], dict):
      raise ConfigError(f"{path}: arms[{i}].set must be a mapping of key: value, got "
                        f"{arm['set']!r}")
    for combo in combos:
      vals = _flatten(arm.get("set") or {})
      _check_values(vals, f"{path}: arms[{i}]")
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
      entry[(str(arm.get("group", "")), label)] = str(arm["label"])

  runs: list[RunSpec] = []
  seen = set()
  for label, group, vals, paper in arms:
    where = f"{path}: arm {label!r}"
    arm_l = {k: (v, p and k not in written) for k, (v, p) in _layer(vals, tier, True).items()}
    layered = {**_layer(base, tier, paper=True), **_layer(tier_set, tier, paper=False),
               **arm_l, **_layer(overrides or {}, tier, paper=False)}
    flat = _adapt(layered, scale, presets, where)
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

  shared = _check_collapse(path, spec, tier, runs, entry, tier_spec, overrides or {})

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
  if shared:
    meta["shared_models"] = shared
  return meta, runs


def effective_model(cfg: ExperimentConfig) -> dict[str, Any]:
  """train_settings(cfg) with dropout as the network has it: the rate and the feature
  resolutions whose blocks drop out (core.models.unet._drop). A dropout_max_res below the
  lowest level is then dropout 0, and two values that reach the same levels are equal. For
  comparing arms only: the model key (train_key) is not changed."""
  from core.models.unet import level_resolutions
  s = train_settings(cfg)
  m = cfg.model
  try:
    levels = level_resolutions(m, cfg.resolution)
  except ConfigError:
    return s   # a model that cannot be built: preflight names it
  at = [r for r in levels if r <= m.dropout_max_res] if m.dropout else []
  s.pop("model.dropout_max_res", None)
  s["model.dropout"] = [m.dropout, at] if at else 0.0
  return s


def _declared(path: str, spec: dict[str, Any], tier: str, labels: set) -> list[set]:
  """The file's shared_models at this tier: sets of arm labels that are one model on purpose."""
  v = spec.get("shared_models")
  if isinstance(v, PerTier):
    if set(map(str, v)) - set(TIERS):
      raise ConfigError(f"{path}: shared_models: !tier {dict(v)!r} names an unknown tier; "
                        f"tiers: {', '.join(TIERS)}")
    v = v.get(tier)
  if v is None:
    return []
  if not (isinstance(v, list) and all(isinstance(g, list) and len(g) > 1 for g in v)):
    raise ConfigError(f"{path}: shared_models must be a list of lists of arm labels, e.g. "
                      f"[[none, r=16]], or !tier {{cpu: [[none, r=16]]}}, got {v!r}")
  for g in v:
    for name in g:
      if str(name) not in labels:
        raise ConfigError(f"{path}: shared_models names {str(name)!r}, which is no arm's "
                          f"label; labels: {', '.join(sorted(labels))}")
  return [set(map(str, g)) for g in v]


def _check_collapse(path: str, spec: dict[str, Any], tier: str, runs: list[RunSpec],
                    entry: dict, tier_spec: dict[str, Any], overrides: dict[str, Any]) -> list:
  """Stops (ConfigError) where arms that set a training key apart are one model at this tier,
  unless shared_models declares them; returns the declared groups that are one model."""
  import json
  from core.config import to_dict
  from core.models.unet import level_resolutions
  norm = lambda v: json.dumps(v, sort_keys=True, default=str)   # tuples and lists alike
  sampling = lambda k: k != "model.preset" and any(
      k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_TRAINING)
  # What an arm writes towards its model (the arm layer at this tier): arms that write the
  # same share a model by design (they differ in sampling, e.g. guidance scales).
  written = lambda r: {k: norm(v) for k, (v, _) in _layer(r.values, tier, True).items()
                       if not sampling(k)}
  labels = {*(str(a["label"]) for a in spec["arms"]), *(label for _, label in entry)}
  declared = _declared(path, spec, tier, labels)
  same: dict[tuple, list[RunSpec]] = {}
  for r in runs:
    same.setdefault((r.seed, norm(effective_model(r.config))), []).append(r)
  problems, shared = [], []
  for group in same.values():
    arms = {(r.group, r.arm): r for r in group}
    if len({norm(written(r)) for r in arms.values()}) < 2:
      continue
    if any(all({entry[a], a[1]} & d for a in arms) for d in declared):
      if [a[1] for a in arms] not in shared:
        shared.append([a[1] for a in arms])
      continue
    if any(p[0] == set(arms) for p in problems):
      continue   # the same arms at another seed
    problems.append((set(arms), list(arms.values())))
  if not problems:
    return shared
  _, rs = problems[0]
  w = [written(r) for r in rs]
  keys = sorted(k for k in set().union(*w) if len({x.get(k) for x in w}) > 1)
  flat = [flatten(to_dict(r.config)) for r in rs]
  def src(k):   # where the equal value comes from
    return ("from the command line" if k in overrides else "from " + (
        f"tier {tier}'s presets" if k == "model.preset" and tier_spec.get("presets") else
        f"tier {tier}'s set in {tier_spec['from'][k]}" if k in tier_spec["from"] else
        "the base" if k in _flatten(spec.get("base") or {}) else "the default") +
        " where the arm does not set it")
  reasons = []
  if {"model.dropout", "model.dropout_max_res"} & set(keys):   # dropout as the network has it
    ms = [r.config.model for r in rs]
    if not any(m.dropout for m in ms):
      reasons.append(f"model.dropout=0.0 in each ({src('model.dropout')}), so "
                     "model.dropout_max_res is inert")
    else:
      c = rs[0].config
      got = effective_model(c)["model.dropout"]
      reach = f"only the levels {', '.join(map(str, got[1]))} px" if got else "no level"
      show = lambda xs: "/".join(map(str, sorted(set(xs))))
      reasons.append(
          f"model.dropout {show(m.dropout for m in ms)} with model.dropout_max_res "
          f"{show(m.dropout_max_res for m in ms)} reach {reach} of the {c.resolution}-px model "
          f"(levels {', '.join(map(str, level_resolutions(c.model, c.resolution)))} px)")
  for k in keys:
    if k in ("model.dropout", "model.dropout_max_res"):
      continue
    vals = [f.get(k) for f in flat]
    if len({norm(v) for v in vals}) == 1:
      reasons.append(f"{k}={vals[0]!r} in each ({src(k)})")
    else:
      reasons.append(f"{k} is inert in these configs")
  key_ids = list(dict.fromkeys(r.train_key for r in rs))
  what = (f"model key {key_ids[0]}" if len(key_ids) == 1 else
          f"model keys {', '.join(key_ids)}, one network")
  clash = len({r.arm for r in rs}) < len(rs)   # one label in several groups: name the group
  names = ", ".join(repr(r.arm) + (f" (group {r.group})" if clash else "") for r in rs)
  more = f" ({len(problems) - 1} more such sets of arms)" if len(problems) > 1 else ""
  raise ConfigError(
      f"{path}: at tier {tier} the arms {names} are one model ({what}), though they set "
      f"{', '.join(keys)} apart: {'; '.join(reasons)}{more}; make them differ at this tier "
      f"(tiers: {tier}: set: in the file), or if they are one model on purpose declare it: "
      f"shared_models: !tier {{{tier}: [[{', '.join(r.arm for r in rs)}]]}} with a comment why")
