"""Sweep files and the runner: paper settings, smoke runs end to end, resume after a kill."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from analysis.results import metrics_path
from core.runio import read_json, read_jsonl, run_state
from sweeps import run as runner
from sweeps.spec import TIERS, expand, load_sweep

FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "ablations", "[a-z]*.yaml")))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _by(runs, group, arm):
  (r,) = [r for r in runs if r.group == group and r.arm == arm and r.seed == 0]
  return r.config


@pytest.mark.parametrize("tier", TIERS)
def test_every_sweep_file_expands_and_validates_at_every_tier(tier):
  from core.models import build_model
  assert len(FILES) == 11
  for f in FILES:
    meta, runs = expand(f, tier)
    assert runs and meta["table"]
    assert len({r.run_id for r in runs}) == len(runs)
    for r in runs:
      build_model(r.config.model, r.config.resolution)  # divisibility, front-ends, levels


def test_noise_shift_paper_tier_is_the_papers_table_2():
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "paper")
  assert [(r.group, r.arm) for r in runs] == [
      ("128", "cosine"), ("128", "shift 64"), ("128", "shift 32"), ("256", "cosine"),
      ("256", "shift 128"), ("256", "shift 64"), ("256", "shift 32")]
  c = _by(runs, "128", "shift 32")
  assert (c.resolution, c.model.preset, c.schedule.name, c.schedule.noise_d) == (128, "unet128", "shifted", 32)
  assert c.model.channel_multiplier == (1, 2, 4, 8, 8) and c.model.num_res_blocks == (3, 4, 4, 12, 4)
  assert (c.optim.lr, c.optim.b2, c.optim.eps, c.optim.warmup_steps) == (5e-5, 0.999, 1e-12, 10000)
  assert (c.train.batch_size, c.train.steps, c.optim.ema_decay, c.optim.grad_clip) == (512, 1500000, 0.9999, 1.0)
  assert (c.data.source, c.data.num_classes, c.eval.num_samples) == ("tfds", 1000, 50000)
  c = _by(runs, "256", "shift 128")
  assert (c.resolution, c.model.preset, c.schedule.noise_d, c.optim.b2, c.train.steps) == (256, "unet256", 128, 0.99, 2000000)


def test_noise_shift_long_cpu_tier_is_the_long_study():
  """Table 2 along training: 64 px on 16-px content under Min-SNR-5 with x prediction, the
  content-matched shift (noise_d 16) and the 16-px twin, two contents, learning curves."""
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift_long.yaml"), "cpu")
  c = _by(runs, "simple", "shift 64")
  assert (c.resolution, c.schedule.name, c.schedule.noise_d, c.data.content_resolution) == \
      (64, "shifted", 16, 16)
  assert (c.loss.name, c.loss.weight_cap, c.model.prediction, c.model.frontend) == \
      ("eps_mse", 5.0, "x", "patch:4")
  assert (c.train.steps, c.eval.every, c.eval.oracle_num) == (12000, 500, 2048)
  twin = _by(runs, "shapes", "16-px twin (cosine)")
  assert (twin.resolution, twin.schedule.name, twin.data.source) == (16, "cosine", "shapes")
  assert _by(runs, "simple x-MSE", "cosine x-MSE").loss.name == "x_mse"
  assert {r.seed for r in runs} == {0, 1, 2}


def test_other_sweeps_paper_tier_settings():
  a = lambda f: expand(os.path.join(ROOT, "ablations", f), "paper")[1]
  runs = a("dropout.yaml")
  assert [r.config.model.dropout_max_res for r in runs[1:]] == [128, 64, 32, 16]
  assert runs[0].config.model.dropout == 0.0 and runs[0].config.train.steps == 1500000  # [?] reading: see dropout.yaml
  runs = a("blocks16.yaml")
  assert [r.config.model.num_res_blocks[3] for r in runs] == [2, 4, 8, 12]
  runs = a("downsampling.yaml")
  assert [(r.config.model.frontend, r.config.model.channel_multiplier) for r in runs] == [
      ("none", (1, 1, 1, 2, 4, 8, 8)), ("dwt:1", (1, 2, 2, 4, 8, 8)), ("dwt:2", (2, 3, 4, 8, 8)),
      ("patch:2", (1, 2, 2, 4, 8, 8)), ("patch:4", (2, 3, 4, 8, 8))]
  runs = a("multiscale.yaml")
  assert [(r.config.resolution, r.config.loss.multiscale, r.config.loss.multiscale_base) for r in runs] == [
      (256, False, 32), (256, True, 32), (512, False, 32), (512, True, 32)]
  runs = a("guidance.yaml")
  assert len(runs) == 24 and len({r.train_key for r in runs}) == 3
  assert sorted({r.config.sampler.guidance_scale for r in runs}) == [1.0, 1.05, 1.1, 1.2, 1.4, 1.8, 2.0, 3.0]
  assert {r.config.model.preset for r in runs} == {"uvit128", "uvit256", "uvit512"}
  assert {(r.config.optim.lr, r.config.train.batch_size, r.config.train.steps) for r in runs} == {(1e-4, 2048, 500000)}
  runs = a("literature.yaml")
  assert [(r.arm, r.config.model.preset) for r in runs] == [
      ("U-Net", "unet128"), ("U-ViT", "uvit128"), ("U-Net", "unet256"), ("U-ViT", "uvit256"),
      ("U-Net", "unet512"), ("U-ViT", "uvit512")]
  runs = a("interpolated_schedule.yaml")
  assert {(r.config.schedule.name, r.config.resolution) for r in runs} == {("shifted", 512), ("interpolated", 512)}


def test_small_tiers_scale_resolutions_and_keep_the_axis():
  _, runs = expand(os.path.join(ROOT, "ablations/dropout.yaml"), "cpu")
  assert {r.config.resolution for r in runs} == {16}   # the tiers' scale 8
  # noise_shift's own cpu tier: 16-px content at 32 and 64 px, scale 4, and a
  # 16-px control group that only the small tiers have
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "cpu")
  c = _by(runs, "128", "shift 32")
  assert (c.resolution, c.schedule.noise_d, c.data.source) == (32, 8, "shapes_simple")
  c = _by(runs, "256", "shift 128")
  assert (c.resolution, c.schedule.noise_d) == (64, 32)  # the same ratio image_d / noise_d
  assert (c.model.frontend, c.data.content_resolution, c.model.prediction, c.loss.name) == (
      "patch:4", 16, "x", "x_mse")
  c = _by(runs, "64", "cosine")
  assert (c.resolution, c.model.frontend, c.model.base_channels) == (16, "none", 24)
  assert len(runs) == 9 and len({r.config.train.steps for r in runs}) == 1
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "smoke", seeds=2)
  assert len(runs) == 18 and {r.config.train.seed for r in runs} == {0, 1}
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "paper")
  assert len(runs) == 7 and {r.group for r in runs} == {"128", "256"}   # no control group


def test_an_arm_of_some_tiers_only(tmp_path):
  body = ("name: t\nbase: {resolution: 16, model: {preset: unet_tiny}, train: {steps: 1}}\n"
          "arms:\n  - {label: a}\n  - {label: b, tiers: %s}\n")
  f = tmp_path / "t.yaml"
  f.write_text(body % "[cpu]")
  assert [r.arm for r in expand(str(f), "cpu")[1]] == ["a", "b"]
  assert [r.arm for r in expand(str(f), "paper")[1]] == ["a"]
  for bad in ("[laptop]", "cpu", "[]"):
    f.write_text(body % bad)
    from core.config import ConfigError
    with pytest.raises(ConfigError, match=r"arms\[1\]\.tiers"):
      expand(str(f), "cpu")


# The one rule (sweeps/spec.py): base < the tier's set (_tiers.yaml, then the file's tiers:) <
# arm < command line; !tier values belong to their layer; the file's plain values are the
# paper's and the tier adapts them (resolutions / scale, presets by architecture), the rest is
# taken as written. Each key below is set at a different set of layers.
RULE_TIERS = """
cpu:
  scale: 2
  presets: {unet: unet_tiny, uvit: uvit_tiny}
  set:
    optim: {warmup_steps: 20, ema_decay: 0.5}
    train: {steps: 20, batch_size: 20, log_every: 20}
    model: {dropout_max_res: 4}
