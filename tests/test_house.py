"""One place per concept: the metrics writer, training speed, the learning-rate
schedule, image extensions, "done", validation at resolve, and the import arrows."""
from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

from core.runtime import log as M
from core.config import ConfigError
from core.experiment import resolve

MINI = {"resolution": 16, "model": {"preset": "unet_tiny"},
        "data": {"source": "shapes", "size": 32},
        "train": {"batch_size": 8, "steps": 2, "log_every": 1, "ckpt_every": 2,
                  "progress": False},
        "optim": {"lr": 1e-3, "warmup_steps": 3}}


def _cfg(**train):
  return resolve({**MINI, "train": {**MINI["train"], **train}})


class _FakeSummaryWriter:
  made: list = []

  def __init__(self, logdir):
    self.logdir, self.scalars, self.closed = logdir, [], False
    _FakeSummaryWriter.made.append(self)

  def add_scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    pass

  def close(self):
    self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
  mod = types.ModuleType("tensorboardX")
  mod.SummaryWriter = _FakeSummaryWriter
  _FakeSummaryWriter.made = []
  monkeypatch.setitem(sys.modules, "tensorboardX", mod)
  return _FakeSummaryWriter


# --- the metrics writer ------------------------------------------------------------------

def _rows(n, start=1):
  return [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "img_per_s": 10.0 * s, "time": 0.5 * s}
          for s in range(start, start + n)]


def test_writer_appends_the_rows_as_given_and_drops_rows_past_the_resume_step(tmp_path):
  seen = []
  with M.MetricsWriter(str(tmp_path), _cfg(), on_row=seen.append) as w:
    for r in _rows(4):
      w.write(r)
  path = tmp_path / "metrics.jsonl"
  assert [json.loads(l) for l in path.read_text().splitlines()] == _rows(4) == seen
  # resumed from the checkpoint of step 2: steps 3 and 4 run again, so their rows go
  with M.MetricsWriter(str(tmp_path), _cfg(), resume_step=2) as w:
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
    w.write(_rows(1, start=3)[0])
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3]


def test_writer_writes_nothing_off_process_0(tmp_path, fake_tensorboard):
  seen = []
  with M.MetricsWriter(str(tmp_path), _cfg(log_to=["tensorboard"]), is_main=False,
                       on_row=seen.append) as w:
    w.write(_rows(1)[0])
  assert not os.path.exists(tmp_path / "metrics.jsonl") and not seen
  assert fake_tensorboard.made == []


