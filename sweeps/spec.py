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
      - {label: cosine, group: "64", tiers: [cpu, smoke], set: {...}}   # only at these tiers
    grid: {key: [values, ...]}   # optional: the arms are crossed with every grid combination
    grid_label: "{label} {guidance_scale:.2f}"  # optional: row label from the grid values
    tiers:                       # paper | gpu | cpu | smoke; over ablations/_tiers.yaml's
      cpu: {scale: 8, presets: {unet: unet_tiny}, set: {...}}

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
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any

import yaml

from core.config import ConfigError, ExperimentConfig, flatten, parse_assignments, set_dotted
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
  out: dict[str, Any] = {"set": {}, "presets": {}}
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
