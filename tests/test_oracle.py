"""The oracle (core.metrics.oracle): it reads the scene back far above chance, the metric path from a
run's samples to its figures reads real images as the oracle itself does, its training is
deterministic, and a learning curve's last point is the evaluation's own figure.

The default-recipe oracle of shapes_simple at 16 px ships in core/metrics/oracles/ (made by
`python -m core.metrics.oracle shapes_simple 16`, then copied), so the suite trains none of its own.
"""
import json
import os

import numpy as np
import pytest

from core.metrics import oracle as oracle_lib
from core.config import ExperimentConfig, replace

STORED = os.path.join(oracle_lib.SHIPPED, os.path.basename(
    oracle_lib.oracle_path("shapes_simple", 16)))


def _cfg(resolution=16, content=0, n=400, **over):
  cfg = replace(ExperimentConfig(), **{
      "resolution": resolution, "data.source": "shapes_simple", "data.size": n,
      "data.content_resolution": content, "eval.batch_size": 200, "model.num_classes": 10,
      "eval.oracle": True})
  return replace(cfg, **over) if over else cfg


def test_the_shipped_oracle_is_the_default_recipe_s():
  # its name is the cache key of today's recipe and renderer: an edit to either must ship a
  # new one (python -m core.metrics.oracle shapes_simple 16, then copy it to core/metrics/oracles/)
  assert os.path.isfile(STORED), "core/metrics/oracles/ lacks the default oracle of shapes_simple 16"


@pytest.fixture
def stored_oracle(tmp_path, monkeypatch):
  """The shipped oracle, read from core/metrics/oracles/ by load_oracle in a fresh cache folder."""
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  oracle_lib._LOADED.clear()
  oracle_lib._REAL.clear()
  yield oracle_lib.load_oracle("shapes_simple", 16, log=pytest.fail)
  oracle_lib._LOADED.clear()
  oracle_lib._REAL.clear()


def test_the_oracle_reads_held_out_scenes_and_a_random_network_does_not(stored_oracle):
  # images it never saw (the test split past its report's 10,000), through the metric's path
  cfg = _cfg(n=11_000)
  images, labels, targets = oracle_lib.render_set("shapes_simple", 16, "test", 11_000)
  images, labels, targets = images[10_000:], labels[10_000:], targets[10_000:]
  o = oracle_lib.read_images(stored_oracle, images)
  acc = oracle_lib.class_accuracy(o, labels)
  assert acc["accuracy"] > 0.8, acc
  mae = np.abs(o["targets"] - targets).mean(0)
  assert mae[:3].max() < 0.06, mae        # centre and size to a pixel at 16 px
  # the same network untrained: chance, and its features far from real ones
  import jax
  import jax.numpy as jnp
  net = oracle_lib._net(stored_oracle.recipe)
  rand = net.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
  r = oracle_lib.Oracle("shapes_simple", 16, stored_oracle.recipe, rand, {})
  assert oracle_lib.class_accuracy(oracle_lib.read_images(r, images), labels)["accuracy"] < 0.25
  assert cfg.resolution == 16


def test_the_metric_path_reads_real_images_as_the_oracle_does(stored_oracle):
  n = 400
  images, labels, _ = oracle_lib.render_set("shapes_simple", 16, "test", n)
  own = oracle_lib.class_accuracy(stored_oracle.read(images), labels)["accuracy"]
  # at the content resolution itself: the very same images, the very same figure
  at16 = oracle_lib.real_reads(_cfg(16, n=n), "test", n, stored_oracle)
  assert np.array_equal(at16["asked"], labels)
  assert oracle_lib.class_accuracy(at16, at16["asked"])["accuracy"] == own
  # made at 16 px, upsampled (bicubic) to 64, box-downsampled back by the metric: the same
  # scenes read within a few images
  at64 = oracle_lib.real_reads(_cfg(64, content=16, n=n), "test", n, stored_oracle)
  assert np.array_equal(at64["asked"], labels)
  acc64 = oracle_lib.class_accuracy(at64, at64["asked"])["accuracy"]
  assert abs(acc64 - own) < 0.03, (acc64, own)
  assert (at64["label"] == at16["label"]).mean() > 0.9
  # and run_scores' floor for real images is that accuracy
  s = oracle_lib.run_scores(_cfg(64, content=16, n=n), stored_oracle,
                            {k: v for k, v in at64.items() if k != "asked"}, at64["asked"])
  assert s["class_acc"] == acc64 and s["floor"]["class_acc"] == acc64
  assert s["resolution"] == 16 and s["num"] == n


