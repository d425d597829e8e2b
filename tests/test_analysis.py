"""Tables, figures and the notebook from synthetic results folders (tests/fixtures_results.py)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import make_figures, make_tables, paper_numbers
from analysis.results import arm_summary, load_results, load_sweep, run_metrics
from core.runio import run_state
from tests.fixtures_results import (fake_floor, fake_kid, run_id, sample_std,
                                    write_fake_guidance_sweep, write_fake_sweep)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T975 = {1: 12.706204736174707, 2: 4.302652729749464}   # Student's t(0.975, df), from t tables
FLOOR_128 = ("128", "data floor (n=512)")


def _eval(sdir, rid):
  with open(os.path.join(sdir, rid, "eval.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """A results folder as a sweep leaves it midway, plus folders that are not sweeps."""
  root = str(tmp_path_factory.mktemp("results"))
  write_fake_sweep(root)                           # noise_shift_cpu, table 2
  write_fake_sweep(root, tier="paper")             # noise_shift_paper
  write_fake_guidance_sweep(root)                  # guidance_cpu, table 9
  os.makedirs(os.path.join(root, "scratch", "notes"))
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write("not a sweep\n")
  return root


# --- paper numbers ---------------------------------------------------------------------

def test_paper_numbers_labels_and_values_match_spec():
  T = paper_numbers.TABLES
  assert list(T["2"]["128"]) == ["cosine", "shift 64", "shift 32"]
  assert list(T["2"]["256"]) == ["cosine", "shift 128", "shift 64", "shift 32"]
  assert list(T["3"]["128"]) == ["none", "r=128", "r=64", "r=32", "r=16"]
  assert [v["speed"] for v in T["4"]["128"].values()] == [114, 100, 76, 62]
  assert list(T["5"]["512"]) == ["none", "DWT-1", "DWT-2", "patch 2x2", "patch 4x4"]
  assert [v["speed"] for v in T["5"]["512"].values()] == [100, 139, 146, 137, 146]
  for g in ("256", "512"):
    assert list(T["6"][g]) == ["standard", "multiscale"]
  assert list(T["7"]["128"]) == ["U-Net", "U-ViT", "CDM"]
  for g in ("128", "256", "512"):
    assert list(T["9"][g]) == ["1.00", "1.05", "1.10", "1.20", "1.40", "1.80", "2.00", "3.00"]
  assert paper_numbers.lookup("2", "128", "shift 32") == {"fid_train": 2.26, "fid_eval": 2.88}
  assert paper_numbers.lookup("5", "512", "DWT-2") == {"fid_train": 4.85, "fid_eval": 4.58,
                                                       "speed": 146}
  assert paper_numbers.lookup("7", "256", "CDM") == {"fid_train": 4.88, "fid_eval": 4.63,
                                                     "is_mean": 158.71, "is_std": 2.26}
  assert paper_numbers.lookup("6", "512", "multiscale")["is_mean"] == 171.0
  assert paper_numbers.lookup("9", "512", 3.0)["fid_eval"] == 18.42     # numeric arm
  assert paper_numbers.lookup("9", "256", "1.4")["is_mean"] == 342.2
  assert paper_numbers.lookup("2", "512", "cosine") is None
  assert paper_numbers.lookup("eq6", "512", "shift 32") is None
  assert paper_numbers.TABLE1[0]["feature_map_gb"] == 16.0
  # a returned row is a copy
  paper_numbers.lookup("2", "128", "cosine")["fid_train"] = 0
  assert T["2"]["128"]["cosine"]["fid_train"] == 2.96


# --- tables ----------------------------------------------------------------------------

def test_table_rows_states_seeds_and_speed(results):
  sdir = os.path.join(results, "noise_shift_cpu")
  t = make_tables.build_table(load_sweep(sdir))
  d = t.display
  assert list(d.columns) == make_tables.COLUMNS            # no paper columns at tier cpu
  assert "KID eval ×10³" in d.columns and "KID train ×10³" in d.columns
  arms = paper_numbers.arms_of("2")                        # 128's floor row ends its group
  assert list(zip(d["group"], d["arm"])) == arms[:3] + [FLOOR_128] + arms[3:]
  state = dict(zip(d["group"] + "/" + d["arm"], d["state"]))
  assert state["256/shift 128"] == "running"
  assert state["256/shift 64"].startswith("failed: RuntimeError: RESOURCE_EXHAUSTED")
  assert "\n" not in state["256/shift 64"] and len(state["256/shift 64"]) < 80
  assert state["256/shift 32"] == "missing"
  assert state["128/cosine"] == "done"
  # no numbers where nothing finished
  for arm in ("shift 128", "shift 64", "shift 32"):
    row = d[(d["group"] == "256") & (d["arm"] == arm)].iloc[0]
    assert row["FID train"] == row["FID eval"] == row["IS"] == row["speed"] == ""
    assert row["seeds"] == "0"
  # two seeds: mean ± the 95% t interval's half-width over seeds (df = 1)
  e0, e1 = (_eval(sdir, run_id("128", "cosine", s)) for s in (0, 1))
  cos = t.numbers.iloc[0]
  assert cos["seeds"] == 2
  for k in ("fid_train", "fid_eval", "kid_train", "kid_eval", "is_mean"):
    assert cos[k] == pytest.approx((e0[k] + e1[k]) / 2)
    assert cos[f"{k}_std"] == pytest.approx(sample_std([e0[k], e1[k]]))
    assert cos[f"{k}_ci95"] == pytest.approx(T975[1] * sample_std([e0[k], e1[k]]) / math.sqrt(2))
    assert cos[f"{k}_n"] == 2
  m, s = (e0["fid_train"] + e1["fid_train"]) / 2, sample_std([e0["fid_train"], e1["fid_train"]])
  assert d.iloc[0]["FID train"] == f"{m:.2f} ± {T975[1] * s / math.sqrt(2):.2f}"
  m, s = (e0["kid_eval"] + e1["kid_eval"]) / 2, sample_std([e0["kid_eval"], e1["kid_eval"]])
  assert d.iloc[0]["KID eval ×10³"] == f"{1e3 * m:.2f} ± {1e3 * T975[1] * s / math.sqrt(2):.2f}"
  assert any("95% confidence interval" in n and "n=1" in n for n in t.notes)
  # one seed: no ± on FID and KID
  assert d.iloc[1]["FID eval"] == f"{_eval(sdir, run_id('128', 'shift 64', 0))['fid_eval']:.2f}"
  assert d.iloc[1]["KID eval ×10³"] == f"{1e3 * fake_kid(1, 0)['kid_eval']:.2f}"
  # one seed: IS ± the split std of eval.json
  e = _eval(sdir, run_id("128", "shift 32", 0))
  assert d.iloc[2]["IS"] == f"{e['is_mean']:.2f} ± {e['is_std']:.2f}"
  assert d.iloc[2]["params"] == "3.7M"
  # relative speed: arm img/s over the reference arm's (the first, two seeds)
  ref = (e0["train_img_per_s"] + e1["train_img_per_s"]) / 2
  assert t.numbers.iloc[2]["speed_pct"] == pytest.approx(100 * e["train_img_per_s"] / ref)
  assert d.iloc[0]["speed"] == "100%"
  assert d.iloc[2]["speed"] == f"{100 * e['train_img_per_s'] / ref:.0f}%"


def test_paper_columns_only_at_tier_paper(results):
  t = make_tables.build_table(load_sweep(os.path.join(results, "noise_shift_paper")))
  d = t.display
  assert list(d.columns) == make_tables.COLUMNS + make_tables.PAPER_COLUMNS
  row = d[(d["group"] == "128") & (d["arm"] == "shift 32")].iloc[0]
  assert (row["paper FID train"], row["paper FID eval"]) == ("2.26", "2.88")
  n = t.numbers.set_index(["group", "arm"])
  for g, a in paper_numbers.arms_of("2"):
    p = paper_numbers.lookup("2", g, a)
    assert n.loc[(g, a), "paper_fid_train"] == p["fid_train"]
    assert n.loc[(g, a), "paper_fid_eval"] == p["fid_eval"]
  # the paper's numbers stand beside arms that have not finished too
  assert d.iloc[-1]["state"] == "missing" and d.iloc[-1]["paper FID train"] == "3.76"
  # forced off at tier paper, forced on at tier cpu
  off = make_tables.build_table(load_sweep(os.path.join(results, "noise_shift_paper")), False)
  assert "paper FID train" not in off.display
  on = make_tables.build_table(load_sweep(os.path.join(results, "noise_shift_cpu")), True)
  assert on.display.iloc[2]["paper FID eval"] == "2.88"


def _three_seeds(root, **kw):
  """Table 2 with three seeds of every 128 arm (fake_eval: fid_train 20 + 3k + seed, fid_eval
  22 + 2.5k + 0.6 seed; fake_kid: kid_eval 0.010 + 0.002k + 0.001 seed)."""
  arms = paper_numbers.arms_of("2")
  return write_fake_sweep(root, seeds={a: 3 for a in arms if a[0] == "128"}, **kw)


def test_three_seeds_give_the_t_interval_and_overlap_notes(tmp_path):
  t = make_tables.build_table(load_sweep(_three_seeds(str(tmp_path))))
  n = t.numbers.set_index(["group", "arm"])
  half = T975[2] / math.sqrt(3)      # sample std of (0, 1, 2) is 1
  for k, arm in enumerate(("cosine", "shift 64", "shift 32")):
    r = n.loc[("128", arm)]
    assert r["seeds"] == r["fid_train_n"] == r["kid_eval_n"] == 3
    assert r["fid_train"] == pytest.approx(21 + 3 * k) and r["fid_train_std"] == pytest.approx(1)
    assert r["fid_train_ci95"] == pytest.approx(half, rel=1e-12)
    assert r["fid_eval_ci95"] == pytest.approx(0.6 * half, rel=1e-9)
    assert r["kid_eval"] == pytest.approx(0.011 + 0.002 * k)
    assert r["kid_eval_ci95"] == pytest.approx(1e-3 * half, rel=1e-9)
  d = t.display.set_index(["group", "arm"])
  assert d.loc[("128", "cosine"), "FID train"] == "21.00 ± 2.48"
  assert d.loc[("128", "shift 32"), "FID eval"] == "27.60 ± 1.49"
  assert d.loc[("128", "shift 64"), "KID eval ×10³"] == "13.00 ± 2.48"
  assert d.loc[("256", "cosine"), "FID train"] == "29.00"          # one seed: no ±
  # min/run: (train 60 s + eval 30 + 6 seed s) / 60, the mean over seeds 0, 1, 2
  assert d.loc[("128", "cosine"), "min/run"] == "1.6" and r["minutes"] == pytest.approx(1.6)
  assert any("95% confidence interval" in x and "n=1 to 3" in x for x in t.notes)
  # FID eval: cosine [21.11, 24.09], shift 64 [23.61, 26.59], shift 32 [26.11, 29.09];
  # KID eval x 10^3: 11, 13, 15, each ± 2.48, so every pair overlaps
  ov = [x for x in t.notes if x.startswith("128: ")]
  assert ov == [
      "128: shift 64 vs cosine: FID eval intervals overlap; KID eval intervals overlap.",
      "128: shift 32 vs cosine: FID eval intervals do not overlap (cosine lower); "
      "KID eval intervals overlap.",
      "128: shift 32 vs shift 64: FID eval intervals overlap; KID eval intervals overlap."]
  assert "256: fewer than two arms with several seeds, so no 95% intervals exist to compare." \
      in t.notes
  # the rule itself: touching intervals overlap, and the lower arm is named whichever it is
  assert make_tables.overlap_text("a", (1, 2), "b", (2, 3), "X") == "X intervals overlap"
  assert make_tables.overlap_text("a", (1, 2), "b", (2.5, 3), "X").endswith("(a lower)")
  assert make_tables.overlap_text("a", (2.5, 3), "b", (1, 2), "X").endswith("(b lower)")


def test_one_seed_says_no_intervals_and_many_arms_compare_with_the_first(tmp_path):
  one = {("128", "none"): 1}        # the two-seed arm cut to one
  t = make_tables.build_table(load_sweep(write_fake_sweep(str(tmp_path), sweep="dropout",
                                                          table="3", states={}, seeds=one)))
  assert any("One seed per arm (n=1)" in x for x in t.notes)
  assert "128: fewer than two arms with several seeds, so no 95% intervals exist to compare." \
      in t.notes
  assert not any("±" in c for c in t.display["FID eval"])
  # five arms with intervals (more than PAIRWISE_MAX): each against the group's first only
  arms = paper_numbers.arms_of("3")
  assert len(arms) == 5 > make_tables.PAIRWISE_MAX
  t = make_tables.build_table(load_sweep(write_fake_sweep(
      str(tmp_path / "five"), sweep="dropout", table="3", states={}, seeds=dict.fromkeys(arms, 2))))
  ov = [x for x in t.notes if x.startswith("128: ")]
  assert [x.split(":")[1].strip() for x in ov] == [f"{a} vs none" for _, a in arms[1:]]


def test_floor_row_shows_the_floor_numbers(results, tmp_path):
  sdir = os.path.join(results, "noise_shift_cpu")
  t = make_tables.build_table(load_sweep(sdir))
  f = fake_floor("128")
  row = t.display.set_index(["group", "arm"]).loc[FLOOR_128]
  assert (row["FID train"], row["FID eval"]) == (f"{f['fid_train']:.2f}", f"{f['fid_eval']:.2f}")
  assert row["KID train ×10³"] == f"{1e3 * f['kid_train']:.2f}"
  assert row["KID eval ×10³"] == f"{1e3 * f['kid_eval']:.2f}"
  assert row["state"] == "real data" and row["seeds"] == row["IS"] == row["speed"] == ""
  x = t.numbers.set_index(["group", "arm"]).loc[FLOOR_128]
  assert x["row"] == "floor" and x["kid_eval"] == f["kid_eval"] and x["floor_num"] == 512
  assert x["floor_resolution"] == 16 and x["floor_runs"] == 4 and x["floor_distinct"] == 1
  assert x["kid_eval_subset_std"] == f["kid_eval_std"]
  assert not any("data floor" in a for a in t.display[t.display["group"] == "256"]["arm"])
  assert any(n.startswith("data floor:") for n in t.notes)
  assert not any("differ" in n for n in t.notes)
  # runs that disagree: the row is their mean, and a note says so
  sdir = write_fake_sweep(str(tmp_path))
  p = os.path.join(sdir, run_id("128", "shift 32", 0), "eval.json")
  ev = _eval(sdir, run_id("128", "shift 32", 0))
  ev["floor"]["fid_eval"] += 4.0
  with open(p, "w") as fh:
    json.dump(ev, fh)
  t = make_tables.build_table(load_sweep(sdir))
  x = t.numbers.set_index(["group", "arm"]).loc[FLOOR_128]
  assert x["fid_eval"] == pytest.approx(f["fid_eval"] + 1.0) and x["floor_distinct"] == 2
  assert "128: the runs' data floor (n=512) entries differ (2 different in 4 runs); the row " \
      "shows their mean." in t.notes


def test_eval_json_without_kid_or_floor_still_renders(tmp_path):
  """Older runs: no KID or floor keys (even arms) or null ones (odd arms)."""
  sdir = _three_seeds(str(tmp_path), new=lambda g, a, s: False, tier="paper")
  assert "kid_eval" not in _eval(sdir, run_id("128", "cosine", 0))
  assert _eval(sdir, run_id("128", "shift 64", 0))["floor"] is None
  t = make_tables.build_table(load_sweep(sdir))
  d = t.display
  assert list(d.columns) == make_tables.COLUMNS + make_tables.PAPER_COLUMNS
  assert d["KID eval ×10³"].eq("").all() and d["KID train ×10³"].eq("").all()
  assert not d["arm"].str.startswith("data floor").any()
  assert d.iloc[0]["FID train"] == "21.00 ± 2.48" and d.iloc[0]["paper FID train"] == "2.96"
  assert any("no finished run reports KID" in n for n in t.notes)
  assert not any(n.startswith("data floor") for n in t.notes)
  ov = [x for x in t.notes if x.startswith("128: ")]   # FID intervals only
  assert ov[1] == "128: shift 32 vs cosine: FID eval intervals do not overlap (cosine lower)."
  assert t.numbers["kid_eval"].isna().all() and (t.numbers["kid_eval_n"] == 0).all()
  for fn in (make_tables.to_markdown, make_tables.to_latex, make_tables.to_csv):
    assert "cosine" in fn(t)


def test_cli_writes_markdown_latex_csv_for_every_sweep(results, tmp_path, capsys):
  out = str(tmp_path / "tables")
  assert make_tables.main([results, "--out", out]) == 0
  printed = capsys.readouterr().out
  names = ["guidance_cpu", "noise_shift_cpu", "noise_shift_paper"]
  # <sweep>_paired.csv beside a sweep whose arms pair by seed
  assert sorted({os.path.splitext(f)[0].removesuffix("_paired") for f in os.listdir(out)}) \
      == names  # not scratch/
  for n in names:
    md = open(os.path.join(out, f"{n}.md")).read()
    tex = open(os.path.join(out, f"{n}.tex")).read()
    csv = pd.read_csv(os.path.join(out, f"{n}.csv"))
    assert md.split("\n")[0] in printed
    for key in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
      assert key in tex
    assert "±" not in tex and r"$\pm$" in tex
    rows = [l for l in md.split("#### Paired")[0].splitlines() if l.startswith("| ")][1:]
    assert len(rows) == len(csv)
  csv = pd.read_csv(os.path.join(out, "noise_shift_cpu.csv"))
  arms = [a for _, a in paper_numbers.arms_of("2")]
  assert list(csv["arm"]) == arms[:3] + [FLOOR_128[1]] + arms[3:]
  assert list(csv["row"]) == ["arm"] * 3 + ["floor"] + ["arm"] * 4
  assert csv.loc[0, "seeds"] == 2 and csv.loc[5, "state"] == "running"
  for c in ("fid_eval_ci95", "fid_eval_n", "kid_train", "kid_train_ci95", "kid_eval_n"):
    assert c in csv.columns
  assert csv.loc[1, "kid_eval"] == pytest.approx(fake_kid(1, 0)["kid_eval"])     # unscaled
  assert "KID eval $\\times$10$^3$" in open(os.path.join(out, "noise_shift_cpu.tex")).read()
  tex = open(os.path.join(out, "noise_shift_cpu.tex")).read()
  assert tex.count(r"\midrule") == 2                  # header rule + one between groups
  assert r"RESOURCE\_EXHAUSTED" in tex
  csv = pd.read_csv(os.path.join(out, "noise_shift_paper.csv"))
  assert csv.loc[2, "paper_fid_train"] == 2.26 and csv.loc[2, "paper_fid_eval"] == 2.88
  # default output folder: RESULTS/tables
  assert make_tables.main([results, "--quiet"]) == 0
  assert os.path.isfile(os.path.join(results, "tables", "guidance_cpu.tex"))


def test_partial_and_broken_runs_never_crash(tmp_path):
  root = str(tmp_path)
  sdir = write_fake_sweep(root, sweep="dropout", table="3", states={})
  # a done run whose eval.json is missing, one whose eval.json is torn, one without status.json
  os.remove(os.path.join(sdir, run_id("128", "r=128", 0), "eval.json"))
  with open(os.path.join(sdir, run_id("128", "r=64", 0), "eval.json"), "w") as f:
    f.write('{"fid_train": 3.')
  os.remove(os.path.join(sdir, run_id("128", "r=32", 0), "status.json"))
  # a binary status.json (it used to hide the whole sweep), and a run that is a file
  with open(os.path.join(sdir, run_id("128", "r=16", 0), "status.json"), "wb") as f:
    f.write(b"\xff\xfe\x00binary")
  d = make_tables.build_table(load_sweep(sdir)).display.set_index("arm")
  assert d.loc["r=16", "state"] == "done" and d.loc["r=16", "FID train"] != ""
  assert d.loc["r=128", "state"] == "done, no eval.json" and d.loc["r=128", "FID train"] == ""
  assert d.loc["r=64", "state"] == "done, no eval.json"
  assert d.loc["r=32", "state"] == "done" and d.loc["r=32", "FID train"] != ""
  # the torn last line of a metrics.jsonl is skipped
  train = run_metrics(os.path.join(sdir, run_id("128", "none", 0)))
  assert len(train) == 20 and train["step"].max() == 200
  # a run "folder" that is a file shows as missing; the others stand
  import shutil
  shutil.rmtree(os.path.join(sdir, run_id("128", "r=64", 0)))
  open(os.path.join(sdir, run_id("128", "r=64", 0)), "w").close()
  d = make_tables.build_table(load_sweep(sdir)).display.set_index("arm")
  assert d.loc["r=64", "state"] == "missing" and d.loc["r=32", "FID train"] != ""
  # a sweep.json listing runs of which none has a folder yet
  empty = write_fake_sweep(root, sweep="blocks16", table="4")
  for name in os.listdir(empty):
    if name != "sweep.json":
      import shutil
      shutil.rmtree(os.path.join(empty, name))
  s = arm_summary(load_sweep(empty))
  assert set(s["state"]) == {"missing"} and s["speed"].isna().all()
  # a sweep.json without runs, and an unreadable one
  os.makedirs(os.path.join(root, "nothing_cpu"))
  with open(os.path.join(root, "nothing_cpu", "sweep.json"), "w") as f:
    json.dump({"sweep": "nothing", "table": "2", "tier": "cpu", "reference": None, "runs": []}, f)
  os.makedirs(os.path.join(root, "torn_cpu"))
  with open(os.path.join(root, "torn_cpu", "sweep.json"), "w") as f:
    f.write('{"sweep": "torn", "runs": [')
  warned = []
  names = [s.name for s in load_results(root, warn=warned.append)]
  assert names == ["blocks16_cpu", "dropout_cpu", "nothing_cpu"] and "torn_cpu" in warned[0]
  assert make_tables.main([root, "--quiet"]) == 0
  assert "No runs" in open(os.path.join(root, "tables", "nothing_cpu.md")).read()


def test_a_running_run_whose_process_is_gone_reads_killed(tmp_path):
  import socket
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  here = socket.gethostname()
  assert run_state({"state": "running", "pid": dead.pid, "host": here}) == "killed"
  assert run_state({"state": "running", "pid": os.getpid(), "host": here}) == "running"
  # another machine's run, or one written before pids were recorded: cannot tell, trust it
  assert run_state({"state": "running", "pid": dead.pid, "host": here + "-other"}) == "running"
  assert run_state({"state": "running"}) == "running"
  assert run_state({"state": "done", "pid": dead.pid, "host": here}) == "done"
  assert run_state(None) == run_state({}) == "pending"
  sdir = write_fake_sweep(str(tmp_path), sweep="dropout", table="3",
                          states={("128", "none"): "running"})
  p = os.path.join(sdir, run_id("128", "none", 0), "status.json")
  with open(p) as f:
    st = json.load(f)
  with open(p, "w") as f:
    json.dump({**st, "pid": dead.pid, "host": here}, f)
  d = make_tables.build_table(load_sweep(sdir)).display.set_index("arm")
  assert d.loc["none", "state"] == ("1 killed: process gone; run the same command to resume, "
                                    "1 running")


def _cli(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)


def test_empty_and_missing_results_folder(tmp_path, capsys):
  """Empty folder: one line saying so, exit 0 (nothing to tabulate yet). Missing: exit 2."""
  r = _cli("-m", "analysis.make_tables", str(tmp_path))
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip().startswith("no sweeps in") and len(r.stdout.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "tables")
  assert make_tables.main([str(tmp_path / "absent")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: results folder") and len(err.strip().splitlines()) == 1
  assert make_figures.main([str(tmp_path / "absent")]) == 2


# --- figures ---------------------------------------------------------------------------

def test_schedule_curves_follow_eq5_and_eq6():
  c = make_figures.schedule_curves(512, (256, 32), (32, 256), n=11)
  t = c["t"]
  np.testing.assert_allclose(c["shift 32"], c["cosine"] + 2 * math.log(32 / 512), atol=1e-4)
  interp = c["interpolated 32-256"]
  np.testing.assert_allclose(interp, t * c["shift 32"] + (1 - t) * c["shift 256"], atol=1e-4)


def test_noise_figure_shifted_schedule_destroys_more_signal():
  x = make_figures.noise_image(512)
  assert x.shape == (512, 512, 3) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
  sig = make_figures.noise_signal(x, make_figures.NOISE_TS, noise_d=64)
  cos, sh = np.array(sig["cosine"]["signal"]), np.array(sig["shifted"]["signal"])
  assert (sh < cos - 0.05).all(), (cos, sh)              # more destroyed at every t
  assert (np.diff(cos) < 0).all() and (np.diff(sh) < 0).all()
  assert cos[0] > 0.95 and sh[-1] < 0.5
  assert (np.array(sig["shifted"]["logsnr"]) < np.array(sig["cosine"]["logsnr"])).all()


def test_guidance_lines_and_paper_curves(tmp_path):
  sdir = write_fake_guidance_sweep(str(tmp_path), tier="paper", groups=("128", "512"))
  s = load_sweep(sdir)
  lines = make_figures.guidance_lines(s)
  assert [l["label"] for l in lines] == ["128", "512"]
  assert list(lines[0]["df"]["guidance_scale"]) == [1.0, 1.4, 2.0, 3.0]
  fig = make_figures.guidance_figure(s)
  labels = [l.get_label() for l in fig.axes[0].get_lines()]
  assert "paper 128" in labels and "paper 512" in labels
  paper = next(l for l in fig.axes[0].get_lines() if l.get_label() == "paper 512")
  assert list(paper.get_ydata()) == [paper_numbers.lookup("9", "512", f"{g:.2f}")["fid_train"]
                                     for g in (1.0, 1.4, 2.0, 3.0)]
  assert make_figures.guidance_figure(load_sweep(write_fake_sweep(str(tmp_path)))) is None
  # IS null in eval.json (no Inception logits): the IS panel says so instead of failing
  no_is = load_sweep(write_fake_guidance_sweep(str(tmp_path / "no_is"), with_is=False))
  fig = make_figures.guidance_figure(no_is)
  assert "no Inception score" in " ".join(t.get_text() for t in fig.axes[2].texts)
  assert make_tables.build_table(no_is).display["IS"].eq("").all()
  assert make_figures._line_label(["shift 32, guidance 1.0", "shift 32, guidance 1.2"]) == \
      "shift 32"


EXPECTED = ["schedules", "noise_512", "noise_shift_cpu_loss", "noise_shift_cpu_samples",
            "guidance_cpu_guidance", "guidance_cpu_loss", "guidance_cpu_samples"]


def test_make_figures_writes_every_figure(tmp_path):
  from PIL import Image
  root = str(tmp_path / "results")
  write_fake_sweep(root)
  write_fake_guidance_sweep(root)
  os.makedirs(os.path.join(root, "scratch"))
  assert make_figures.main([root]) == 0
  out = os.path.join(root, "figures")
  names = {os.path.splitext(f)[0] for f in os.listdir(out)}
  assert names == set(EXPECTED)                   # no guidance plot for noise_shift
  for n in EXPECTED:
    with open(os.path.join(out, f"{n}.pdf"), "rb") as f:
      assert f.read(5) == b"%PDF-"
    img = np.asarray(Image.open(os.path.join(out, f"{n}.png")).convert("RGB"))
    assert min(img.shape[:2]) > 300
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert img.std() > 10 and colours > 50, (n, img.std(), colours)


# --- notebook --------------------------------------------------------------------------

def test_notebook_executes_against_a_results_folder(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")     # provides the python3 kernel of this interpreter
  root = str(tmp_path / "results")
  write_fake_sweep(root, sweep="multiscale", table="6", states={("512", "multiscale"): "failed"})
  monkeypatch.setenv("SIMPLEDIFF_RESULTS", root)
  nb = nbformat.read(os.path.join(ROOT, "analysis", "plots.ipynb"), as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                   resources={"metadata": {"path": os.path.join(ROOT, "analysis")}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  pngs = [o for o in outputs if "image/png" in o.get("data", {})]
  tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert len(pngs) == 4                   # schedules, noise, the sweep's loss and samples
  assert len(tables) == 1 and "multiscale_cpu" in tables[0] and "failed" in tables[0]
  assert any(root in o.get("text", "") for o in outputs)


def test_tables_say_how_the_samples_were_drawn(results, tmp_path):
  """The sampler and its steps, from each run's eval.json."""
  import glob
  import shutil
  sdir = str(tmp_path / "noise_shift_cpu")
  shutil.copytree(os.path.join(results, "noise_shift_cpu"), sdir)
  sampler = {"name": "ddpm", "steps": 64, "noise_param": 0.2, "clip_x": True}
  evals = sorted(glob.glob(os.path.join(sdir, "*", "eval.json")))
  assert len(evals) >= 2
  for i, p in enumerate(evals):
    ev = json.load(open(p))
    json.dump({**ev, "sampler": sampler}, open(p, "w"))
  notes = make_tables.build_table(load_sweep(sdir)).notes
  assert "samples drawn with ddpm, 64 steps, noise_param 0.2, x clipped (every run's eval.json)." in notes
  ev = json.load(open(evals[0]))
  json.dump({**ev, "sampler": {**sampler, "steps": 512}}, open(evals[0], "w"))
  notes = make_tables.build_table(load_sweep(sdir)).notes
  assert any(n.startswith("samples drawn with different samplers") and "512 steps" in n
             for n in notes)


