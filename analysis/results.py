"""A results folder (docs/results_layout.md) loaded into pandas; reads that layout only.

  sweeps = load_results("results")        # every sub-folder holding a sweep.json
  s = sweeps[0]; s.runs                   # one row per run listed in sweep.json
  arm_summary(s)                          # one row per (group, arm): seeds aggregated
  group_floors(s)                         # one row per group (and sample count): the data floor
  train = run_metrics(s.run_dir(run_id))   # training rows of the run's (last) model

Nothing here raises on a partial folder: a missing run folder is state "missing", an unreadable
status.json counts as "pending" (or "done" if eval.json is there), a torn metrics.jsonl line is
skipped, a missing eval.json leaves the numbers NaN, and so do keys an older eval.json lacks
(KID, the data floor).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional

import numpy as np
import pandas as pd
import scipy.stats

from analysis.speed import percent_of, speed_references
from core.runio import read_json, read_jsonl, run_state

# The eval.json keys read here (core.eval_record names them all: tests/test_house.py checks)
EVAL_KEYS = ("fid_train", "fid_eval", "kid_train", "kid_train_std", "kid_eval", "kid_eval_std",
             "is_mean", "is_std", "num_samples", "params", "train_img_per_s", "train_time_s",
             "eval_time_s", "steps", "guidance_scale", "sfid_eval", "resolution", "bpd_eval",
             "bpd_eval_se", "bpd_train", "bpd_train_se")
# eval.json "content": the samples box-downsampled to the data's content resolution
CONTENT_KEYS = {"fid_content": "fid_eval", "kid_content": "kid_eval"}
# eval.json "oracle" (core.metrics.oracle, procedural data): class accuracy of the samples and the
# Fréchet distance in the oracle's features, read at the content resolution
ORACLE_KEYS = {"class_acc": "class_acc", "oracle_fd": "fd_eval"}
METRICS = ("fid_train", "fid_eval", "kid_train", "kid_eval", "is_mean", "sfid_eval",
           *CONTENT_KEYS, "bpd_eval", "bpd_train", *ORACLE_KEYS)
FLOOR_METRICS = ("fid_train", "fid_eval", "kid_train", "kid_eval", "kid_train_std", "kid_eval_std")
# averaged too, but older eval.json files lack them: not in `distinct`
FLOOR_EXTRA = ("sfid_eval", *CONTENT_KEYS, *ORACLE_KEYS, "oracle_num")
GUIDANCE_KEY = "sampler.guidance_scale"


@dataclasses.dataclass
class Sweep:
  name: str                # the folder's name, e.g. noise_shift_cpu
  path: str
  meta: dict
  runs: pd.DataFrame

  @property
  def table(self) -> str:
    return str(self.meta.get("table") or "")

  @property
  def tier(self) -> str:
    return str(self.meta.get("tier") or "")

  @property
  def title(self) -> str:
    return str(self.meta.get("title") or self.meta.get("sweep") or self.name)

  @property
  def reference(self) -> Optional[str]:
    return self.meta.get("reference")

  def run_dir(self, run_id: str) -> str:
    return os.path.join(self.path, run_id)


def find_sweeps(root: str) -> list[str]:
  """Sweep folders under root (its direct sub-folders with a sweep.json), or root itself."""
  if os.path.isfile(os.path.join(root, "sweep.json")):
    return [root]
  if not os.path.isdir(root):
    return []
  out = []
  for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if os.path.isdir(d) and os.path.isfile(os.path.join(d, "sweep.json")):
      out.append(d)
  return out


def _num(v) -> float:
  if v is None or isinstance(v, bool):
    return math.nan
  try:
    return float(v)
  except (TypeError, ValueError):
    return math.nan


def short_error(err: Any, n: int = 60) -> str:
  s = str(err or "").strip().splitlines()
  s = s[0] if s else "unknown error"
  return s if len(s) <= n else s[:n - 3] + "..."


def _run_row(sweep_path: str, i: int, r: dict) -> dict:
  run_id = str(r.get("run_id", f"run{i}"))
  d = os.path.join(sweep_path, run_id)
  values = r.get("values") or {}
  row = {"order": i, "run_id": run_id, "arm": str(r.get("arm", run_id)),
         "group": str(r.get("group") or ""), "seed": r.get("seed", 0), "values": values,
         "dir": d, "error": None, "step": math.nan, "has_eval": False, "samples": None}
  ev = None
  if not os.path.isdir(d):
    state = "missing"
  else:
    st = read_json(os.path.join(d, "status.json"))
    ev = read_json(os.path.join(d, "eval.json"))
    ev = ev if isinstance(ev, dict) else None
    if isinstance(st, dict) and st.get("state"):
      state = run_state(st)
      row["error"] = st.get("error") or ("process gone; run the same command to resume"
                                         if state == "killed" else None)
      row["step"] = _num(st.get("step"))
    else:
      state = "done" if ev is not None else "pending"
    sp = os.path.join(d, "samples.png")
    row["samples"] = sp if os.path.isfile(sp) else None
  row["state"] = state
  row["has_eval"] = state == "done" and ev is not None
  for k in EVAL_KEYS:
    row[k] = _num((ev or {}).get(k)) if row["has_eval"] else math.nan
  # the step the final figures were taken at (eval.json "step", else its "steps")
  row["eval_step"] = _num((ev or {}).get("step", (ev or {}).get("steps"))) \
      if row["has_eval"] else math.nan
  if math.isnan(row["guidance_scale"]) and GUIDANCE_KEY in values:
    row["guidance_scale"] = _num(values[GUIDANCE_KEY])
  content = (ev or {}).get("content") if row["has_eval"] else None
  content = content if isinstance(content, dict) else {}
  for k, src in CONTENT_KEYS.items():
    row[k] = _num(content.get(src))
  row["content_resolution"] = _num(content.get("resolution"))
  orc = (ev or {}).get("oracle") if row["has_eval"] else None
  orc = orc if isinstance(orc, dict) else {}
  for k, src in ORACLE_KEYS.items():
    row[k] = _num(orc.get(src))
  row["oracle_num"] = _num(orc.get("num"))
  sched = (ev or {}).get("schedule") if row["has_eval"] else None
  row["logsnr_shift"] = _num(sched.get("logsnr_shift")) if isinstance(sched, dict) else math.nan
  fl = (ev or {}).get("floor") if row["has_eval"] else None
  row["floor"] = fl if isinstance(fl, dict) else None
  if row["floor"] is not None and isinstance(content.get("floor"), dict):
    row["floor"] = dict(row["floor"], **{k: content["floor"].get(src)
                                         for k, src in CONTENT_KEYS.items()})
  if row["floor"] is not None and isinstance(orc.get("floor"), dict):
    # real images read by the oracle at its own count (its floor: class accuracy of real
    # images, the oracle's ceiling, and the real-vs-real distance)
    row["floor"] = dict(row["floor"], **{k: orc["floor"].get(src)
                                         for k, src in ORACLE_KEYS.items()},
                        oracle_num=orc["floor"].get("num"))
  row["sampler"] = sampler_text((ev or {}).get("sampler")) if row["has_eval"] else None
  row["paper"] = r.get("paper")   # the published rows the arm names (None: older sweep.json)
  return row


def sampler_text(s) -> Optional[str]:
  """How an eval.json's samples were drawn, e.g. 'ddpm, 64 steps, noise_param 0.2, x clipped'."""
  if not isinstance(s, dict) or not s.get("name"):
    return None
  parts = [str(s["name"])]
  if s.get("steps") is not None:
    parts.append(f"{s['steps']} steps")
  if s.get("noise_param") is not None and s.get("name") == "ddpm":
    parts.append(f"noise_param {s['noise_param']:g}")
  if s.get("clip_x") is not None:
    parts.append("x clipped" if s["clip_x"] else "x not clipped")
  sch = s.get("schedule")
  if isinstance(sch, dict) and sch.get("trained") is False:   # core.runtime.generate.sampling_schedule
    parts.append(f"sampled with the {sch.get('name')} schedule"
                 + (f" (noise_d {sch['noise_d']})" if sch.get("noise_d") else ""))
  return ", ".join(parts)