def test_wilson_interval():
  lo, hi = oracle_lib.wilson(50, 100)
  assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
  assert oracle_lib.wilson(0, 10)[0] == 0.0
  assert oracle_lib.wilson(10, 10)[1] == pytest.approx(1.0)


def test_training_is_deterministic(tmp_path, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  recipe = oracle_lib.Recipe(train_size=256, held_out=64, steps=20, batch=32, width=8)
  a = oracle_lib.train_oracle("shapes_simple", 16, recipe, progress=False, log=lambda s: None)
  b = oracle_lib.train_oracle("shapes_simple", 16, recipe, progress=False, log=lambda s: None)
  import jax
  same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a.params, b.params)
  assert all(jax.tree.leaves(same))
  assert a.report == {**b.report, "train_time_s": a.report["train_time_s"]}


def test_flipped_targets_mirror_the_centre():
  t = np.array([[0.2, 0.3, 0.25, 1, 0, 0, 0, 0, 1]], np.float32)
  f = oracle_lib.flip_targets(t)
  assert f[0, 0] == pytest.approx(0.8) and np.array_equal(f[0, 1:], t[0, 1:])


def test_no_oracle_for_data_that_are_not_scenes():
  assert oracle_lib.oracle_resolution(_cfg(**{"data.source": "folder"})) is None
  assert oracle_lib.oracle_resolution(_cfg(**{"eval.oracle": False})) is None
  assert oracle_lib.oracle_resolution(_cfg(64, content=16)) == 16
  assert oracle_lib.oracle_resolution(_cfg(32)) == 32


def test_a_sweep_records_the_oracle_and_its_curve_ends_on_the_evaluation(
    stored_oracle, tmp_path):
  """A smoke run with the oracle on and a learning curve every 2 steps: eval.json carries the
  oracle's figures, and the curve's last point (same samples: curve_num = num_samples, the
  evaluation's keys) equals them; the samples' reading is saved for figures."""
  from sweeps.run import main
  results = tmp_path / "results"
  rc = main(["ablations/noise_shift.yaml", "tier=smoke", "--results", str(results), "--only",
             "64-cosine-s0", "--no-progress", "data.source=shapes_simple", "eval.oracle=true",
             "eval.every=2", "eval.curve_num=8", "train.steps=4", "eval.curve_fid_every=4",
             "eval.memorisation=true"])
  assert rc == 0
  run = results / "noise_shift_smoke" / "64-cosine-s0"
  ev = json.loads((run / "eval.json").read_text())
  o = ev["oracle"]
  assert o["num"] == 8 and o["resolution"] == 16
  assert o["held_out_accuracy"] == stored_oracle.report["accuracy"]
  curve_files = list((results / "_models").glob("*/curve.jsonl"))
  rows = [json.loads(x) for x in curve_files[0].read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4]
  assert rows[-1]["class_acc"] == o["class_acc"] and rows[-1]["fd_eval"] == o["fd_eval"]
  # FID @content at the multiples of curve_fid_every: the evaluation's own at the last step
  assert "fid_content" not in rows[0]
  assert abs(rows[-1]["fid_content"] - ev["content"]["fid_eval"]) < 1e-6
  # memorisation against the 512 training images of the smoke tier, in the record and the curve
  m = ev["memorisation"]
  assert m["num"] == 8 and m["train_images"] == 512 and 0 <= m["copy_fraction"] <= 1
  assert rows[-1]["nn_ratio"] == m["nn_ratio"]
  z = np.load(run / "oracle.npz")
  assert len(z["label"]) == 8 and len(z["asked"]) == 8 and z["real_targets"].shape == (8, 9)