def test_sfid_column_only_where_runs_report_it(tmp_path):
  sdir = _three_seeds(str(tmp_path))
  assert "sFID eval" not in make_tables.build_table(load_sweep(sdir)).display.columns
  for seed, v in enumerate((40.0, 41.0, 42.0)):   # the 128 cosine arm's seeds report sFID
    p = os.path.join(sdir, run_id("128", "cosine", seed), "eval.json")
    ev = _eval(sdir, run_id("128", "cosine", seed))
    ev["sfid_eval"] = v
    ev["floor"]["sfid_eval"] = 7.5
    with open(p, "w") as fh:
      json.dump(ev, fh)
  t = make_tables.build_table(load_sweep(sdir))
  cols = list(t.display.columns)
  assert cols[cols.index("KID eval ×10³") + 1] == "sFID eval"
  d = t.display.set_index(["group", "arm"])
  assert d.loc[("128", "cosine"), "sFID eval"] == f"41.00 ± {T975[2] / math.sqrt(3):.2f}"
  assert d.loc[("128", "shift 64"), "sFID eval"] == ""
  assert d.loc[FLOOR_128, "sFID eval"] == "7.50"
  assert t.numbers.set_index(["group", "arm"]).loc[FLOOR_128, "floor_distinct"] == 1
  assert any(n.startswith("sFID:") for n in t.notes)