def load_sweep(path: str) -> Sweep:
  meta = read_json(os.path.join(path, "sweep.json"))
  if not isinstance(meta, dict):
    raise ValueError(f"{os.path.join(path, 'sweep.json')} is not a readable JSON object")
  if not isinstance(meta.get("runs") or [], list):
    raise ValueError(f"{os.path.join(path, 'sweep.json')}: 'runs' is {meta['runs']!r}, not a list "
                     "of runs; rerun the sweep command to rewrite it")
  runs = [r for r in (meta.get("runs") or []) if isinstance(r, dict)]
  rows = [_run_row(path, i, r) for i, r in enumerate(runs)]
  cols = ["order", "run_id", "arm", "group", "seed", "state", "error", "step", "has_eval",
          *EVAL_KEYS, *CONTENT_KEYS, "content_resolution", *ORACLE_KEYS, "oracle_num",
          "logsnr_shift", "eval_step", "floor",
          "sampler", "paper", "samples", "dir", "values"]
  df = pd.DataFrame(rows, columns=cols)
  name = os.path.basename(os.path.normpath(path))
  return Sweep(name=name, path=path, meta=meta, runs=df)


def load_results(root: str, warn=None) -> list[Sweep]:
  """Every readable sweep under root; an unreadable sweep.json is reported through warn."""
  out = []
  for d in find_sweeps(root):
    try:
      out.append(load_sweep(d))
    except ValueError as e:
      if warn:
        warn(f"skipped {d}: {e}")
  return out


