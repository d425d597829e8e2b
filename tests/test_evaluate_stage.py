"""Evaluation as its own stage: python -m core.evaluate RUN_DIR samples a finished run from its
saved EMA parameters, writes a new record under evals/ and leaves the run directory intact; the
sweep evaluates through the same code, and a sweep of trained runs builds no data pipeline."""
import os

from core import evaluate
from core.runio import read_json
from sweeps import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(d):
  out = {}
  for base, _, names in os.walk(d):
    for n in names:
      p = os.path.join(base, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, d)] = f.read()
  return out


def test_evaluate_a_finished_run_without_retraining(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  res = str(tmp_path / "results")
  f = os.path.join(ROOT, "ablations/noise_shift.yaml")
  assert runner.main([f, "tier=smoke", "--results", res, "--no-progress", "--only",
                      "128-cosine-s0", f"eval.stats_dir={tmp_path / 'stats'}",
                      "eval.bound=true"]) == 0
  rd = os.path.join(res, "noise_shift_smoke", "128-cosine-s0")
  before = _files(rd)
  ev = read_json(os.path.join(rd, "eval.json"))

  # The same settings from the checkpoint give the sweep's own figures: the saved EMA
  # parameters are the ones training evaluated.
  assert evaluate.main([rd, "--no-progress"]) == 0
  same = read_json(next(os.path.join(rd, "evals", n) for n in os.listdir(os.path.join(rd, "evals"))
                        if n.endswith(".json")))
  assert abs(same["fid_eval"] - ev["fid_eval"]) < 1e-6
  assert abs(same["kid_train"] - ev["kid_train"]) < 1e-9
  assert same["step"] == ev["step"] and same["params"] == ev["params"]
  # The bound in bits/dim on both splits, with its standard error and how it was computed; the
  # same again from the checkpoint (each image's times and noise are its own).
  assert ev["bpd_eval"] > 0 and ev["bpd_eval_se"] > 0 and ev["bpd_train"] > 0
  assert ev["bound"]["eval"]["num"] == 8 and ev["bound"]["logsnr_max"] == 10.0
  assert abs(same["bpd_eval"] - ev["bpd_eval"]) < 1e-6 * ev["bpd_eval"]
  assert ev["ema"]["post_hoc"] is False and ev["ema"]["own_sigma_rel"] > 0

  # Another sample count and sampler: a new record with its settings; nothing else changes.
  # (4 samples: Inception pads them to the sweep's chunk of 8, so it does not compile again.)
  assert evaluate.main([rd, "eval.num_samples=4", "eval.batch_size=4", "sampler.steps=2",
                        "--no-progress"]) == 0
  recs = sorted(n for n in os.listdir(os.path.join(rd, "evals")) if n.endswith(".json"))
  assert len(recs) == 2
  new = [read_json(os.path.join(rd, "evals", n)) for n in recs]
  other = next(r for r in new if r["num_samples"] == 4)
  assert other["sampler"]["steps"] == 2 and other["settings"]["eval"]["num_samples"] == 4
  assert other["overrides"] == {"eval.num_samples": 4, "eval.batch_size": 4,
                                "sampler.steps": 2}
  after = _files(rd)
  assert {k: v for k, v in after.items() if not k.startswith("evals")} == before

  # A key that would change the trained model: one line naming it, nothing written.
  capsys.readouterr()
  assert evaluate.main([rd, "model.base_channels=8", "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "model.base_channels" in err[0]
  # A post-hoc EMA of a model trained without snapshots: one line saying how to get them.
  assert evaluate.main([rd, "ema.sigma_rel=0.08", "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "optim.phema=true" in err[0], err
  assert evaluate.main([str(tmp_path), "--no-progress"]) == 2
  assert "config.yaml" in capsys.readouterr().err
  assert _files(rd) == after


  # The sweep again, evaluating its finished run anew (--reevaluate): its model is trained,
  # so nothing builds a data pipeline or a training step, and eval.json comes out the same.
  import core.data.pipeline
  import core.train

  def no_pipeline(*a, **k):
    raise AssertionError("a data pipeline was built for a trained model")
  monkeypatch.setattr(core.data.pipeline, "make_dataset", no_pipeline)
  monkeypatch.setattr(core.train, "_train", no_pipeline)
  assert runner.main([f, "tier=smoke", "--results", res, "--no-progress", "--only",
                      "128-cosine-s0", f"eval.stats_dir={tmp_path / 'stats'}",
                      "eval.bound=true", "--reevaluate"]) == 0
  again = read_json(os.path.join(rd, "eval.json"))
  assert again["fid_eval"] == ev["fid_eval"] and again["kid_train"] == ev["kid_train"]
  assert again["content"] == ev["content"] and again["step"] == ev["step"]
  assert again["bpd_eval"] == ev["bpd_eval"]
  assert read_json(os.path.join(rd, "status.json"))["state"] == "done"