def _content_sweep(root):
  """Table 2 at the cpu tier: groups 128 -> 32 px and 256 -> 64 px of 16-px content,
  three seeds of the 128 arms; each run's eval.json carries its schedule and its figures at
  the content resolution (FID @content = 30 + |shift + 2 ln(res / 16)| * 10 + seed)."""
  sdir = _three_seeds(root, states={})
  meta = json.load(open(os.path.join(sdir, "sweep.json")))
  nd = {"cosine": None, "shift 128": 128, "shift 64": 64, "shift 32": 32}
  for r in meta["runs"]:
    res = int(r["group"]) // 4
    d = nd[r["arm"]] and nd[r["arm"]] // 4
    shift = 2 * math.log(d / res) if d else 0.0
    ev = _eval(sdir, r["run_id"])
    ev.update(resolution=res, schedule={"name": "shifted" if d else "cosine",
                                        "logsnr_shift": shift},
              content={"resolution": 16, "fid_eval": 30 + 10 * abs(shift + 2 * math.log(res / 16))
                       + r["seed"], "kid_eval": 0.02, "floor": {"fid_eval": 5.0, "kid_eval": 1e-4}})
    with open(os.path.join(sdir, r["run_id"], "eval.json"), "w") as fh:
      json.dump(ev, fh)
  return sdir


