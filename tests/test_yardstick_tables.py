"""The oracle's columns, the paired differences and the learning-curve figure, on a synthetic
results folder (docs/results_layout.md) whose numbers the test knows."""
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from analysis import make_figures, make_tables
from analysis.results import load_sweep, paired_summary

ARMS = (("64", "cosine"), ("64", "shift 32"), ("256", "cosine"), ("256", "shift 64"))


def _acc(g, a, seed):
  # per-arm level plus a seed effect shared by the arms of one seed (what pairing removes)
  return 0.3 + 0.1 * ARMS.index((g, a)) + 0.05 * seed


def _write(tmp_path, seeds_of=lambda g, a: (0, 1, 2)):
  root = tmp_path / "results"
  sdir = root / "noise_shift_cpu"
  runs = []
  for g, a in ARMS:
    for s in seeds_of(g, a):
      rid = f"{g}-{a.replace(' ', '-')}-s{s}"
      runs.append({"run_id": rid, "arm": a, "group": g, "seed": s})
      d = sdir / rid
      os.makedirs(d / "model")
      (d / "status.json").write_text(json.dumps({"state": "done"}))
      acc = _acc(g, a, s)
      ev = {"fid_eval": 100 + 10 * ARMS.index((g, a)) + 7 * s, "num_samples": 256,
            "steps": 750, "step": 750, "resolution": int(g) // 4,
            "floor": {"num": 256, "resolution": int(g) // 4, "fid_eval": 45.0},
            "model_dirs": ["model"],
            "oracle": {"num": 2048, "resolution": 16, "held_out_accuracy": 0.886,
                       "class_acc": acc, "fd_eval": 50 * (1 - acc),
                       "floor": {"num": 2048, "class_acc": 0.85, "fd_eval": 0.4}}}
      (d / "eval.json").write_text(json.dumps(ev))
      with open(d / "model" / "curve.jsonl", "w") as f:
        for step in (250, 500, 750):
          f.write(json.dumps({"step": step, "class_acc": acc * step / 750,
                              "fd_eval": 50 * (1 - acc * step / 750),
                              "floor_class_acc": 0.85, "floor_fd_eval": 0.4}) + "\n")
  (sdir / "sweep.json").write_text(json.dumps({
      "sweep": "noise_shift", "tier": "cpu", "table": "2", "title": "Noise schedule",
      "reference": None, "runs": runs}))
  return root, sdir


def test_oracle_columns_and_floor(tmp_path):
  root, sdir = _write(tmp_path)
  t = make_tables.build_table(load_sweep(str(sdir)))
  cols = list(t.display.columns)
  assert "class acc %" in cols and "oracle FD" in cols
  row = t.display[(t.display["arm"] == "shift 32")].iloc[0]
  accs = [100 * _acc("64", "shift 32", s) for s in range(3)]
  half = scipy.stats.t.ppf(0.975, 2) * np.std(accs, ddof=1) / math.sqrt(3)
  assert row["class acc %"] == f"{np.mean(accs):.2f} ± {half:.2f}"
  floor = t.display[t.display["state"] == "real data"].iloc[0]
  assert floor["class acc %"] == "85.00" and floor["oracle FD"] == "0.40"
  md = make_tables.to_markdown(t)
  assert "88.6%" in md and "n=2048" in md and "±2.2 points" in md


def test_paired_differences_pair_by_seed(tmp_path):
  # the reference arm lacks seed 1: only seeds 0 and 2 pair
  root, sdir = _write(tmp_path, lambda g, a: (0, 2) if a == "cosine" else (0, 1, 2))
  ps = paired_summary(load_sweep(str(sdir)))
  r = ps[(ps["group"] == "64") & (ps["arm"] == "shift 32")].iloc[0]
  assert r["reference"] == "cosine" and r["d_class_acc_n"] == 2
  # the seed effect cancels: every pair differs by exactly 0.1, so the interval is zero
  assert r["d_class_acc"] == pytest.approx(0.1) and r["d_class_acc_ci95"] == pytest.approx(0)
  assert r["d_fid_eval"] == pytest.approx(10.0)
  t = make_tables.build_table(load_sweep(str(sdir)))
  md = make_tables.to_markdown(t)
  assert "Paired by seed" in md and "shift 32 − cosine" in md
  assert len(t.paired_numbers) == 2 and "d_class_acc_ci95" in t.paired_numbers


def test_curve_figure_draws_each_arm_with_its_band(tmp_path):
  root, sdir = _write(tmp_path)
  s = load_sweep(str(sdir))
  df = make_figures.curve_lines(s)
  assert len(df) == 4 * 3 * 3 and set(df["step"]) == {250, 500, 750}
  fig = make_figures.curve_figure(s)
  ax = fig.axes[0]
  lines = [l for l in ax.get_lines() if l.get_label().startswith("cosine")]
  x, y = lines[0].get_data()
  assert list(x) == [250, 500, 750]
  assert y[-1] == pytest.approx(100 * np.mean([_acc("64", "cosine", k) for k in range(3)]))
  assert ax.collections, "no seed band"


def test_scorecard_rows_come_from_the_committed_studies(tmp_path):
  """Table 2's row reads the paired difference of the study folder <sweep>_cpu; the others say
  "no study yet"; the file is rebuilt byte for byte; the verdict follows the interval."""
  from analysis import scorecard
  root, sdir = _write(tmp_path)       # results/noise_shift_cpu: groups 64 and 256
  path, md = scorecard.write_scorecard(str(root))
  rows = {r["table"]: r for r in scorecard.scorecard_rows(str(root))}
  # 256: shift 64 - cosine, every seed +10 FID eval (no @content in these runs)
  assert rows["2"]["toolkit"] == "shift 64 − cosine: +10.0 ± 0.0 FID eval"
  assert rows["2"]["verdict"] == "disagree" and rows["2"]["seeds"] == "3"
  assert rows["2"]["study"] == "noise_shift_cpu"
  assert all(rows[t]["verdict"] == "no study yet" for t in ("3", "4", "5", "6", "7", "9", "CDM"))
  first = open(path, "rb").read()
  scorecard.write_scorecard(str(root))
  assert open(path, "rb").read() == first
  assert scorecard.verdict(-3.0, 2.0, 3) == "agree"
  assert scorecard.verdict(3.0, 2.0, 3) == "disagree"
  assert scorecard.verdict(1.0, 2.0, 3) == "undecided"
  assert scorecard.verdict(-3.0, float("nan"), 1).startswith("undecided")