"""
RULE_SWEEP = """
name: rule
table: x
base:
  resolution: 32
  schedule: {name: shifted, noise_d: 16}
  model: {preset: unet_small}
  data: {source: shapes, size: 32}
  optim: {lr: 0.1, warmup_steps: 10, ema_decay: !tier {cpu: 0.1}, b2: 0.9}
  train: {steps: 10, batch_size: 10, log_every: 10, ckpt_every: 10}
  eval: {fid: false}
arms:
  - {label: a, set: {train.steps: 30, train.batch_size: 30, optim.b2: !tier {paper: 0.8}}}
  - {label: b, set: {schedule.noise_d: !tier {cpu: 4}, model.preset: !tier {cpu: uvit_small}}}
  - {label: c, set: {model.preset: uvit256}}
  - {label: d, set: {model.preset: uvit256, model.frontend: "patch:2", model.dropout_max_res: 8}}
tiers:
  cpu: {set: {train.log_every: 5}}
"""


def _rule_runs(tmp_path, tier, overrides=None):
  (tmp_path / "_tiers.yaml").write_text(RULE_TIERS)
  (tmp_path / "rule.yaml").write_text(RULE_SWEEP)
  return {r.arm: r.config for r in expand(str(tmp_path / "rule.yaml"), tier, overrides)[1]}


def test_the_rule_which_layer_wins(tmp_path):
  c = _rule_runs(tmp_path, "cpu", {"train.batch_size": 40})
  a, b = c["a"], c["b"]
  assert a.optim.lr == 0.1                  # base alone
  assert a.optim.warmup_steps == 20         # the tier's set beats the base
  assert a.optim.ema_decay == 0.5           # ... and the base's !tier value (still the base)
  assert a.train.log_every == 5             # the file's tiers: beats _tiers.yaml
  assert a.train.steps == 30                # the arm beats the tier's set
  assert b.train.steps == 20
  assert a.train.batch_size == 40           # the command line beats the arm
  assert a.optim.b2 == 0.9                  # an arm's !tier without this tier: the base's value
  assert _rule_runs(tmp_path, "paper")["a"].optim.b2 == 0.8


def test_the_rule_what_the_tier_adapts(tmp_path):
  c = _rule_runs(tmp_path, "cpu")
  a, b = c["a"], c["b"]
  assert (a.resolution, a.schedule.noise_d) == (16, 8)      # paper values / scale
  assert b.schedule.noise_d == 4                            # !tier: as written
  assert a.model.dropout_max_res == 4                       # the tier's set: as written
  assert a.model.preset == "unet_tiny"                      # preset swapped by architecture
  assert b.model.preset == "uvit_small"                     # !tier: as written
  assert (c["c"].model.preset, c["c"].model.frontend) == ("uvit_tiny", "dwt:1")  # front-end kept
  assert (c["d"].model.frontend, c["d"].model.dropout_max_res) == ("patch:2", 4)  # a layer's wins
  # Command-line values are taken as written: no scaling, no preset swap.
  o = _rule_runs(tmp_path, "cpu", {"resolution": 32, "model.preset": "unet_small"})["a"]
  assert (o.resolution, o.model.preset) == (32, "unet_small")
  p = _rule_runs(tmp_path, "paper")
  assert (p["a"].resolution, p["a"].model.preset, p["c"].model.preset) == (32, "unet_small", "uvit256")


@pytest.mark.parametrize("text, msg", [
    ("{paper: 0.1, cpu: 0.2}", "optim.lr: !tier {paper: ..., cpu: ...}"),   # untagged: the fix is named
    ("!tier {paper: 0.1, cpuu: 0.2}", "unknown tier 'cpuu'"),
    ("!tier 0.1", "!tier takes a mapping")])
def test_a_value_per_tier_is_tagged(tmp_path, text, msg):
  from core.config import ConfigError
  (tmp_path / "rule.yaml").write_text(RULE_SWEEP.replace("lr: 0.1", f"lr: {text}"))
  with pytest.raises(ConfigError) as e:
    expand(str(tmp_path / "rule.yaml"), "paper")
  assert msg in str(e.value) and "\n" not in str(e.value)


def _run(argv, capsys=None):
  code = runner.main(argv)
  return code


# cascade.yaml's runs end to end: tests/test_cdm.py (its first arm is a plain U-Net run).
E2E = [f for f in FILES if os.path.basename(f) != "cascade.yaml"]


@pytest.mark.parametrize("f", E2E, ids=lambda f: os.path.basename(f))
def test_every_ablation_file_end_to_end_at_smoke(f, tmp_path, monkeypatch):
  """Each file through the runner into results: its first run, and for guidance.yaml a second
  that shares its trained model; every arm of every file is the slow test below."""
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  res = str(tmp_path / "results")
  _, runs = expand(f, "smoke")
  shared = 2 if os.path.basename(f) == "guidance.yaml" else 1
  only = [r.run_id for r in runs if r.train_key == runs[0].train_key][:shared]
  assert len(only) == shared
  # FID and IS through the runner here; elsewhere the same code path only costs test time.
  fid = os.path.basename(f) in ("noise_shift.yaml", "guidance.yaml")
  args = [f, "tier=smoke", "--results", res, "--no-progress", f"eval.fid={str(fid).lower()}",
          f"eval.stats_dir={tmp_path / 'stats'}"] + sum([["--only", o] for o in only], [])
  assert runner.main(args) == 0, f
  name = load_sweep(f)["name"]
  sweep = read_json(os.path.join(res, f"{name}_smoke", "sweep.json"))
  assert sweep["tier"] == "smoke" and len(sweep["runs"]) == len(runs)
  for rid in only:
    rd = os.path.join(res, f"{name}_smoke", rid)
    assert read_json(os.path.join(rd, "status.json"))["state"] == "done"
    ev = read_json(os.path.join(rd, "eval.json"))
    assert ev["params"] > 0 and (ev["fid_train"] >= 0 if fid else ev["fid_train"] is None)
    if name == "noise_shift":   # 16-px content at 32 px: also scored at 16 px
      assert ev["resolution"] == 32 and ev["schedule"]["logsnr_shift"] == 0.0
      c = ev["content"]
      assert c["resolution"] == 16 and c["fid_eval"] >= 0 and c["floor"]["fid_eval"] >= 0
    assert os.path.getsize(os.path.join(rd, "samples.png")) > 100
    assert [r["step"] for r in read_jsonl(metrics_path(rd))] == [1, 2]
  assert len(os.listdir(os.path.join(res, "_models"))) == 1  # trained once


@pytest.mark.slow
def test_every_arm_of_every_ablation_at_smoke(tmp_path, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  for f in FILES:
    assert runner.main([f, "tier=smoke", "--results", str(tmp_path), "--no-progress"]) == 0, f


def test_bad_input_fails_before_training_with_one_line(tmp_path, capsys):
  res = str(tmp_path / "r")
  f = os.path.join(ROOT, "ablations/noise_shift.yaml")
  assert runner.main([f, "tier=smoke", "train.stepz=3", "--results", res]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "'train.stepz'" in err
  assert runner.main([f, "tier=smoke", "train.steps=many", "--results", res]) == 2
  assert "'train.steps'" in capsys.readouterr().err
  assert runner.main([f, "tier=paper", "--results", res]) == 2  # ImageNet is not here
  err = capsys.readouterr().err
  assert "data.source=tfds" in err and "data.path" in err
  assert runner.main([f, "tier=huge", "--results", res]) == 2
  assert runner.main([str(tmp_path / "nope.yaml")]) == 2
  assert not os.path.exists(res)  # nothing started


# A one-step tiny run without FID: the base of the sweep files these tests write.
MINI_BASE = {"resolution": 16, "model": {"preset": "unet_tiny"}, "data": {"source": "shapes", "size": 32},
             "train": {"batch_size": 8, "steps": 1, "log_every": 1, "ckpt_every": 1, "progress": False},
             "sampler": {"steps": 2}, "eval": {"fid": False, "grid_size": 4, "batch_size": 4}}


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path):
  empty = tmp_path / "empty_folder"
  empty.mkdir()
  sweep = tmp_path / "mini.yaml"
  sweep.write_text(yaml.safe_dump({
      "name": "mini", "table": "x",
      "base": MINI_BASE,
      "arms": [{"label": "bad", "set": {"data.source": "folder", "data.path": str(empty)}},
               {"label": "good"}]}))
  assert runner.main([str(sweep), "--results", str(tmp_path / "r"), "--no-progress"]) == 1
  st = lambda rid: read_json(str(tmp_path / "r" / "mini_paper" / rid / "status.json"))
  assert st("bad-s0")["state"] == "failed" and st("bad-s0")["error"]
  assert st("good-s0")["state"] == "done"


def test_killed_sweep_completes_on_rerun_with_each_result_once(tmp_path):
  env = {**os.environ, "SIMPLEDIFF_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
  cmd = [sys.executable, "-m", "sweeps.run", "ablations/dropout.yaml", "tier=smoke",
         "--results", str(tmp_path / "r"), "--no-progress", "eval.fid=false",
         "--only", "none", "--only", "r=128"]
  sdir = tmp_path / "r" / "dropout_smoke"
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       start_new_session=True)
  t0 = time.time()
  while time.time() - t0 < 600:  # kill once the first run is done and the second has begun
    if (read_json(str(sdir / "128-r=128-s0" / "status.json")) or {}).get("state") == "running":
      break
    time.sleep(0.5)
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  # SIGKILL leaves no chance to write "failed": readers see the dead process as "killed"
  st = read_json(str(sdir / "128-r=128-s0" / "status.json"))
  assert st["state"] == "running" and st["pid"] == p.pid and st["steps"] == 2
  assert run_state(st) == "killed"
  assert run_state(read_json(str(sdir / "128-none-s0" / "status.json"))) == "done"
  done_before = read_json(str(sdir / "128-none-s0" / "eval.json"))
  assert done_before is not None
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert "128-none-s0: done, skipped" in out.stdout
  assert read_json(str(sdir / "128-none-s0" / "eval.json")) == done_before
  for rid in ("128-none-s0", "128-r=128-s0"):
    assert read_json(str(sdir / rid / "status.json"))["state"] == "done"
    steps = [r["step"] for r in read_jsonl(metrics_path(str(sdir / rid)))]
    assert steps == [1, 2], (rid, steps)
  assert sorted(os.listdir(sdir)) == sorted(["128-none-s0", "128-r=128-s0", "sweep.json"])
  assert len(os.listdir(tmp_path / "r" / "_models")) == 2


# Slow (34 s): --launcher is the optional Hydra path; the default run covers run_one, which
# each launcher job calls (test_every_ablation_file_end_to_end_at_smoke).
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib"])
def test_runs_go_through_a_hydra_launcher_plugin(tmp_path, launcher):
  """One Hydra job per trained model, in parallel processes; results land as in-process."""
  sweep = tmp_path / "two.yaml"
  sweep.write_text(yaml.safe_dump({
      "name": "two", "table": "x",
      "base": MINI_BASE,
      # Seeds differ, the compiled programs do not: the second job hits the compilation cache.
      "arms": [{"label": "a", "set": {"train.seed": 0}}, {"label": "b", "set": {"train.seed": 1}}]}))
  res = tmp_path / "r"
  argv = [str(sweep), "--results", str(res), "--no-progress", "--launcher", launcher,
          "--launcher-arg", "hydra.launcher.n_jobs=2"]
  assert runner.main(argv) == 0
  for rid in ("a-s0", "b-s0"):
    assert read_json(str(res / "two_paper" / rid / "status.json"))["state"] == "done"
    assert read_json(str(res / "two_paper" / rid / "eval.json"))["step"] == 1
  assert len(os.listdir(res / "_models")) == 2
  assert runner.main(argv[:-4] + ["--launcher", "nope"]) == 2  # unknown launcher: one line


def test_rerun_with_other_settings_is_an_error_or_redone(tmp_path, monkeypatch, capsys):
  """A finished run is not reported as done for settings it was not made with."""
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  f = os.path.join(ROOT, "ablations/noise_shift.yaml")
  res = str(tmp_path / "r")
  base = [f, "tier=smoke", "--results", res, "--no-progress", "--only", "128-cosine-s0",
          "eval.fid=false"]
  assert runner.main(base) == 0
  rd = os.path.join(res, "noise_shift_smoke", "128-cosine-s0")
  before = open(os.path.join(rd, "eval.json")).read()
  capsys.readouterr()
  for extra, key in ((["train.steps=3"], "train.steps=2 -> 3"),
                     (["eval.num_samples=4"], "eval.num_samples")):
    assert runner.main(base + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "--redo" in err[0], err
    assert open(os.path.join(rd, "eval.json")).read() == before   # nothing lost
  # The same settings: skipped as before.
  assert runner.main(base) == 0
  assert "done, skipped" in capsys.readouterr().out
  # --redo: the old folder kept aside, the run made again with the new settings.
  assert runner.main(base + ["train.steps=3", "--redo"]) == 0
  assert read_json(os.path.join(rd, "eval.json"))["step"] == 3
  kept = os.listdir(os.path.join(res, "noise_shift_smoke", "_replaced"))
  assert len(kept) == 1 and kept[0].startswith("128-cosine-s0-")
  old = os.path.join(res, "noise_shift_smoke", "_replaced", kept[0], "eval.json")
  assert open(old).read() == before


def test_a_run_folder_that_is_a_file_fails_alone(tmp_path, monkeypatch, capsys):
  """One bad run shows as bad; the others stand."""
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  f = os.path.join(ROOT, "ablations/noise_shift.yaml")
  res = tmp_path / "r"
  (res / "noise_shift_smoke").mkdir(parents=True)
  (res / "noise_shift_smoke" / "128-cosine-s0").write_text("not a folder")
  assert runner.main([f, "tier=smoke", "--results", str(res), "--no-progress", "eval.fid=false",
                      "--only", "128-cosine-s0", "--only", "128-shift-64-s0"]) == 1
  assert "128-cosine-s0" in capsys.readouterr().err
  st = read_json(str(res / "noise_shift_smoke" / "128-shift-64-s0" / "status.json"))
  assert st["state"] == "done"
  assert (res / "noise_shift_smoke" / "128-cosine-s0").read_text() == "not a folder"


def test_sigterm_stops_with_one_message_and_the_run_resumable(tmp_path):
  env = {**os.environ, "SIMPLEDIFF_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
  cmd = [sys.executable, "-m", "sweeps.run", "ablations/dropout.yaml", "tier=smoke",
         "--results", str(tmp_path / "r"), "--no-progress", "eval.fid=false", "--only", "none",
         "train.steps=400", "train.ckpt_every=1000"]
  sdir = tmp_path / "r" / "dropout_smoke"
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  t0 = time.time()
  while time.time() - t0 < 600:
    if ((read_json(str(sdir / "128-none-s0" / "status.json")) or {}).get("step") or 0) >= 1:
      break
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 130, err[-2000:]
  assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
  st = read_json(str(sdir / "128-none-s0" / "status.json"))
  assert st["state"] == "failed" and st["error"] == "interrupted"


# Rows that several of the paper's tables print with the same numbers: one trained model each,
# not one per table. (sweep file, arm, group); group None: any.
SHARED_MODELS = {
    "U-Net 128, shift 32: tables 2, 7": [("noise_shift", "shift 32", "128"), ("literature", "U-Net", "128")],
    "U-Net 128, shift 64: tables 2, 3, 4": [("noise_shift", "shift 64", "128"), ("dropout", "r=16", None),
                                           ("blocks16", "12+13", None)],
    "U-Net 256, shift 32: tables 2, 6, 7": [("noise_shift", "shift 32", "256"), ("multiscale", "standard", "256"),
                                           ("literature", "U-Net", "256")],
    "U-Net 512 DWT-2: tables 5, 6": [("downsampling", "DWT-2", None), ("multiscale", "standard", "512")],
    "U-Net 512 multiscale: tables 6, 7": [("multiscale", "multiscale", "512"), ("literature", "U-Net", "512")],
    **{f"U-ViT {r}: tables 7, 9": [("guidance", "1.00", r), ("literature", "U-ViT", r)]
       for r in ("128", "256", "512")},
}
# Where the small tiers cannot share: blocks16 shrinks the 16x16 stack by arm (its 12+13 row is
# [1, 6] blocks there), and noise_shift's 256 group keeps b2 0.999 and, at tier cpu, patch:2 and
# width 24 (results/reference/cpu_tier_study.md).
NOT_SHARED_BELOW_PAPER = {"U-Net 128, shift 64: tables 2, 3, 4": {("blocks16", "12+13", None)},
                          "U-Net 256, shift 32: tables 2, 6, 7": {("noise_shift", "shift 32", "256")}}
# noise_shift's own cpu and smoke tiers make its data at a 16-px content resolution and predict
# x with the x-MSE (ablations/noise_shift.yaml), so its models there are its own. The cpu
# studies of tables 7 and 9 run the 128 group only (their files' headers).
NOT_SHARED_AT = {"cpu": {("noise_shift", "shift 32", "128"), ("noise_shift", "shift 64", "128"),
                         *((f, a, r) for r in ("256", "512")
                           for f, a in (("literature", "U-Net"), ("literature", "U-ViT"), ("guidance", "1.00")))},
                 "smoke": {("noise_shift", "shift 32", "128"), ("noise_shift", "shift 64", "128")}}


@pytest.mark.parametrize("tier", TIERS)
def test_rows_the_paper_prints_from_one_model_have_one_model_key(tier):
  runs = {os.path.basename(f)[:-5]: expand(f, tier)[1] for f in FILES}
  for what, members in SHARED_MODELS.items():
    if tier != "paper":
      members = [m for m in members if m not in NOT_SHARED_BELOW_PAPER.get(what, ())]
    members = [m for m in members if m not in NOT_SHARED_AT.get(tier, ())]
    keys = {}
    for sweep, arm, group in members:
      rs = [r for r in runs[sweep] if r.arm == arm and group in (None, r.group) and r.seed == 0]
      assert len(rs) == 1, (sweep, arm, group)
      keys[sweep] = rs[0].train_key
    assert len(set(keys.values())) <= 1, (tier, what, keys)


def test_model_key_ignores_logging_evaluation_and_new_default_fields():
  from core.config import replace
  from core.experiment import train_key, train_settings
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "cpu")
  cfg = runs[0].config
  same = replace(cfg, **{"train.log_every": 7, "train.ckpt_every": 9, "train.keep_ckpts": 5,
                         "train.progress": False, "data.num_workers": 2, "data.prefetch": 0,
                         "eval.num_samples": 10, "sampler.steps": 3, "name": "other",
                         "data.eval_split": "validation", "train.fsdp": True})
  assert train_key(same) == train_key(cfg)
  # A setting the rest makes inert: a multiscale base without the multiscale loss.
  assert train_key(replace(cfg, **{"loss.multiscale_base": 4})) == train_key(cfg)
  for k, v in (("train.steps", 3), ("optim.lr", 1e-3), ("train.seed", 5), ("model.dropout", 0.3),
               ("data.random_flip", False)):
    assert train_key(replace(cfg, **{k: v})) != train_key(cfg), k
  # Only settings off their defaults enter the key: a field added later with its default leaves
  # every existing key as it was.
  from core.config import ExperimentConfig, flatten, to_dict
  default = flatten(to_dict(ExperimentConfig()))
  assert all(default.get(k, object()) != v for k, v in train_settings(cfg).items())


def test_a_second_sweep_file_reuses_the_model_the_first_trained(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  res = tmp_path / "r"
  for name, extra in (("first", {}), ("second", {"eval": {"grid_size": 8}, "train": {"log_every": 5}})):
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "table": "x", "base": runner_base(extra), "arms": [{"label": "a"}]}))
  assert runner.main([str(tmp_path / "first.yaml"), "--results", str(res), "--no-progress"]) == 0
  (model,) = os.listdir(res / "_models")
  ckpts = sorted(os.listdir(res / "_models" / model / "ckpt"))
  assert runner.main([str(tmp_path / "second.yaml"), "--results", str(res), "--no-progress"]) == 0
  assert os.listdir(res / "_models") == [model]                       # one model
  assert sorted(os.listdir(res / "_models" / model / "ckpt")) == ckpts  # not trained again
  assert [r["step"] for r in read_jsonl(metrics_path(str(res / "second_paper" / "a-s0")))] == [1]
  assert read_json(str(res / "second_paper" / "a-s0" / "eval.json"))["step"] == 1


def runner_base(extra):
  from core.config import deep_merge
  return deep_merge(MINI_BASE, extra)


def test_every_published_row_is_named_by_its_arm():
  """Arms name the paper's rows they reproduce (table/group/row); every name is a
  row of analysis.paper_numbers, and every arm of a table with a row of that label names it."""
  from analysis import paper_numbers
  for f in FILES:
    meta, runs = expand(f, "paper")
    for r in runs:
      for ref in r.paper:
        assert paper_numbers.lookup(ref["table"], ref["group"], ref["arm"]) is not None, (f, ref)
      own = paper_numbers.lookup(meta["table"], r.group, r.arm)
      if own is not None and not r.arm.startswith("CDM "):
        assert r.paper and r.paper[0]["table"] == meta["table"], (f, r.arm, r.group)
    assert all("paper" in x for x in meta["runs"])


def test_tables_take_the_row_the_arm_names_not_its_label(tmp_path):
  from analysis import make_tables
  from analysis.results import load_sweep
  from core.runio import write_json_atomic
  sdir = tmp_path / "r" / "mini_paper"
  runs = [{"run_id": "a-s0", "arm": "my cosine", "group": "128", "seed": 0, "values": {},
           "paper": [{"table": "2", "group": "128", "arm": "cosine"}]},
          {"run_id": "b-s0", "arm": "shift 64", "group": "128", "seed": 0, "values": {},
           "paper": []}]
  write_json_atomic(str(sdir / "sweep.json"), {"sweep": "mini", "table": "2", "title": "t",
                                               "tier": "paper", "reference": None, "runs": runs})
  d = make_tables.build_table(load_sweep(str(sdir)), with_paper=True).display
  row = lambda a: d[d["arm"] == a].iloc[0]
  assert row("my cosine")["paper FID train"] == "2.96"
  assert row("shift 64")["paper FID train"] == ""     # names no row, though its label matches


def test_sigterm_dropped_in_a_callback_is_not_reported_twice(monkeypatch):
  """A SIGTERM that lands in a __del__ or XLA's gc callback is dropped by Python, which prints
  'Exception ignored ... Traceback'; STOP carries it on, so only other exceptions are reported."""
  import sys
  from core.runio import STOP
  from sweeps.run import _sigterm_as_interrupt
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))

  class Raises:
    def __init__(self, exc):
      self.exc = exc

    def __del__(self):
      raise self.exc

  with _sigterm_as_interrupt():
    STOP.set()
    Raises(KeyboardInterrupt("SIGTERM"))
    assert reported == []
    Raises(ValueError("other"))
    assert reported == [ValueError]
  assert not STOP.is_set()


def test_runs_execute_seed_by_seed_in_the_files_arm_order():
  # A study stopped part way keeps whole seeds of every arm (pairs), not every seed of a few arms.
  from sweeps.execute import execution_order
  _, runs = expand(os.path.join(ROOT, "ablations/noise_shift.yaml"), "smoke", seeds=2)
  order = execution_order(runs)
  assert [r.seed for r in order] == [0] * 9 + [1] * 9
  assert [r.arm for r in order[:9]] == [r.arm for r in runs if r.seed == 0] == \
      [r.arm for r in order[9:]]
