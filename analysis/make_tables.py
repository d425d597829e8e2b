"""python -m analysis.make_tables RESULTS [--out DIR] [--with-paper | --no-paper] [--quiet]

One paper-style table per sweep folder under RESULTS (a folder holding a sweep.json; other
folders are ignored): rows are the arms in sweep.json order, grouped by `group`; columns FID
train, FID eval, KID train and KID eval (x 10^3), IS, relative training speed, parameters,
finished seeds and state. Arms with no finished run show their state ("running", "failed:
<error>", "killed: ...", "missing", "pending") instead of numbers. At tier "paper" (or with
--with-paper) the paper's numbers stand beside ours.

Honest at small n: each group ends with a "data floor (n=...)" row where the runs' eval.json
carry a "floor" (the same metrics for fresh real images at the runs' sample count and
resolution: what a perfect model would score). With several seeds a cell is the mean ± the
half-width of its 95% confidence interval (Student's t over the seeds; no ± with one seed), and
notes say, per group, whether the intervals of FID eval and of KID eval of two arms overlap:
for every pair of arms with several seeds, or each against the group's first such arm where
more than PAIRWISE_MAX arms have them.

Writes <sweep>.md, <sweep>.tex (booktabs) and <sweep>.csv (numbers, not formatted) into
RESULTS/tables/ (or --out) and prints the Markdown. A RESULTS folder without any sweep prints
a one-line note and exits 0 (there is nothing to tabulate yet); a RESULTS path that does not
exist is an error (exit 2).

Relative training speed (one rule, analysis.speed: against the sweep's reference arm, else the
first arm of each group): where RESULTS/cost/<sweep>.json exists (python -m analysis.cost), its
measured step speeds, taken under the same conditions for every arm, replace the runs' own
img/s (which include data loading and may come from different machines).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import itertools
import re
import sys
from typing import Optional

import pandas as pd

from analysis import paper_numbers
from analysis.results import (METRICS, Sweep, arm_summary, finite, group_floors, group_label,
                              human_count, make_out_dir, paired_summary, readable_results)
from core.runio import read_json, write_text_atomic

KID_SCALE = 1e3        # KID is shown x 10^3 (values of 1e-3..1e-1 read as 1..100); CSV unscaled
COLUMNS = ["group", "arm", "FID train", "FID eval", "KID train ×10³", "KID eval ×10³", "IS",
           "speed", "params", "min/run", "seeds", "state"]
PAPER_COLUMNS = ["paper FID train", "paper FID eval", "paper IS", "paper speed"]
CELLS = (("FID train", "fid_train", 1.0), ("FID eval", "fid_eval", 1.0),
         ("KID train ×10³", "kid_train", KID_SCALE), ("KID eval ×10³", "kid_eval", KID_SCALE),
         ("sFID eval", "sfid_eval", 1.0), ("FID eval @content", "fid_content", 1.0),
         ("KID eval @content ×10³", "kid_content", KID_SCALE),
         ("class acc %", "class_acc", 100.0), ("oracle FD", "oracle_fd", 1.0))
SFID_COLUMN = "sFID eval"   # after KID eval, only where some run reports it (older runs do not)
# after those, only where some run's data were made at a lower content resolution
CONTENT_COLUMNS = ("FID eval @content", "KID eval @content ×10³")
# after those, only where some run reports the oracle (core.metrics.oracle: procedural data)
ORACLE_COLUMNS = ("class acc %", "oracle FD")
# before IS, only where some run reports the variational bound (core.diffusion.bound); no floor
BPD_COLUMN = "bits/dim eval"
FLOOR_STATE = "real data"
FLOOR_COUNTS = ("floor_num", "floor_resolution", "floor_runs", "floor_distinct")
OVERLAP = (("fid_eval", "FID eval"), ("kid_eval", "KID eval"), ("bpd_eval", "bits/dim eval"),
           ("fid_content", "FID eval @content"), ("class_acc", "class acc"),
           ("oracle_fd", "oracle FD"))
PAIRWISE_MAX = 4       # above this many arms with intervals, compare each with the first only


@dataclasses.dataclass
class Table:
  sweep: Sweep
  title: str
  display: pd.DataFrame        # formatted cells, the paper's layout
  numbers: pd.DataFrame        # the same rows as numbers (the CSV)
  notes: list[str]
  with_paper: bool
  paired: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)   # paired_table
  paired_numbers: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # its CSV


def _fmt(mean, std=math.nan, p: int = 2) -> str:
  if not finite(mean):
    return ""
  return f"{mean:.{p}f} ± {std:.{p}f}" if finite(std) else f"{mean:.{p}f}"


def _pct(x) -> str:
  return f"{x:.0f}%" if finite(x) else ""


def wants_paper(sweep: Sweep, with_paper: Optional[bool]) -> bool:
  return sweep.tier == "paper" if with_paper is None else with_paper


def cost_path(sweep: Sweep) -> str:
  return os.path.join(os.path.dirname(os.path.normpath(sweep.path)), "cost", f"{sweep.name}.json")


def cost_speeds(sweep: Sweep) -> Optional[dict]:
  """{(group, arm): speed %} measured by analysis.cost for this sweep, or None without its file."""
  rep = read_json(cost_path(sweep))
  if not isinstance(rep, dict) or not isinstance(rep.get("rows"), list):
    return None
  speeds = {}
  for r in (r for r in rep["rows"] if isinstance(r, dict)):
    v = r.get("speed_pct")   # null where the report only compiled the step
    for a in r.get("arms") or []:
      speeds[(str(a.get("group") or ""), str(a.get("arm")))] = \
          float(v) if finite(v) else math.nan
  return {"speeds": speeds, "reference": rep.get("reference")}


def floor_label(num, resolution=None) -> str:
  """'data floor (n=256)', with the resolution where a group holds floors of several."""
  n = f"n={num:.0f}" if finite(num) else "n=?"
  res = f", {resolution:.0f}px" if finite(resolution) else ""
  return f"data floor ({n}{res})"


def _arm_rows(r, paper: bool, table: str, cost) -> tuple[dict, dict]:
  """(display cells, numbers) of one arm_summary row."""
  n = r["seeds"]
  is_pm = r["is_mean_ci95"] if n > 1 else r["is_split_std"]
  d = {"group": r["group"], "arm": r["arm"],
       **{c: _fmt(r[k] * sc, r[f"{k}_ci95"] * sc) for c, k, sc in CELLS},
       BPD_COLUMN: _fmt(r["bpd_eval"], r["bpd_eval_ci95"], 3), "IS": _fmt(r["is_mean"], is_pm),
       "speed": _pct(r["speed"]) if n or cost is not None else "",
       "params": human_count(r["params"]),
       "min/run": f"{r['minutes']:.1f}" if finite(r["minutes"]) else "", "seeds": str(n),
       "state": r["state"]}
  x = {"row": "arm", **{k: r[k] for k in ("group", "arm", "state", "seeds", "runs")}}
  for k in METRICS:
    x.update({f"{k}{s}": r[f"{k}{s}"] for s in ("", "_ci95", "_std", "_n")})
  x.update({k: r[k] for k in ("is_split_std", "kid_train_subset_std", "kid_eval_subset_std",
                              "params", "minutes", "train_img_per_s")})
  x["speed_pct"] = r["speed"]
  if paper:
    p = paper_numbers.for_run(table, r["group"], r["arm"], r.get("paper")) or {}
    d["paper FID train"] = _fmt(p.get("fid_train", math.nan))
    d["paper FID eval"] = _fmt(p.get("fid_eval", math.nan))
    d["paper IS"] = _fmt(p.get("is_mean", math.nan), p.get("is_std", math.nan))
    d["paper speed"] = _pct(p.get("speed", math.nan))
    for k in ("fid_train", "fid_eval", "is_mean", "is_std", "speed"):
      x[f"paper_{k}"] = p.get(k, math.nan)
  return d, x


def _floor_rows(f, label: str) -> tuple[dict, dict]:
  """(display cells, numbers) of one group_floors row: metrics only, no seeds, no ±."""
  d = {"group": f["group"], "arm": label, **{c: _fmt(f[k] * sc) for c, k, sc in CELLS},
       "state": FLOOR_STATE}
  x = {"row": "floor", "group": f["group"], "arm": label, "state": FLOOR_STATE,
       **{k: f[k] for k in ("fid_train", "fid_eval", "kid_train", "kid_eval", "sfid_eval",
                            "fid_content", "kid_content", "class_acc", "oracle_fd",
                            "oracle_num")},
       "kid_train_subset_std": f["kid_train_std"], "kid_eval_subset_std": f["kid_eval_std"],
       **{f"floor_{k}": f[k] for k in ("num", "resolution", "runs", "distinct")}}
  return d, x


def _floor_labels(floors: pd.DataFrame) -> list[str]:
  several = floors.groupby("group")["resolution"].transform("nunique") > 1
  return [floor_label(f["num"], f["resolution"] if sev else None)
          for (_, f), sev in zip(floors.iterrows(), several)]


def build_table(sweep: Sweep, with_paper: Optional[bool] = None) -> Table:
  summ = arm_summary(sweep)
  floors = group_floors(sweep)
  paper = wants_paper(sweep, with_paper)
  cost = cost_speeds(sweep)
  if cost is not None:  # the cost file's measured speeds, for every arm whether trained or not
    summ["speed"] = [cost["speeds"].get((g, a), math.nan)
                     for g, a in zip(summ["group"], summ["arm"])]
  labels = _floor_labels(floors)
  rows = []
  for g in dict.fromkeys(summ["group"]):   # each group's arms, then its data floor
    rows += [_arm_rows(r, paper, sweep.table, cost) for _, r in summ[summ["group"] == g].iterrows()]
    rows += [_floor_rows(f, lab) for (_, f), lab in zip(floors.iterrows(), labels)
             if f["group"] == g]
  cols = COLUMNS + (PAPER_COLUMNS if paper else [])
  if any(d.get(SFID_COLUMN) for d, _ in rows):
    cols.insert(cols.index("KID eval ×10³") + 1, SFID_COLUMN)
  if any(d.get(CONTENT_COLUMNS[0]) for d, _ in rows):
    at = cols.index(SFID_COLUMN if SFID_COLUMN in cols else "KID eval ×10³") + 1
    cols[at:at] = list(CONTENT_COLUMNS)
  if any(d.get(ORACLE_COLUMNS[0]) or d.get(ORACLE_COLUMNS[1]) for d, _ in rows):
    at = cols.index("IS")
    cols[at:at] = list(ORACLE_COLUMNS)
  if any(d.get(BPD_COLUMN) for d, _ in rows):
    cols.insert(cols.index("IS"), BPD_COLUMN)
  display = pd.DataFrame([d for d, _ in rows], columns=cols).fillna("")
  display["group"] = display["group"].map(lambda g: group_label(sweep, g))
  numbers = pd.DataFrame([x for _, x in rows])
  for c in numbers.columns:    # counts stay integers beside the floor rows' blanks
    if c in ("seeds", "runs") or c.endswith("_n") or c in FLOOR_COUNTS:
      numbers[c] = numbers[c].astype("Int64")
  notes = _notes(sweep, summ, paper, cost, floors, labels)
  title = f"{sweep.title} — {sweep.name}"
  if sweep.tier:
    title += f" (tier {sweep.tier})"
  paired, pnum = paired_table(sweep)
  return Table(sweep, title, display, numbers, notes, paper, paired, pnum)


# the paired differences' columns: (header, metric, scale, decimals)
PAIRED_CELLS = (("Δ FID eval", "fid_eval", 1.0, 1), ("Δ FID @content", "fid_content", 1.0, 1),
                ("Δ class acc (points)", "class_acc", 100.0, 1),
                ("Δ oracle FD", "oracle_fd", 1.0, 2), ("Δ bits/dim eval", "bpd_eval", 1.0, 2))


def paired_table(sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
  """(display, numbers) of each arm minus its group's reference arm, paired by seed
  (analysis.results.paired_summary): mean ± 95% t half-width over the seeds both have; only
  the metrics some run reports, only arms with a pair."""
  ps = paired_summary(sweep)
  if not len(ps):
    return pd.DataFrame(), pd.DataFrame()
  cells = [c for c in PAIRED_CELLS if ps[f"d_{c[1]}_n"].max() > 0]
  ps = ps[sum(ps[f"d_{c[1]}_n"] for c in cells) > 0] if cells else ps.iloc[:0]
  if not len(ps):
    return pd.DataFrame(), pd.DataFrame()
  disp = pd.DataFrame({
      "group": [group_label(sweep, g) for g in ps["group"]],
      "arm − reference": [f"{a} − {r}" for a, r in zip(ps["arm"], ps["reference"])],
      **{h: [_fmt(m * sc, c * sc, p) for m, c in zip(ps[f"d_{k}"], ps[f"d_{k}_ci95"])]
         for h, k, sc, p in cells},
      "pairs": [str(int(max(ps.loc[i, f"d_{k}_n"] for _, k, _, _ in cells)))
                for i in ps.index]}).fillna("")
  return disp, ps


def _interval(r, k) -> Optional[tuple[float, float]]:
  m, h = r[k], r[f"{k}_ci95"]
  return (m - h, m + h) if finite(m) and finite(h) else None


def overlap_text(arm_a: str, ia, arm_b: str, ib, metric: str) -> str:
  if max(ia[0], ib[0]) <= min(ia[1], ib[1]):
    return f"{metric} intervals overlap"
  return f"{metric} intervals do not overlap ({arm_a if ia[1] < ib[0] else arm_b} lower)"


def overlap_notes(summ: pd.DataFrame) -> list[str]:
  """Per group, whether the 95% intervals of FID eval, KID eval and (where runs report it)
  bits/dim eval of two arms overlap: every
  pair of arms with intervals (later arm named first), or each against the group's first such
  arm where more than PAIRWISE_MAX have them. Groups without two such arms share one note."""
  notes, none = [], []
  for g in dict.fromkeys(summ["group"]):
    arms = [r for _, r in summ[summ["group"] == g].iterrows()
            if any(_interval(r, k) for k, _ in OVERLAP)]
    if len(arms) < 2:
      none.append(g)
      continue
    pairs = (itertools.combinations(range(len(arms)), 2) if len(arms) <= PAIRWISE_MAX
             else ((0, j) for j in range(1, len(arms))))
    for i, j in pairs:
      a, b = arms[j], arms[i]
      parts = [overlap_text(a["arm"], _interval(a, k), b["arm"], _interval(b, k), name)
               for k, name in OVERLAP if _interval(a, k) and _interval(b, k)]
      if parts:
        notes.append(f"{g + ': ' if g else ''}{a['arm']} vs {b['arm']}: {'; '.join(parts)}.")
  if notes:
    bpd = " (and of bits/dim eval, where runs report it)" if summ["bpd_eval"].map(
        finite).any() else ""
    notes.insert(0, f"95% intervals of FID eval and KID eval{bpd} compared within each group "
                 "(pairwise, or each arm against the group's first where more than "
                 f"{PAIRWISE_MAX} arms have intervals): disjoint intervals are a sign of a real "
                 "difference, overlapping ones do not rule one out.")
  if none:
    where = f"{', '.join(g for g in none if g)}: " if any(none) else ""
    notes.append(f"{where}fewer than two arms with several seeds, so no 95% intervals exist "
                 "to compare.")
  return notes


def _seeds_text(summ: pd.DataFrame) -> str:
  ns = sorted(set(int(n) for n in summ["seeds"] if n > 0))
  return f"n={ns[0]} seeds" if len(ns) == 1 else f"each arm's seeds, n={ns[0]} to {ns[-1]}"


def _notes(sweep: Sweep, summ: pd.DataFrame, paper: bool, cost: Optional[dict] = None,
           floors: Optional[pd.DataFrame] = None, labels: Optional[list] = None) -> list[str]:
  notes = []
  if len(summ) == 0:
    notes.append("sweep.json lists no runs.")
    return notes
  if (summ["seeds"] > 1).any():
    what = "FID, KID, bits/dim and IS" if summ["bpd_eval"].map(finite).any() else \
        "FID, KID and IS"
    if summ["class_acc"].map(finite).any():
      what = what.replace(" and IS", ", class acc, oracle FD and IS")
    notes.append(f"± on {what}: half-width of the 95% confidence interval of the mean "
                 f"over seeds ({_seeds_text(summ)}), Student's t: t(0.975, n-1) * s / sqrt(n), "
                 "s the sample std (ddof=1); no ± where an arm has n=1.")
  elif (summ["seeds"] == 1).any():
    notes.append("One seed per arm (n=1): no confidence intervals, so FID and KID carry no ±.")
  if ((summ["seeds"] == 1) & summ["is_split_std"].map(finite)).any():
    notes.append("One seed: IS ± is the standard deviation over Inception-score splits.")
  if summ[["kid_train", "kid_eval"]].map(finite).any().any():
    notes.append("KID: unbiased squared MMD of Inception features, cubic kernel (torch-fidelity's "
                 "definition), shown ×10³ (the CSV holds it unscaled); blank where a run's "
                 "eval.json has none.")
  elif (summ["seeds"] > 0).any():
    notes.append("KID: no finished run reports KID (older eval.json files), so its columns are "
                 "blank.")
  if summ["sfid_eval"].map(finite).any():
    notes.append("sFID: FID of the Inception's spatial features (mixed_6/conv, first 7 channels, "
                 "17x17x7 = 2023 values), as the ADM evaluator computes it.")
  if summ["bpd_eval"].map(finite).any():
    notes.append(f"bits/dim eval: the variational bound on -log p(x) (VDM) over held-out "
                 f"images of the eval split, in bits per dimension ({bound_text(sweep)}); "
                 "lower is better; the same for every arm whatever its training schedule.")
    if (summ["bpd_eval"] > 8).any():
      notes.append("bits/dim above 8: worse than a uniform distribution over the 256 values of "
                   "each dimension. Such a bound is dominated by the denoiser's error at low "
                   "noise (the e^logSNR-weighted end of the bound, which an x-prediction model "
                   "trained with the x-MSE barely learns), not by what FID sees; it ranks those "
                   "models' low-noise fit, not their samples. A model that learns that end reads "
                   "far lower: v prediction with eps-MSE, 16 px, 750 steps of the cpu tier, "
                   "3.63 ± 0.03 bits/dim (results/reference/cpu_tier_study.md).")
  if summ["fid_content"].map(finite).any():
    res = sorted({f"{x:.0f}" for x in sweep.runs.get("content_resolution", pd.Series(
        dtype=float)) if finite(x)})
    notes.append(f"@content: FID and KID eval of the samples box-downsampled to the data's content "
                 f"resolution ({', '.join(res)} px; data.content_resolution), against the eval "
                 "split downsampled alike, so models at every resolution are compared on the same "
                 "content; a run made at its content resolution repeats its own FID and KID.")
  if summ[["class_acc", "oracle_fd"]].map(finite).any().any():
    notes.append(oracle_note(sweep))
  ref = sweep.reference
  if cost is not None:
    notes.append(f"speed: measured training-step img/s from {cost_path(sweep)} (python -m "
                 f"analysis.cost), relative to {cost['reference'] or 'the first arm of each group'}"
                 " (= 100%); blank where that report only compiled the step.")
  else:
    refs = summ[summ["is_reference"]]
    who = (f"the arm {refs.iloc[0]['arm']} @ {refs.iloc[0]['group']}" if len(refs) else
           "the first arm of each group")
    if len(refs) and refs.iloc[0]["seeds"] == 0:
      notes.append(f"speed: the reference arm ({who}) has no finished run yet.")
    else:
      notes.append(f"speed: training images per second relative to {who} (= 100%), "
                   "each the mean over its finished seeds.")
  notes.append("seeds: finished runs (state done, with eval.json) that the numbers average.")
  drawn = sorted({str(x) for x in sweep.runs.get("sampler", pd.Series(dtype=object)).dropna()})
  if len(drawn) == 1:
    notes.append(f"samples drawn with {drawn[0]} (every run's eval.json).")
  elif drawn:
    notes.append("samples drawn with different samplers: " + "; ".join(drawn) + ".")
  if summ["minutes"].map(finite).any():
    notes.append("min/run: wall minutes of a run, training (this process's part, compiling "
                 "included) plus evaluation (sampling, Inception, reference statistics the first "
                 "time, metrics), the mean over seeds.")
  if floors is not None and len(floors):
    notes.append("data floor: the same metrics for real images drawn afresh at the runs' sample "
                 "count n and resolution (eval.json \"floor\"): what a perfect model would score.")
    for (_, f), lab in zip(floors.iterrows(), labels or []):
      if f["distinct"] > 1:
        notes.append(f"{f['group'] + ': ' if f['group'] else ''}the runs' {lab} entries differ "
                     f"({f['distinct']} different in {f['runs']} runs); the row shows their mean.")
  notes += overlap_notes(summ)
  if paper:
    if sweep.table in paper_numbers.TABLES:
      notes.append(f"paper: Hoogeboom, Heek, Salimans (2023), table {sweep.table}, as "
                   "transcribed in docs/paper.md §3; blank where the paper has no such number.")
    else:
      notes.append(f"paper: the paper has no table {sweep.table!r}; paper columns are blank.")
  return notes


def oracle_note(sweep: Sweep) -> str:
  """What the oracle's columns are, the oracle's own held-out accuracy, and what the runs'
  sample count buys (the binomial interval at 50%)."""
  held, res = set(), set()
  for d in sweep.runs["dir"]:
    o = (read_json(os.path.join(d, "eval.json")) or {}).get("oracle")
    if isinstance(o, dict):
      if finite(o.get("held_out_accuracy")):
        held.add(round(100 * o["held_out_accuracy"], 1))
      res.add(o.get("resolution"))
  nums = sorted({int(x) for x in sweep.runs["oracle_num"] if finite(x)})
  n = ", ".join(map(str, nums)) or "?"
  half = f"±{196 * math.sqrt(0.25 / nums[0]):.1f} points" if nums else "?"
  acc = "/".join(f"{h:.1f}%" for h in sorted(held)) or "?"
  at = "/".join(f"{r} px" for r in sorted(r for r in res if r)) or "?"
  return (f"class acc and oracle FD: this toolkit's metrics, not the paper's (core.metrics.oracle). An "
          f"oracle network trained on real renders of the procedural data reads each sample "
          f"box-downsampled to {at}: class acc is how often the kind it reads is the class the "
          f"sample was asked for (the floor row: real images of the eval split read alike, the "
          f"metric's ceiling; the oracle's held-out accuracy on 10,000 test renders: {acc}); "
          f"oracle FD is the Fréchet distance of its 128 features to as many real eval-split "
          f"images (floor: train-split images against those). n={n} samples a run "
          f"(eval.oracle_num): a single run's binomial 95% interval at 50% accuracy is {half}.")


def bound_text(sweep: Sweep) -> str:
  """How the runs' bound was computed (eval.json "bound"): schedule, end points, times, and
  the images' count, e.g. 'linear evaluation schedule on logSNR [-12, 10], 8 times per image,
  256 images'; the settings of the first run that has them, or of each where they differ."""
  seen = []
  for d in sweep.runs["dir"]:
    b = (read_json(os.path.join(d, "eval.json")) or {}).get("bound")
    if isinstance(b, dict) and "schedule" in b:
      num = (b.get("eval") or {}).get("num")
      t = (f"{b['schedule']} evaluation schedule on logSNR [{b.get('logsnr_min'):g}, "
           f"{b.get('logsnr_max'):g}], {b.get('times')} times per image"
           + (f", {num} images" if num else ""))
      if t not in seen:
        seen.append(t)
  return "; ".join(seen) or "settings not recorded"