def test_content_columns_and_the_shift_figure(tmp_path):
  sdir = _content_sweep(str(tmp_path))
  t = make_tables.build_table(load_sweep(sdir))
  cols = list(t.display.columns)
  assert cols[cols.index("KID eval ×10³") + 1:cols.index("KID eval ×10³") + 3] == [
      "FID eval @content", "KID eval @content ×10³"]
  d = t.display.set_index(["group", "arm"])
  # 128 -> 32 px: shift 64 is noise_d 16, the content's cosine: 30 + 0 + mean seed 1
  assert d.loc[("128 (32 px)", "shift 64"), "FID eval @content"] == \
      f"31.00 ± {T975[2] / math.sqrt(3):.2f}"
  assert d.loc[("128 (32 px)", FLOOR_128[1]), "FID eval @content"] == "5.00"
  assert set(t.numbers["group"]) == {"128", "256"}   # the numbers keep the sweep's group
  assert any(n.startswith("@content:") and "16 px" in n for n in t.notes)
  lines = make_figures.shift_lines(load_sweep(sdir))
  assert [l["resolution"] for l in lines] == [32, 64]
  assert [round(l["predicted"], 6) for l in lines] == [round(-2 * math.log(2), 6),
                                                       round(-2 * math.log(4), 6)]
  best = [l["df"].loc[l["df"]["fid_content"].idxmin(), "shift"] for l in lines]
  assert best == pytest.approx([l["predicted"] for l in lines])
  fig = make_figures.shift_figure(load_sweep(sdir))
  assert fig is not None and len(fig.axes) == 2
  # a sweep that does not vary the schedule draws none
  assert make_figures.shift_figure(load_sweep(write_fake_sweep(
      str(tmp_path / "d"), sweep="dropout", table="3"))) is None