def readable_results(root: str) -> tuple[list[Sweep], list[str], Optional[str]]:
  """(sweeps, warnings, error) for a command that reads a results folder: the error (one
  line, or None) where the folder is missing, is a file, or holds sweeps none of which can be
  read (an error rather than "no sweeps")."""
  if not os.path.isdir(root):
    what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
    return [], [], (f"results folder {root!r} {what}; pass the folder sweeps.run wrote "
                    "(--results, default results/)")
  skipped: list[str] = []
  sweeps = load_results(root, warn=skipped.append)
  if skipped and not sweeps:
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return [], skipped, (f"no readable sweep in {root!r}: {skipped[0].removeprefix('skipped ')}"
                         f"{more}; rerun its sweep to rewrite sweep.json, or move the folder away")
  return sweeps, skipped, None


def make_out_dir(out: str) -> Optional[str]:
  """Makes an output folder; the one-line error where it cannot be made, else None."""
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return f"--out {out!r}: cannot make the folder ({e.strerror}); pass --out a writable folder"
  return None


def metrics_path(run_dir: str) -> Optional[str]:
  """The metrics.jsonl of a run's (last stage's) trained model: in the model directory that
  its eval.json, or while it trains its status.json, names last in "model_dirs" (relative to
  the run), or the run folder's own (a `python -m core.train` run, or a run of an older sweep,
  which copied it there)."""
  own = os.path.join(run_dir, "metrics.jsonl")
  if os.path.isfile(own):
    return own
  for name in ("eval.json", "status.json"):
    st = read_json(os.path.join(run_dir, name))
    dirs = st.get("model_dirs") if isinstance(st, dict) else None
    if isinstance(dirs, list) and dirs:
      return os.path.normpath(os.path.join(run_dir, str(dirs[-1]), "metrics.jsonl"))
  return None


def run_metrics(run_dir: str) -> pd.DataFrame:
  """The training rows of a run's model (metrics_path), sorted by step; empty without them."""
  path = metrics_path(run_dir)
  rows = [r for r in read_jsonl(path) if isinstance(r, dict) and "loss" in r] if path else []
  df = pd.DataFrame(rows)
  if "step" in df:
    df = df[pd.to_numeric(df["step"], errors="coerce").notna()]
    df = df.sort_values("step", kind="stable").reset_index(drop=True)
  return df


