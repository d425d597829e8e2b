"""Evaluation over the mesh: each device draws its share of a batch, each process
its share across hosts, and the statistics come out as on one device."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from core import evaluate as ev_lib
from core.metrics import features
from core.experiment import resolve
from core.runtime.generate import make_sampler
from core.runtime.checkpoint import trained_model
from core.devices import make_mesh
from core.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_fid import fake_params  # noqa: E402

CFG = {"resolution": 16, "model": {"preset": "unet_tiny"}, "data": {"source": "shapes", "size": 64},
       "sampler": {"steps": 4},
       "eval": {"num_samples": 16, "batch_size": 16, "ref_num": 16, "grid_size": 16,
                "compute_is": False}}


def eval_config(weights: str, stats: str):
  d = json.loads(json.dumps(CFG))
  d["eval"].update(inception_weights=str(weights), stats_dir=str(stats))
  return resolve(d)


def evaluate_untrained(cfg, run_dir: str) -> dict:
  """core.evaluate.evaluate on the initial parameters (no training: the statistics are what is
  tested)."""
  # One process: the trainer on one device, so the sampler's mesh is the only variable; several:
  # the global mesh, as a multi-host run has it.
  tr = Trainer(cfg, make_mesh(jax.devices()[:1]) if jax.process_count() == 1 else None)
  st = tr.init(jax.random.key(0))
  stage = ev_lib.Stage(trained_model(tr, st), [])
  return ev_lib.evaluate(ev_lib.Evaluation(cfg, (stage,), os.path.join(run_dir, "samples.png"),
                                           progress=False))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  from core.metrics import inception_weights as W
  path = tmp_path_factory.mktemp("weights") / "fake_inception.npz"
  W.save_params(fake_params(), path)
  return path


def test_sampler_output_is_sharded_over_data_an_eighth_per_device():
  cfg = resolve(CFG)
  tr = Trainer(cfg, make_mesh(jax.devices()[:1]))
  params = tr.init(jax.random.key(0)).ema_params
  labels = np.arange(16, dtype=np.int32) % 10
  x = make_sampler(tr, params, cfg, 16)(jax.random.key(3), labels)
  assert jax.device_count() == 8 and x.sharding.mesh.devices.size == 8
  assert x.sharding.spec == P("data")
  assert sorted(s.data.shape[0] for s in x.addressable_shards) == [2] * 8
  one = make_sampler(tr, params, cfg, 16, mesh=make_mesh(jax.devices()[:1]))(
      jax.random.key(3), labels)
  assert one.sharding.mesh.devices.size == 1
  np.testing.assert_allclose(np.asarray(x), np.asarray(one), atol=1e-5)


def test_fid_and_kid_on_8_devices_equal_1_device(weights, tmp_path, monkeypatch):
  cfg = eval_config(weights, tmp_path / "stats")
  features._EXTRACTORS.clear()
  eight = evaluate_untrained(cfg, str(tmp_path / "a"))
  assert eight["devices"] == 8
  real = jax.devices, jax.local_devices
  monkeypatch.setattr(jax, "devices", lambda *a: real[0](*a)[:1])
  monkeypatch.setattr(jax, "local_devices", lambda *a, **k: real[1](*a, **k)[:1])
  features._EXTRACTORS.clear()
  one = evaluate_untrained(cfg, str(tmp_path / "b"))
  features._EXTRACTORS.clear()
  assert one["devices"] == 1
  for k in ("fid_train", "fid_eval", "kid_train", "kid_eval"):
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-6, atol=1e-9, err_msg=k)


# Slow (73 s, two JAX processes): with the two-process training test, `python -m pytest -m
# slow` runs the multi-host path; the default run keeps the 8-device sharded evaluation's parity.
@pytest.mark.slow
def test_two_processes_evaluate_as_one(weights, tmp_path):
  """Two processes of 4 devices each, joined by jax.distributed on localhost: each draws and
  extracts its half of every batch, the features are gathered, only process 0 writes."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  worker = os.path.join(HERE, "dist_worker.py")
  procs = [subprocess.Popen([sys.executable, worker, port, str(i), str(tmp_path / f"p{i}.json"),
                             "eval", str(weights), str(tmp_path / f"run{i}")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SIMPLEDIFF_CACHE": str(tmp_path / f"cache{i}")})
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
  features._EXTRACTORS.clear()
  one = evaluate_untrained(eval_config(weights, tmp_path / "stats"), str(tmp_path / "one"))
  for i in range(2):
    got = json.load(open(tmp_path / f"p{i}.json"))
    assert got["processes"] == 2 and got["devices"] == 8
    for k in ("fid_train", "fid_eval", "kid_train", "kid_eval"):
      np.testing.assert_allclose(got[k], one[k], rtol=1e-6, atol=1e-9, err_msg=(i, k))
  assert os.path.exists(tmp_path / "run0" / "samples.png")
  assert not os.path.exists(tmp_path / "run1" / "samples.png")   # only process 0 writes