def test_tensorboard_gets_the_rows_scalars_when_asked(tmp_path, fake_tensorboard):
  with M.MetricsWriter(str(tmp_path), _cfg(log_to=["tensorboard"])) as w:
    for r in _rows(2):
      w.write(r)
  (tb,) = fake_tensorboard.made
  assert tb.logdir == str(tmp_path / "tensorboard") and tb.closed
  assert ("train/loss", 0.5, 2) in tb.scalars and ("train/img_per_s", 10.0, 1) in tb.scalars
  assert not any(t in ("train/step", "train/time") for t, _, _ in tb.scalars)
  # and the JSONL is the same as without the backend
  assert [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
      _rows(2)


def test_wandb_resumes_one_run_per_workdir(tmp_path, monkeypatch):
  inits, logs = [], []
  run = types.SimpleNamespace(log=lambda d, step: logs.append((d, step)), finish=lambda: None)
  mod = types.ModuleType("wandb")
  mod.init = lambda **kw: inits.append(kw) or run
  monkeypatch.setitem(sys.modules, "wandb", mod)
  for _ in range(2):
    with M.MetricsWriter(str(tmp_path), _cfg(log_to=["wandb"])) as w:
      w.write(_rows(1)[0])
  assert inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"
  assert logs[0] == ({"train/loss": 1.0, "train/lr": 1e-3, "train/img_per_s": 10.0}, 1)


def test_log_to_asked_but_missing_is_one_line_before_training(tmp_path, monkeypatch):
  from core import train as train_lib
  from core.experiment import check_runnable
  monkeypatch.setitem(sys.modules, "tensorboardX", None)   # not installed
  cfg = _cfg(log_to=["tensorboard"])                         # resolves: the name is known
  with pytest.raises(ConfigError, match=r"train.log_to=tensorboard needs the package "
                                        r"tensorboardX.*pip install tensorboardX"):
    check_runnable(cfg)
  with pytest.raises(ConfigError, match="tensorboardX"):
    train_lib.train(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "config.yaml")   # nothing written
  with pytest.raises(ConfigError, match="train.log_to: unknown backend 'tb'"):
    _cfg(log_to=["tb"])


def test_log_to_is_not_part_of_the_model_key():
  from core.experiment import train_key
  assert train_key(_cfg(log_to=["tensorboard", "wandb"])) == train_key(_cfg())


def test_train_cli_says_a_missing_backend_in_one_line(monkeypatch, capsys, tmp_path):
  from core.train import main
  monkeypatch.setitem(sys.modules, "wandb", None)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", [sys.argv[0]])
  with pytest.raises(SystemExit) as e:
    main(["resolution=16", "model.preset=unet_tiny", "data.source=shapes", "data.size=32",
          "train.batch_size=8", "train.steps=1", "train.log_to=[wandb]"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and "pip install wandb" in err[0], err
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_training_logs_the_same_rows_to_tensorboard(tmp_path, fake_tensorboard):
  from core.train import train
  train(_cfg(log_to=["tensorboard"]), str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  (tb,) = fake_tensorboard.made
  assert [r["step"] for r in rows] == [1, 2]
  assert {(f"train/{k}", float(r[k]), r["step"]) for r in rows for k in ("loss", "lr")} <= \
      set(tb.scalars)


# --- training speed ----------------------------------------------------------------------

def test_run_speed_is_the_median_interval_without_the_first():
  rows = [{"step": 1, "img_per_s": 1.0}, {"step": 2, "img_per_s": 30.0},
          {"step": 3, "img_per_s": 10.0}, {"step": 4, "img_per_s": 20.0}, {"kind": "eval"}]
  assert M.run_speed(rows) == 20.0
  assert M.run_speed(rows[:1]) == 1.0 and M.run_speed([]) is None


def test_combined_speed_is_images_over_seconds_of_every_stage():
  # 1000 images at 100 img/s (10 s) then 3000 at 50 img/s (60 s): 4000 images in 70 s
  assert M.combined_speed([1000, 3000], [100.0, 50.0]) == pytest.approx(4000 / 70)
  assert M.combined_speed([1000], [7.0]) == 7.0
  assert M.combined_speed([1, 1], [5.0, None]) is None
  assert M.images_per_s(64, 2.0) == 32.0


def test_evaluate_training_speed_reads_the_rows_of_each_stage():
  from core.evaluate import training_speed
  def stage(steps, batch, speeds, seconds=0.0):
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(steps=steps, batch_size=batch))
    model = types.SimpleNamespace(cfg=cfg, train_time_s=seconds)
    return types.SimpleNamespace(model=model, rows=[{"img_per_s": v} for v in speeds])
  assert training_speed([stage(10, 100, [1.0, 100.0])]) == 100.0
  # no logged speed: the stage's images over its training seconds
  assert training_speed([stage(10, 100, [], seconds=250.0)]) == 4.0
  assert training_speed([stage(10, 100, [])]) is None
  assert training_speed([stage(10, 100, [1, 100.0]), stage(10, 300, [1, 50.0])]) == \
      pytest.approx(4000 / 70)


# --- the learning-rate schedule ----------------------------------------------------------

def test_logged_lr_is_the_lr_the_optimiser_applies():
  """Adam's first update of a constant gradient is -lr (m_hat / sqrt(v_hat) = 1): the update
  at count k shows the schedule's lr, which the metrics rows' "lr" must equal."""
  import jax.numpy as jnp
  from core.runtime.state import learning_rate, make_optimizer
  from core.config import OptimConfig
  cfg = OptimConfig(lr=1e-3, warmup_steps=3, grad_clip=0.0)
  opt = make_optimizer(cfg)
  p = {"w": jnp.zeros(())}
  for k in range(6):
    state = opt.init(p)
    state = _with_count(state, k)
    u, _ = opt.update({"w": jnp.ones(())}, state, p)
    np.testing.assert_allclose(-float(u["w"]), learning_rate(cfg, k), rtol=1e-5, atol=1e-12)
  assert learning_rate(cfg, 0) == 0.0 and learning_rate(cfg, 3) == learning_rate(cfg, 99) == 1e-3


def _with_count(state, k):
  """The schedule's update count set to k; Adam's own state stays that of a first update."""
  import jax
  import jax.numpy as jnp
  import optax
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  return jax.tree.map(lambda s: s._replace(count=jnp.asarray(k, jnp.int32)) if is_sched(s)
                      else s, state, is_leaf=is_sched)


# --- image extensions, "done", validation --------------------------------------------------

def test_fid_folders_and_the_folder_source_read_the_same_image_files(tmp_path):
  from PIL import Image
  from analysis import fid
  from core.data.sources import FolderSource
  d = tmp_path / "imgs"
  d.mkdir()
  for i, (ext, fmt) in enumerate([(".png", "PNG"), (".JPG", "JPEG"), (".bmp", "BMP"),
                                  (".webp", "WEBP"), (".tiff", "TIFF"), (".gif", "GIF")]):
    Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(d / f"{i}{ext}", format=fmt)
  (d / "notes.txt").write_text("not an image")
  ours = sorted(os.path.basename(f) for f in FolderSource(str(d), "train", 8).files)
  theirs = sorted(p.name for p in fid.list_images(d))
  assert ours == theirs and len(ours) == 6


def test_done_needs_the_status_and_a_readable_eval_json(tmp_path):
  from core.runio import run_done
  rd = tmp_path / "run"
  rd.mkdir()
  assert not run_done(str(rd))
  (rd / "status.json").write_text(json.dumps({"state": "done"}))
  assert not run_done(str(rd))                      # eval.json not written yet
  (rd / "eval.json").write_text('{"fid_train": ')  # torn
  assert not run_done(str(rd))
  (rd / "eval.json").write_text('{"fid_train": 1.0}')
  assert run_done(str(rd))
  (rd / "status.json").write_text(json.dumps({"state": "running"}))
  assert not run_done(str(rd))


@pytest.mark.parametrize("key", ["data.num_workers", "data.prefetch"])
def test_negative_loader_counts_fail_when_the_config_is_resolved(key):
  section, name = key.split(".")
  with pytest.raises(ConfigError, match=rf"^{key} must be >= 0, got -1$"):
    resolve({**MINI, section: {**MINI.get(section, {}), name: -1}})


def test_an_unknown_source_reads_alike_from_resolve_and_from_make_source():
  from core.config import DataConfig
  from core.data.sources import make_source
  with pytest.raises(ConfigError) as a:
    resolve({**MINI, "data": {"source": "nope"}})
  with pytest.raises(ConfigError) as b:
    make_source(DataConfig(source="nope"), 16, "train")
  assert str(a.value) == str(b.value) and "unknown data.source 'nope'" in str(a.value)


# --- import arrows -------------------------------------------------------------------------

def _import_arrows():
  from scripts import import_arrows
  return import_arrows


def test_sweep_runner_and_launcher_do_not_import_each_other():
  a = _import_arrows().graph()
  assert "sweeps.run" not in a["sweeps.launch"] and "sweeps.launch" in a["sweeps.run"]
  assert "sweeps.run" not in a["sweeps.execute"] and "sweeps.launch" not in a["sweeps.execute"]


def test_no_import_cycle_at_any_level():
  """No cycle among the modules of core/, sweeps/ and analysis/, nor among their folders (core.
  data, core.models, ...: two subsystems that import each other are one), counting the imports
  inside functions: a lazy import hides a cycle from Python, not from the reader."""
  ia = _import_arrows()
  assert ia.all_cycles(ia.graph()) == []


def test_the_cycle_check_sees_an_import_inside_a_function():
  ia = _import_arrows()
  g = {"a": {"b": False}, "b": {"c": True}, "c": {"a": True}, "d": {"a": False}}
  assert ia.cycles(g) == [["a", "b", "c"]]
  assert ia.cycles({**g, "c": {}}) == []
  # folders: p.a -> q.b and q.c -> p.d is no cycle of modules, but p and q import each other
  h = {"p.a": {"q.b": False}, "q.b": {}, "q.c": {"p.d": True}, "p.d": {}}
  assert ia.cycles(h) == [] and ia.all_cycles(h) == [["p", "q"]]


def test_floors_run_down_only():
  """core < sweeps < analysis: no import runs back up, at any level."""
  floor = {"core": 0, "sweeps": 1, "analysis": 2}
  up = [(m, d) for m, deps in _import_arrows().graph().items() for d in deps
        if floor[d.split(".")[0]] > floor[m.split(".")[0]]]
  assert up == []


def test_reading_results_does_not_import_jax():
  import subprocess
  code = ("import sys, analysis.make_tables, analysis.results; "
          "print(sorted(m for m in ('jax', 'flax', 'grain') if m in sys.modules))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_evaluation_stands_on_checkpoints_not_on_the_training_engine():
  # Evaluating a checkpoint (core.evaluate, core.runtime.checkpoint.restore_ema) loads no training step
  # or training loop: core.train is not imported (the data pipeline is: the reference
  # statistics read real images through it).
  import subprocess
  import sys
  code = ("import sys, core.evaluate, core.runtime.checkpoint, core.curve; "
          "assert 'core.train' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
      os.path.dirname(os.path.abspath(__file__))))


def test_eval_json_has_one_layout_that_writer_and_readers_share():
  # core.eval_record is eval.json's one definition: a record with a key it does not name (a
  # renamed key) or without a required one is refused, and every key analysis reads is in it.
  from analysis import results
  from core import eval_record
  rec = {k: None for k in eval_record.REQUIRED}
  eval_record.check(rec)
  for bad in ({**rec, "fid_eval_renamed": 1.0}, {k: v for k, v in rec.items() if k != "fid_eval"},
              {**rec, "oracle": {"class_accuracy": 0.5}}):
    with pytest.raises(ValueError, match="eval.json: .*core/eval_record.py"):
      eval_record.check(bad)
  read = {*results.EVAL_KEYS, *results.FLOOR_METRICS, "content", "oracle", "floor", "schedule",
          "sampler", "ema", "step", "settings", "num_samples"}
  assert read <= set(eval_record.KEYS), read - set(eval_record.KEYS)
  assert set(results.CONTENT_KEYS.values()) <= set(eval_record.CONTENT)
  assert set(results.ORACLE_KEYS.values()) | {"num", "floor"} <= set(eval_record.ORACLE)