def test_bits_per_dim_column_only_where_runs_report_it(tmp_path):
  """bits/dim eval: mean ± the 95% t-interval over seeds, before IS, only where some run's
  eval.json has the bound; its intervals join the overlap notes; no floor entry."""
  sdir = _three_seeds(str(tmp_path))
  assert make_tables.BPD_COLUMN not in make_tables.build_table(load_sweep(sdir)).display.columns
  bound = {"schedule": "linear", "logsnr_min": -12.0, "logsnr_max": 10.0, "times": 8,
           "eval": {"num": 256}}
  for k, arm in enumerate(("cosine", "shift 64")):   # shift 32 reports none (an older run)
    for seed in range(3):
      p = os.path.join(sdir, run_id("128", arm, seed), "eval.json")
      ev = _eval(sdir, run_id("128", arm, seed))
      ev.update(bpd_eval=2.0 + 0.5 * k + 0.01 * seed, bpd_eval_se=0.002, bound=bound)
      with open(p, "w") as fh:
        json.dump(ev, fh)
  t = make_tables.build_table(load_sweep(sdir))
  cols = list(t.display.columns)
  assert cols[cols.index("IS") - 1] == make_tables.BPD_COLUMN
  d = t.display.set_index(["group", "arm"])
  half = 0.01 * T975[2] / math.sqrt(3)
  assert d.loc[("128", "cosine"), make_tables.BPD_COLUMN] == f"2.010 ± {half:.3f}"
  assert d.loc[("128", "shift 32"), make_tables.BPD_COLUMN] == ""
  assert d.loc[FLOOR_128, make_tables.BPD_COLUMN] == ""
  n = t.numbers.set_index(["group", "arm"])
  assert n.loc[("128", "shift 64"), "bpd_eval"] == pytest.approx(2.51)
  assert n.loc[("128", "shift 64"), "bpd_eval_ci95"] == pytest.approx(half)
  assert any(x.startswith("128: shift 64 vs cosine:") and
             "bits/dim eval intervals do not overlap (cosine lower)" in x for x in t.notes)
  assert any(x.startswith("bits/dim eval:") and "linear evaluation schedule on logSNR "
             "[-12, 10], 8 times per image, 256 images" in x for x in t.notes)