# --- writers ----------------------------------------------------------------------------

def _md_cell(s) -> str:
  return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(t: Table) -> str:
  df = t.display
  cols = list(df.columns)
  right = {c for c in cols if c not in ("group", "arm", "state")}
  lines = [f"### {t.title}", ""]
  if len(df) == 0:
    lines.append("_No runs._")
  else:
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---:" if c in right else ":---" for c in cols) + "|")
    for _, r in df.iterrows():
      lines.append("| " + " | ".join(_md_cell(r[c]) for c in cols) + " |")
  lines.append("")
  lines += [f"- {n}" for n in t.notes]
  if len(t.paired):
    p = t.paired
    cols = list(p.columns)
    lines += ["", f"#### Paired by seed: each arm minus its group's reference arm", "",
              "| " + " | ".join(cols) + " |",
              "|" + "|".join(":---" if c in ("group", "arm − reference") else "---:"
                             for c in cols) + "|"]
    lines += ["| " + " | ".join(_md_cell(r[c]) for c in cols) + " |" for _, r in p.iterrows()]
    lines += ["", "- Paired: the runs of one seed draw from the same noise and labels (common "
              "random numbers, core.runtime.generate.sample_key), so each seed gives one difference; "
              "± is the 95% t half-width over those differences. An interval that excludes 0 "
              "is a difference the seeds agree on; the unpaired means and their intervals are "
              "in the table above."]
  return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(s) -> str:
  s = "".join(_TEX.get(ch, ch) for ch in str(s))
  for a, b in (("±", r"$\pm$"), ("—", "---"), ("<=", r"$\le$"), ("≤", r"$\le$"),
               ("×", r"$\times$"), ("³", r"$^3$"), ("η", r"$\eta$"), ("→", r"$\to$")):
    s = s.replace(a, b)
  return s