def run_curve(run_dir: str) -> pd.DataFrame:
  """The learning curve of a run's model (core.curve: curve.jsonl beside its metrics.jsonl),
  sorted by step; empty without one."""
  path = metrics_path(run_dir)
  path = path and os.path.join(os.path.dirname(path), "curve.jsonl")
  rows = [r for r in read_jsonl(path) if isinstance(r, dict) and "step" in r] \
      if path and os.path.isfile(path) else []
  df = pd.DataFrame(rows)
  return df.sort_values("step", kind="stable").reset_index(drop=True) if len(df) else df


def ema_length_records(run_dir: str) -> pd.DataFrame:
  """A run's evaluations at different EMA lengths: its eval.json (the run's own EMA) and each
  evals/*.json, one row each, with "sigma_rel" (eval.json "ema": the post-hoc EMA's, or the
  own EMA's equivalent), "post_hoc", "own_sigma_rel", fid_eval, fid_content, bpd_eval,
  bpd_eval_se, "file"; only the records drawn like eval.json (sample count, sampler, eval
  seed), so that the points differ in the EMA alone. Empty where eval.json has no "ema"."""
  def key(ev):
    st = ev.get("settings") or {}
    return (ev.get("num_samples"), json.dumps(ev.get("sampler"), sort_keys=True),
            (st.get("eval") or {}).get("seed"))
  own = read_json(os.path.join(run_dir, "eval.json"))
  if not isinstance(own, dict) or not isinstance(own.get("ema"), dict):
    return pd.DataFrame()
  files = [os.path.join(run_dir, "eval.json")]
  d = os.path.join(run_dir, "evals")
  if os.path.isdir(d):
    files += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".json")]
  rows = []
  for f in files:
    ev = read_json(f)
    if not isinstance(ev, dict) or not isinstance(ev.get("ema"), dict) or key(ev) != key(own):
      continue
    content = ev.get("content") if isinstance(ev.get("content"), dict) else {}
    rows.append({"file": os.path.relpath(f, run_dir), "sigma_rel": _num(ev["ema"].get("sigma_rel")),
                 "post_hoc": bool(ev["ema"].get("post_hoc")),
                 "own_sigma_rel": _num(ev["ema"].get("own_sigma_rel")),
                 **{k: _num(ev.get(k)) for k in ("fid_eval", "kid_eval", "bpd_eval",
                                                  "bpd_eval_se", "num_samples")},
                 "fid_content": _num(content.get("fid_eval"))})
  return pd.DataFrame(rows).sort_values("sigma_rel", kind="stable").reset_index(drop=True)


def arm_order(runs: pd.DataFrame) -> list[tuple[str, str]]:
  """(group, arm) in sweep.json order, arms of one group kept together."""
  groups: dict[str, list[str]] = {}
  for g, a in zip(runs["group"], runs["arm"]):
    groups.setdefault(g, [])
    if a not in groups[g]:
      groups[g].append(a)
  return [(g, a) for g, arms in groups.items() for a in arms]


def _state_text(sub: pd.DataFrame) -> str:
  """One arm's state: "done", "running", "failed: <error>", "killed: ...", or counts when mixed."""
  def one(state, err):
    if state in ("failed", "killed"):
      return f"{state}: {short_error(err)}"
    return state
  labels = []
  for _, r in sub.iterrows():
    s = one(r["state"], r["error"])
    if r["state"] == "done" and not r["has_eval"]:
      s = "done, no eval.json"
    labels.append(s)
  uniq = list(dict.fromkeys(labels))
  if len(uniq) == 1:
    return uniq[0]
  return ", ".join(f"{labels.count(u)} {u}" for u in uniq)


def _mean_std(x: pd.Series) -> tuple[float, float]:
  x = pd.to_numeric(x, errors="coerce").dropna()
  if len(x) == 0:
    return math.nan, math.nan
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


