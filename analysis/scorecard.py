"""What reproduces: one row per paper table (analysis.paper_numbers.CLAIMS), built from the
committed reference studies, never by hand.

    python -m analysis.make_tables results/reference --scorecard   ->  results/reference/SCORECARD.md

A table's study is the folder <root>/<sweep>_cpu/ (its sweep.json there or in its sweep/
sub-folder), the cpu tier's reference study of the sweep file that reproduces the table. Its
row: the paper's finding and numbers, this toolkit's paired difference (arm minus reference,
paired by seed, analysis.results.paired_summary) with its 95% interval, the verdict (agree:
the interval lies on the paper's side of 0; disagree: on the other side; undecided: it holds
0, or fewer than two seeds pair), the seeds, the command that made it (sweep.json "commands",
else the file and tier it records) and its minutes (training and evaluation of every run, on
the machine that ran it). A table with no such folder reads "no study yet". The output has no
time stamp, so the same folders give the same file, byte for byte.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import pandas as pd

from analysis.paper_numbers import CLAIMS
from analysis.results import finite, load_sweep, paired_summary

SCORECARD = "SCORECARD.md"
TIER = "cpu"


def study_folder(root: str, sweep: str) -> Optional[str]:
  """The committed study of a sweep at the cpu tier: <root>/<sweep>_cpu[/sweep]."""
  base = os.path.join(root, f"{sweep}_{TIER}")
  for d in (base, os.path.join(base, "sweep")):
    if os.path.isfile(os.path.join(d, "sweep.json")):
      return d
  return None


def claim_metric(sweep, metric: str) -> str:
  """'fid': FID eval @content where the study's runs report it, else FID eval."""
  if metric != "fid":
    return metric
  return "fid_content" if sweep.runs["fid_content"].map(finite).any() else "fid_eval"


def verdict(d: float, half: float, n: int) -> str:
  """Lower is better: the paired difference arm - reference and its 95% half-width."""
  if n < 2 or not finite(d) or not finite(half):
    return "undecided (fewer than two paired seeds)"
  if d + half < 0:
    return "agree"
  if d - half > 0:
    return "disagree"
  return "undecided"


def command_text(sweep) -> str:
  cmds = sweep.meta.get("commands")
  if isinstance(cmds, list) and cmds:
    return "; ".join(str(c) for c in cmds)
  seeds = int(sweep.runs["seed"].nunique()) if len(sweep.runs) else 1
  return (f"python -m sweeps.run {sweep.meta.get('file', '?')} tier={sweep.tier}"
          + (f" seeds={seeds}" if seeds > 1 else ""))


def study_minutes(sweep) -> float:
  runs = sweep.runs[sweep.runs["has_eval"]]
  t = pd.to_numeric(runs["train_time_s"], errors="coerce").fillna(0) + \
      pd.to_numeric(runs["eval_time_s"], errors="coerce").fillna(0)
  return float(t.sum() / 60.0)


def scorecard_rows(root: str) -> list[dict]:
  rows = []
  for c in CLAIMS:
    row = {"table": c["row"], "finding": c["finding"], "paper": c["paper"],
           "toolkit": "", "verdict": "no study yet", "seeds": "", "command": "",
           "minutes": "", "study": ""}
    folder = study_folder(root, c["sweep"])
    if folder is not None:
      s = load_sweep(folder)
      m = claim_metric(s, c["metric"])
      ps = paired_summary(s, metrics=(m,))
      hit = ps[(ps["group"] == c["group"]) & (ps["arm"] == c["arm"])]
      name = {"fid_content": "FID eval @content", "fid_eval": "FID eval",
              "fid_train": "FID train"}.get(m, m)
      if len(hit) and hit.iloc[0]["reference"] == c["reference"]:
        h = hit.iloc[0]
        d, half, n = h[f"d_{m}"], h[f"d_{m}_ci95"], int(h[f"d_{m}_n"])
        row["toolkit"] = (f"{c['arm']} − {c['reference']}: {d:+.1f}"
                          + (f" ± {half:.1f}" if finite(half) else "") + f" {name}")
        row["verdict"] = verdict(d, half, n)
        row["seeds"] = str(n)
      else:
        row["toolkit"] = f"no paired runs of {c['arm']} and {c['reference']} in {c['group']}"
        row["verdict"] = "undecided"
      row["command"] = f"`{command_text(s)}`"
      row["minutes"] = f"{study_minutes(s):.0f}"
      row["study"] = os.path.relpath(folder, root)
    rows.append(row)
  return rows


HEADER = ("| table | the paper's finding | paper (FID eval unless named) | this toolkit, tier "
          "cpu (paired, mean ± 95%) | verdict | seeds | command | minutes | study |")


def to_markdown(rows: list[dict]) -> str:
  out = ["# Scorecard: which of the paper's findings this toolkit reproduces", "",
         "Built by `python -m analysis.make_tables results/reference --scorecard` from the "
         "committed studies (analysis/scorecard.py; the findings: analysis/paper_numbers.py "
         "CLAIMS). Each finding is one paired comparison, arm minus reference, lower is "
         "better: agree where the 95% interval over seeds lies below 0, disagree where it "
         "lies above, undecided where it holds 0. Minutes: training and evaluation of every "
         "run of the study, summed, on the machine that ran it.", "", HEADER,
         "|:---|:---|:---|:---|:---|---:|:---|---:|:---|"]
  for r in rows:
    out.append("| " + " | ".join(str(r[k]).replace("|", "\\|") for k in (
        "table", "finding", "paper", "toolkit", "verdict", "seeds", "command", "minutes",
        "study")) + " |")
  return "\n".join(out) + "\n"


def write_scorecard(root: str) -> tuple[str, str]:
  """(path, markdown) of <root>/SCORECARD.md, written."""
  from core.runio import write_text_atomic
  md = to_markdown(scorecard_rows(root))
  path = os.path.join(root, SCORECARD)
  write_text_atomic(path, md)
  return path, md
