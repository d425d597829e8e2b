"""Ownership of run and model folders: two processes never write the same run."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from analysis.results import metrics_path
from core.runio import DirLock, LockHeld, read_json, read_jsonl
from sweeps import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNIO = os.path.join(ROOT, "core", "runio.py")

# Another process holding a folder with the real DirLock; loads runio.py alone (no JAX), so it
# starts in a fraction of a second. Prints "held" once it owns the folder.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("runio", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
lock = m.DirLock(sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""


def _hold(folder, seconds=600.0):
  p = subprocess.Popen([sys.executable, "-c", HOLDER, RUNIO, str(folder), str(seconds)],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def _kill(p):
  p.send_signal(signal.SIGKILL)
  p.wait()


def test_a_folder_has_one_owner_and_a_dead_owner_frees_it(tmp_path):
  d = tmp_path / "run"
  p = _hold(d)
  try:
    with pytest.raises(LockHeld) as e:
      DirLock(str(d)).acquire()
    assert e.value.holder["pid"] == p.pid and str(p.pid) in str(e.value)
    assert "in use by" in str(e.value)
  finally:
    _kill(p)
  # SIGKILL gave the holder no chance to clean up: its file stays, and the lock is free anyway
  assert read_json(str(d / ".lock"))["pid"] == p.pid
  with DirLock(str(d)) as lock:
    assert lock.held and read_json(str(d / ".lock"))["pid"] == os.getpid()
    with pytest.raises(LockHeld):   # a second owner in the same process is refused too
      DirLock(str(d)).acquire()
  assert not (d / ".lock").exists()


def test_a_waiter_takes_the_folder_when_its_owner_is_done(tmp_path):
  d = tmp_path / "model"
  p = _hold(d, seconds=1.5)
  said = []
  t = time.monotonic()
  with DirLock(str(d), wait_s=60, poll_s=0.1, on_wait=said.append):
    waited = time.monotonic() - t
  p.wait()
  assert 0.5 < waited < 30 and len(said) == 1 and str(p.pid) in said[0]


MINI = {"resolution": 16, "model": {"preset": "unet_tiny"}, "data": {"source": "shapes", "size": 32},
        "train": {"batch_size": 8, "steps": 1, "log_every": 1, "ckpt_every": 1, "progress": False},
        "sampler": {"steps": 2}, "eval": {"fid": False, "grid_size": 4, "batch_size": 4}}


def test_a_run_another_process_holds_is_skipped_untouched_then_done_on_rerun(tmp_path, capsys,
                                                                            monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  sweep = tmp_path / "mini.yaml"
  sweep.write_text(yaml.safe_dump({"name": "mini", "table": "x", "base": MINI,
                                   "arms": [{"label": "a"}, {"label": "b", "set": {"train.seed": 1}}]}))
  sdir = tmp_path / "r" / "mini_paper"
  argv = [str(sweep), "--results", str(tmp_path / "r"), "--no-progress"]
  p = _hold(sdir / "a-s0")
  try:
    assert runner.main(argv) == 0
  finally:
    _kill(p)
  out = capsys.readouterr()
  assert f"a-s0: in use by pid {p.pid}" in out.out and "rerun this command" in out.err
  assert os.listdir(sdir / "a-s0") == [".lock"]    # nothing written beside its owner
  assert read_json(str(sdir / "b-s0" / "status.json"))["state"] == "done"
  # The owner died (SIGKILL): the rerun takes the run over; the finished one is left alone.
  b_eval = read_json(str(sdir / "b-s0" / "eval.json"))
  assert runner.main(argv) == 0
  out = capsys.readouterr().out
  assert "b-s0: done, skipped" in out
  assert read_json(str(sdir / "a-s0" / "status.json"))["state"] == "done"
  assert read_json(str(sdir / "b-s0" / "eval.json")) == b_eval
  assert [r["step"] for r in read_jsonl(metrics_path(str(sdir / "a-s0")))] == [1]
  assert not (sdir / "a-s0" / ".lock").exists()


def test_a_model_in_training_elsewhere_is_waited_for_not_trained_beside(tmp_path, capsys,
                                                                       monkeypatch):
  """Two sweeps sharing a trained model: the second waits for the first's training."""
  from sweeps.spec import expand
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  sweep = tmp_path / "mini.yaml"
  sweep.write_text(yaml.safe_dump({"name": "mini", "table": "x", "base": MINI,
                                   "arms": [{"label": "a"}]}))
  _, runs = expand(str(sweep), "paper")
  model_dir = tmp_path / "r" / "_models" / runs[0].train_key
  p = _hold(model_dir, seconds=3)
  assert runner.main([str(sweep), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
  p.wait()
  assert f"waiting for pid {p.pid}" in capsys.readouterr().out
  assert [r["step"] for r in read_jsonl(str(model_dir / "metrics.jsonl"))] == [1]


def test_redo_never_moves_a_run_that_another_process_holds(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  sweep = tmp_path / "mini.yaml"
  sweep.write_text(yaml.safe_dump({"name": "mini", "table": "x", "base": MINI,
                                   "arms": [{"label": "a"}]}))
  rd = tmp_path / "r" / "mini_paper" / "a-s0"
  rd.mkdir(parents=True)
  (rd / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": 99}}))
  p = _hold(rd)
  try:
    code = runner.main([str(sweep), "--results", str(tmp_path / "r"), "--no-progress", "--redo"])
  finally:
    _kill(p)
  err = capsys.readouterr().err
  assert code == 2 and "--redo" in err and f"pid {p.pid}" in err and len(err.splitlines()) == 1
  assert (rd / "config.yaml").exists() and not (rd.parent / "_replaced").exists()


@pytest.mark.slow
def test_the_same_sweep_started_twice_trains_each_run_once(tmp_path):
  env = {**os.environ, "SIMPLEDIFF_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
  cmd = [sys.executable, "-m", "sweeps.run", "ablations/dropout.yaml", "tier=smoke",
         "--results", str(tmp_path / "r"), "--no-progress", "eval.fid=false",
         "--only", "none", "--only", "r=128", "train.steps=20", "train.ckpt_every=5"]
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  sdir = tmp_path / "r" / "dropout_smoke"
  for rid in ("128-none-s0", "128-r=128-s0"):
    assert read_json(str(sdir / rid / "status.json"))["state"] == "done"
    steps = [r["step"] for r in read_jsonl(metrics_path(str(sdir / rid)))]
    assert steps == list(range(1, 21)), (rid, steps)