def ci95(std: float, n: int) -> float:
  """Half-width of the 95% confidence interval of a mean of n values of sample std `std`
  (ddof=1), from Student's t: t(0.975, n-1) * std / sqrt(n). NaN below two values."""
  if n < 2 or not finite(std):
    return math.nan
  return float(scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def _count(x: pd.Series) -> int:
  return int(pd.to_numeric(x, errors="coerce").notna().sum())


def arm_summary(sweep: Sweep) -> pd.DataFrame:
  """One row per (group, arm), in sweep.json order.

  seeds: finished runs (done with an eval.json); for each metric `<m>` the mean over those that
  report it, `<m>_n` how many do (an older eval.json has no KID), `<m>_std` their sample
  standard deviation (ddof=1) and `<m>_ci95` the 95% confidence half-width (ci95; both NaN
  below two seeds); is_split_std and kid_<split>_subset_std the Inception-split and KID-subset
  std of a single seed; speed the arm's mean img/s in percent of its reference arm's
  (analysis.speed: the sweep's reference arm, else the first arm of its group).
  """
  runs = sweep.runs
  rows = []
  ref = sweep.reference
  for g, a in arm_order(runs) if len(runs) else []:
    sub = runs[(runs["group"] == g) & (runs["arm"] == a)]
    done = sub[sub["has_eval"]]
    row = {"group": g, "arm": a, "state": _state_text(sub), "seeds": int(len(done)),
           "runs": int(len(sub)), "run_ids": list(sub["run_id"]),
           "paper": sub["paper"].iloc[0] if "paper" in sub else None}
    for k in METRICS:
      row[k], row[f"{k}_std"] = _mean_std(done[k])
      row[f"{k}_n"] = _count(done[k])
      row[f"{k}_ci95"] = ci95(row[f"{k}_std"], row[f"{k}_n"])
    one = len(done) == 1
    row["is_split_std"] = float(done["is_std"].iloc[0]) if one else math.nan
    for k in ("kid_train", "kid_eval"):
      row[f"{k}_subset_std"] = float(done[f"{k}_std"].iloc[0]) if one else math.nan
    row["params"] = _mean_std(done["params"])[0]
    # wall minutes of a run, training and evaluation (runs without eval_time_s: training only)
    total = pd.to_numeric(done["train_time_s"], errors="coerce") + \
        pd.to_numeric(done["eval_time_s"], errors="coerce").fillna(0.0)
    row["minutes"] = _mean_std(total / 60.0)[0]
    img_s = _mean_std(done["train_img_per_s"])[0]
    row["train_img_per_s"] = img_s
    row["guidance_scale"] = _mean_std(sub["guidance_scale"])[0]
    row["is_reference"] = ref is not None and ref in row["run_ids"]
    rows.append(row)
  ref_row = next((i for i, r in enumerate(rows) if r["is_reference"]), None)
  for r, j in zip(rows, speed_references([r["group"] for r in rows], ref_row)):
    r["speed"] = percent_of(r["train_img_per_s"], rows[j]["train_img_per_s"])
  cols = ["group", "arm", "state", "seeds", "runs",
          *(f"{k}{s}" for k in METRICS for s in ("", "_std", "_ci95", "_n")),
          "is_split_std", "kid_train_subset_std", "kid_eval_subset_std", "params", "minutes",
          "train_img_per_s", "speed", "guidance_scale", "is_reference", "run_ids", "paper"]
  return pd.DataFrame(rows, columns=cols)


PAIRED = ("fid_eval", "fid_content", "class_acc", "oracle_fd", "bpd_eval")


def reference_arms(sweep: Sweep) -> dict[str, str]:
  """Each group's reference arm for paired differences: the sweep's reference arm where it is
  in the group, else the group's first arm."""
  ref_arm = None
  if sweep.reference is not None:
    hit = sweep.runs[sweep.runs["run_id"] == sweep.reference]
    ref_arm = (str(hit["group"].iloc[0]), str(hit["arm"].iloc[0])) if len(hit) else None
  out: dict[str, str] = {}
  for g, a in arm_order(sweep.runs) if len(sweep.runs) else []:
    if ref_arm is not None and ref_arm[0] == g:
      out[g] = ref_arm[1]
    out.setdefault(g, a)
  return out


def paired_summary(sweep: Sweep, metrics=PAIRED) -> pd.DataFrame:
  """Each arm against its group's reference arm (reference_arms), paired by seed: the runs of
  one seed draw their samples from the same noise and labels (core.runtime.generate.sample_key), so
  their difference carries less of the sampling noise than two independent means. One row
  per (group, arm) other than the reference, with, per metric m, d_<m> the mean over seeds of
  (arm - reference), d_<m>_ci95 its 95% t half-width, d_<m>_n the pairs."""
  runs = sweep.runs[sweep.runs["has_eval"]]
  refs = reference_arms(sweep)
  rows = []
  for g, a in arm_order(sweep.runs) if len(sweep.runs) else []:
    if a == refs.get(g):
      continue
    mine = runs[(runs["group"] == g) & (runs["arm"] == a)].set_index("seed")
    base = runs[(runs["group"] == g) & (runs["arm"] == refs[g])].set_index("seed")
    row = {"group": g, "arm": a, "reference": refs[g]}
    for m in metrics:
      d = (pd.to_numeric(mine[m], errors="coerce") - pd.to_numeric(base[m], errors="coerce")
           ).dropna()
      mean, std = _mean_std(d)
      row.update({f"d_{m}": mean, f"d_{m}_std": std, f"d_{m}_n": int(len(d)),
                  f"d_{m}_ci95": ci95(std, len(d))})
    rows.append(row)
  cols = ["group", "arm", "reference", *(f"d_{m}{s}" for m in metrics
                                          for s in ("", "_std", "_ci95", "_n"))]
  return pd.DataFrame(rows, columns=cols)


def group_floors(sweep: Sweep) -> pd.DataFrame:
  """The data floor of each group: eval.json's "floor" (the metrics of fresh real images at the
  run's sample count and resolution) over the group's finished runs, one row per (group, num,
  resolution) in sweep.json order. The runs should agree; `distinct` counts the different
  entries, and the numbers are the mean over the runs (which is any one of them where they
  agree). No floor entries, no rows.
  """
  rows: dict = {}
  for _, r in sweep.runs.iterrows():
    fl = r["floor"]
    if not r["has_eval"] or not isinstance(fl, dict):
      continue
    key = (r["group"], _num(fl.get("num")), _num(fl.get("resolution")))
    rows.setdefault(key, []).append({k: _num(fl.get(k)) for k in FLOOR_METRICS + FLOOR_EXTRA})
  out = []
  for (g, num, res), entries in rows.items():
    df = pd.DataFrame(entries, columns=list(FLOOR_METRICS + FLOOR_EXTRA))
    distinct = len({tuple(round(e[k], 12) if finite(e[k]) else None for k in FLOOR_METRICS)
                    for e in entries})
    out.append({"group": g, "num": num, "resolution": res, "runs": len(entries),
                "distinct": distinct,
                **{k: _mean_std(df[k])[0] for k in FLOOR_METRICS + FLOOR_EXTRA}})
  return pd.DataFrame(out, columns=["group", "num", "resolution", "runs", "distinct",
                                    *FLOOR_METRICS, *FLOOR_EXTRA])


def group_label(sweep: Sweep, group: str) -> str:
  """A group named by the paper's resolution, with the resolution its runs trained at where a
  tier differs ("128 (32 px)"), read from their eval.json."""
  res = {x for x in sweep.runs.loc[sweep.runs["group"] == group, "resolution"] if finite(x)}
  if len(res) == 1 and group.isdigit() and int(group) != (r := res.pop()):
    return f"{group} ({r:.0f} px)"
  return group


def varies_guidance(sweep: Sweep) -> bool:
  """Whether the runs differ in sampler.guidance_scale (a guidance sweep)."""
  g = pd.to_numeric(sweep.runs["guidance_scale"], errors="coerce").dropna()
  return g.nunique() > 1


def human_count(n) -> str:
  """12345678 -> '12.3M'."""
  n = _num(n)
  if math.isnan(n):
    return ""
  for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= div:
      v = n / div
      return f"{v:.0f}{suf}" if v >= 100 else f"{v:.1f}{suf}"
  return f"{n:.0f}"


def finite(x) -> bool:
  return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and \
      not isinstance(x, bool) and math.isfinite(float(x))