def test_the_ema_length_figure_reads_a_runs_post_hoc_evaluations(tmp_path):
  """One point per evals/ record drawn like eval.json (the others are another experiment),
  the run's own EMA apart; no figure below two post-hoc points."""
  sdir = _three_seeds(str(tmp_path))
  rid = run_id("128", "cosine", 0)
  rd = os.path.join(sdir, rid)
  ev = _eval(sdir, rid)
  same = {"num_samples": 256, "sampler": {"name": "ddpm", "steps": 64},
          "settings": {"eval": {"seed": 0}}}
  own = {**ev, **same, "ema": {"post_hoc": False, "sigma_rel": 0.091, "own_sigma_rel": 0.091},
         "bpd_eval": 3.0, "bpd_eval_se": 0.01}
  with open(os.path.join(rd, "eval.json"), "w") as fh:
    json.dump(own, fh)
  assert make_figures.ema_length_figure(rd) is None
  os.makedirs(os.path.join(rd, "evals"))
  for i, s in enumerate((0.15, 0.05, 0.10)):
    rec = {**own, "ema": {"post_hoc": True, "sigma_rel": s, "own_sigma_rel": 0.091},
           "fid_eval": 50 + 100 * (s - 0.08) ** 2, "bpd_eval": 3.0 + s}
    if i == 2:
      rec["num_samples"] = 1024       # not comparable with eval.json's: left out
    with open(os.path.join(rd, "evals", f"r{i}.json"), "w") as fh:
      json.dump(rec, fh)
  from analysis.results import ema_length_records
  df = ema_length_records(rd)
  assert list(df["sigma_rel"]) == [0.05, 0.091, 0.15]
  assert list(df["post_hoc"]) == [True, False, True]
  fig = make_figures.ema_length_figure(rd)
  assert fig is not None and len(fig.axes) == 2          # no @content figures here: 2 panels
  assert f"noise_shift_cpu_{rid}_ema" in make_figures.sweep_figures(load_sweep(sdir))