def _label(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9:_-]+", "-", name)   # \label takes _ but not spaces or braces


def to_latex(t: Table) -> str:
  df = t.display
  cols = list(df.columns)
  spec = "".join("l" if c in ("group", "arm", "state") else "r" for c in cols)
  out = [r"% generated by python -m analysis.make_tables; needs \usepackage{booktabs}",
         r"\begin{table}[t]", r"\centering", r"\small",
         rf"\caption{{{_tex(t.title)}}}", rf"\label{{tab:{_label(t.sweep.name)}}}",
         rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
         " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
  prev = None
  for _, r in df.iterrows():
    if prev is not None and r["group"] != prev:
      out.append(r"\midrule")
    prev = r["group"]
    out.append(" & ".join(_tex(r[c]) for c in cols) + r" \\")
  out += [r"\bottomrule", r"\end{tabular}"]
  if t.notes:
    out.append(r"\par\smallskip\footnotesize")
    out.append(" ".join(_tex(n) for n in t.notes))
  out.append(r"\end{table}")
  return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
  return t.numbers.to_csv(index=False)


def write_table(t: Table, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for ext, fn in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
    p = os.path.join(out_dir, f"{t.sweep.name}.{ext}")
    write_text_atomic(p, fn(t))
    paths.append(p)
  if len(t.paired_numbers):   # the paired differences' numbers (paired_table)
    p = os.path.join(out_dir, f"{t.sweep.name}_paired.csv")
    write_text_atomic(p, t.paired_numbers.to_csv(index=False))
    paths.append(p)
  return paths


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m analysis.make_tables",
                               description="Paper-style tables of every sweep in a results folder.")
  ap.add_argument("results", nargs="?", default="results", help="results folder (default results/)")
  ap.add_argument("--out", default=None, help="output folder (default RESULTS/tables)")
  g = ap.add_mutually_exclusive_group()
  g.add_argument("--with-paper", dest="with_paper", action="store_true", default=None,
                 help="add the paper's numbers at any tier (default: only at tier paper)")
  g.add_argument("--no-paper", dest="with_paper", action="store_false")
  ap.add_argument("--quiet", action="store_true", help="do not print the tables")
  ap.add_argument("--scorecard", action="store_true",
                  help="write RESULTS/SCORECARD.md instead: one row per paper table from the "
                  "committed cpu-tier studies <sweep>_cpu/ (analysis.scorecard)")
  args = ap.parse_args(argv)
  if args.scorecard:
    if not os.path.isdir(args.results):
      print(f"error: results folder {args.results!r} does not exist; pass the folder that "
            "holds the committed studies (results/reference)", file=sys.stderr)
      return 2
    from analysis.scorecard import write_scorecard
    path, md = write_scorecard(args.results)
    if not args.quiet:
      print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0
  sweeps, skipped, err = readable_results(args.results)
  if err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  for m in skipped:
    print(f"warning: {m}", file=sys.stderr)
  if not sweeps:
    print(f"no sweeps in {args.results!r} (no sub-folder holds a sweep.json); no tables written")
    return 0
  out = args.out or os.path.join(args.results, "tables")
  err = make_out_dir(out)
  if err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  for s in sweeps:
    t = build_table(s, args.with_paper)
    paths = write_table(t, out)
    if not args.quiet:
      print(to_markdown(t))
    print(f"wrote {', '.join(paths)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
