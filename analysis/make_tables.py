"""python -m analysis.make_tables RESULTS [--out DIR] [--with-paper | --no-paper] [--quiet]

One paper-style table per sweep folder under RESULTS (a folder holding a sweep.json; other
folders are ignored): rows are the arms in sweep.json order, grouped by `group`; columns FID
train, FID eval, IS, relative training speed, parameters, finished seeds and state. Arms with
no finished run show their state ("running", "failed: <error>", "killed: ...", "missing",
"pending") instead of numbers. At tier "paper" (or with --with-paper) the paper's numbers
stand beside ours.

Writes <sweep>.md, <sweep>.tex (booktabs) and <sweep>.csv (numbers, not formatted) into
RESULTS/tables/ (or --out) and prints the Markdown. A RESULTS folder without any sweep prints
a one-line note and exits 0 (there is nothing to tabulate yet); a RESULTS path that does not
exist is an error (exit 2).

Relative training speed: where RESULTS/cost/<sweep>.json exists (python -m analysis.cost), its
measured step speeds, taken under the same conditions for every arm, replace the runs' own
img/s (which include data loading and may come from different machines).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Optional

import pandas as pd

from analysis import paper_numbers
from analysis.results import Sweep, arm_summary, finite, human_count, load_results
from core.runio import read_json, write_text_atomic

COLUMNS = ["group", "arm", "FID train", "FID eval", "IS", "speed", "params", "seeds", "state"]
PAPER_COLUMNS = ["paper FID train", "paper FID eval", "paper IS", "paper speed"]


@dataclasses.dataclass
class Table:
  sweep: Sweep
  title: str
  display: pd.DataFrame        # formatted cells, the paper's layout
  numbers: pd.DataFrame        # the same rows as numbers (the CSV)
  notes: list[str]
  with_paper: bool


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


def build_table(sweep: Sweep, with_paper: Optional[bool] = None) -> Table:
  summ = arm_summary(sweep)
  paper = wants_paper(sweep, with_paper)
  cost = cost_speeds(sweep)
  if cost is not None:  # the cost file's measured speeds, for every arm whether trained or not
    summ["speed"] = [cost["speeds"].get((g, a), math.nan)
                     for g, a in zip(summ["group"], summ["arm"])]
  disp, nums = [], []
  for _, r in summ.iterrows():
    n = r["seeds"]
    spread = (lambda k: r[f"{k}_std"]) if n > 1 else (lambda k: math.nan)
    is_pm = r["is_mean_std"] if n > 1 else r["is_split_std"]
    d = {"group": r["group"], "arm": r["arm"],
         "FID train": _fmt(r["fid_train"], spread("fid_train")),
         "FID eval": _fmt(r["fid_eval"], spread("fid_eval")),
         "IS": _fmt(r["is_mean"], is_pm),
         "speed": _pct(r["speed"]) if n or cost is not None else "",
         "params": human_count(r["params"]), "seeds": str(n), "state": r["state"]}
    x = {k: r[k] for k in ("group", "arm", "state", "seeds", "runs", "fid_train",
                           "fid_train_std", "fid_eval", "fid_eval_std", "is_mean",
                           "is_mean_std", "is_split_std", "params", "train_img_per_s")}
    x["speed_pct"] = r["speed"]
    if paper:
      p = paper_numbers.lookup(sweep.table, r["group"], r["arm"]) or {}
      d["paper FID train"] = _fmt(p.get("fid_train", math.nan))
      d["paper FID eval"] = _fmt(p.get("fid_eval", math.nan))
      d["paper IS"] = _fmt(p.get("is_mean", math.nan), p.get("is_std", math.nan))
      d["paper speed"] = _pct(p.get("speed", math.nan))
      for k in ("fid_train", "fid_eval", "is_mean", "is_std", "speed"):
        x[f"paper_{k}"] = p.get(k, math.nan)
    disp.append(d)
    nums.append(x)
  cols = COLUMNS + (PAPER_COLUMNS if paper else [])
  display = pd.DataFrame(disp, columns=cols)
  numbers = pd.DataFrame(nums)
  notes = _notes(sweep, summ, paper, cost)
  title = f"{sweep.title} — {sweep.name}"
  if sweep.tier:
    title += f" (tier {sweep.tier})"
  return Table(sweep, title, display, numbers, notes, paper)


def _notes(sweep: Sweep, summ: pd.DataFrame, paper: bool,
           cost: Optional[dict] = None) -> list[str]:
  notes = []
  if len(summ) == 0:
    notes.append("sweep.json lists no runs.")
    return notes
  if (summ["seeds"] > 1).any():
    notes.append("Several seeds: FID and IS are mean ± sample standard deviation (ddof=1) "
                 "across the finished seeds of the arm (not a confidence interval).")
  if ((summ["seeds"] == 1) & summ["is_split_std"].map(finite)).any():
    notes.append("One seed: IS ± is the standard deviation over Inception-score splits.")
  ref = sweep.reference
  if cost is not None:
    notes.append(f"speed: measured training-step img/s from {cost_path(sweep)} (python -m "
                 f"analysis.cost), relative to {cost['reference'] or 'the first arm of each group'}"
                 " (= 100%); blank where that report only compiled the step.")
  elif ref is None:
    notes.append("speed: no reference run in sweep.json, so relative speed is left blank.")
  else:
    refs = summ[summ["is_reference"]]
    who = f"{refs.iloc[0]['arm']} @ {refs.iloc[0]['group']}" if len(refs) else ref
    if len(refs) and refs.iloc[0]["seeds"] == 0:
      notes.append(f"speed: the reference arm ({who}) has no finished run yet.")
    else:
      notes.append(f"speed: training images per second relative to the arm {who} (= 100%), "
                   "each the mean over its finished seeds.")
  notes.append("seeds: finished runs (state done, with eval.json) that the numbers average.")
  if paper:
    if sweep.table in paper_numbers.TABLES:
      notes.append(f"paper: Hoogeboom, Heek, Salimans (2023), table {sweep.table}, as "
                   "transcribed in SPEC section 3; blank where the paper has no such number.")
    else:
      notes.append(f"paper: the paper has no table {sweep.table!r}; paper columns are blank.")
  return notes


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
  return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(s) -> str:
  s = "".join(_TEX.get(ch, ch) for ch in str(s))
  for a, b in (("±", r"$\pm$"), ("—", "---"), ("<=", r"$\le$"), ("≤", r"$\le$"),
               ("×", r"$\times$"), ("η", r"$\eta$"), ("→", r"$\to$")):
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
  args = ap.parse_args(argv)
  if not os.path.isdir(args.results):
    print(f"error: results folder {args.results!r} does not exist", file=sys.stderr)
    return 2
  warn = lambda m: print(f"warning: {m}", file=sys.stderr)
  sweeps = load_results(args.results, warn=warn)
  if not sweeps:
    print(f"no sweeps in {args.results!r} (no sub-folder holds a sweep.json); no tables written")
    return 0
  out = args.out or os.path.join(args.results, "tables")
  for s in sweeps:
    t = build_table(s, args.with_paper)
    paths = write_table(t, out)
    if not args.quiet:
      print(to_markdown(t))
    print(f"wrote {', '.join(paths)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
