"""Bad input, everywhere: every command answers it with one line on stderr that names
the key, file or value and the fix, exit status 2, no traceback, before any training, and
nothing already written is touched.

One table of cases, each (id, build(tmp_path, fx) -> argv, command, expected substring); each
runs the command's main in-process. Nothing here trains: every case must fail before that.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Callable, NamedTuple

import numpy as np
import pytest
import yaml

# A one-step tiny run (as tests/test_sweeps.py's MINI_BASE): valid, so that each case breaks
# one thing only.
MINI = {"resolution": 16, "model": {"preset": "unet_tiny"},
        "data": {"source": "shapes", "size": 32},
        "train": {"batch_size": 8, "steps": 1, "log_every": 1, "ckpt_every": 1, "progress": False},
        "sampler": {"steps": 2}, "eval": {"fid": False, "grid_size": 4, "batch_size": 4}}
# core.train's overrides of the same run
MINI_ARGS = ["resolution=16", "model.preset=unet_tiny", "data.source=shapes", "data.size=32",
             "train.batch_size=8", "train.steps=1", "train.progress=false"]


# --- commands ------------------------------------------------------------------------------

def _sweeps(argv):
  from sweeps.run import main
  return main(argv)


def _train(argv):
  from core.train import main
  main(argv)
  return 0


def _evaluate(argv):
  from core.evaluate import main
  return main(argv)


def _fid(argv):
  from analysis.fid import main
  return main(argv)


def _tables(argv):
  from analysis.make_tables import main
  return main(argv)


def _figures(argv):
  from analysis.make_figures import main
  return main(argv)


def _cost(argv):
  from analysis.cost import main
  return main(argv)


# --- inputs --------------------------------------------------------------------------------

class Fx:
  """The slow inputs that cases share, made once (beside each case's tmp_path)."""

  weights_path = None

  def __init__(self, factory):
    self.factory = factory

  def weights(self) -> str:
    """Fake Inception weights of the right structure (tests/test_fid.py's), written once."""
    if Fx.weights_path is None:
      from core.metrics import inception_weights as W
      from tests.test_fid import fake_params
      p = self.factory.mktemp("weights") / "fake_inception.npz"
      W.save_params(fake_params(), p)
      Fx.weights_path = str(p)
    return Fx.weights_path


def _write(path, text: str | bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb" if isinstance(text, bytes) else "w") as f:
    f.write(text)
  return str(path)


def sweep_file(tmp, spec=None, raw: str | None = None, name="mini.yaml") -> str:
  if raw is None:
    spec = {"name": "mini", "table": "x", "base": MINI, "arms": [{"label": "a"}]} \
        if spec is None else spec
    raw = yaml.safe_dump(spec)
  return _write(tmp / name, raw)


def sweep_with(tmp, **changes) -> str:
  spec = {"name": "mini", "table": "x", "base": MINI, "arms": [{"label": "a"}], **changes}
  return sweep_file(tmp, spec)


def sweeps_args(tmp, *extra) -> list[str]:
  return [sweep_file(tmp), "--results", str(tmp / "results"), "--no-progress", *extra]


def run_dir(tmp, ckpt: bool = False) -> str:
  """A run folder with a valid config.yaml; no checkpoint unless asked (an empty ckpt/)."""
  from core.config import to_dict
  from core.experiment import resolve
  d = tmp / "results" / "mini_paper" / "a-s0"
  _write(d / "config.yaml", yaml.safe_dump(to_dict(resolve(MINI))))
  _write(d / "eval.json", json.dumps({"fid_train": 1.0}))
  if ckpt:
    os.makedirs(d / "ckpt", exist_ok=True)
  return str(d)


def stats(tmp, name, dim=4, nan=False) -> str:
  from core.metrics.fid import compute_stats
  from core.metrics.reference import save_stats
  x = np.random.default_rng(0).normal(size=(8, dim))
  s = compute_stats(x)
  if nan:
    s["mu"][0] = np.nan
  return str(save_stats(tmp / name, s))


def images(tmp, folder="imgs", n=2) -> str:
  from PIL import Image
  d = tmp / folder
  d.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"img{i}.png")
  return str(d)


def _npz(path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


def _corrupt_folder(tmp) -> str:
  d = images(tmp, "withbad")
  _write(tmp / "withbad" / "a_bad.png", b"\x89PNG\r\n\x1a\nnot really")  # sorted first
  return d


def _read_only(path) -> str:
  path.mkdir()
  os.chmod(path, 0o555)
  try:   # root writes anyway: then a read-only folder is no bad input
    _write(path / "probe", "x")
  except OSError:
    return str(path)
  os.remove(path / "probe")
  os.chmod(path, 0o755)
  pytest.skip("this user writes into read-only folders (root)")


def results(tmp, sweep_json=None, raw: str | None = None) -> str:
  """A results folder with one sweep whose sweep.json is `raw` (or sweep_json as JSON)."""
  r = tmp / "results"
  _write(r / "mini_cpu" / "sweep.json", raw if raw is not None else json.dumps(sweep_json))
  return str(r)


# --- cases ---------------------------------------------------------------------------------

class Case(NamedTuple):
  id: str
  build: Callable
  command: Callable
  expect: str
  xfail: str = ""    # why this case still fails: the fix belongs in a module not changed here


S, T, E, F, M, G, C = _sweeps, _train, _evaluate, _fid, _tables, _figures, _cost

CASES = [
  # sweeps.run: the sweep file
  Case("sweep-missing-file", lambda t, fx: [str(t / "nope.yaml")], S, "nope.yaml"),
  Case("sweep-file-is-a-directory", lambda t, fx: [str(t)], S, "is a directory"),
  Case("sweep-empty-file", lambda t, fx: [sweep_file(t, raw="")], S, "mini.yaml"),
  Case("sweep-yaml-null", lambda t, fx: [sweep_file(t, raw="null\n")], S, "mapping"),
  Case("sweep-yaml-scalar", lambda t, fx: [sweep_file(t, raw="3\n")], S, "mapping"),
  Case("sweep-yaml-list", lambda t, fx: [sweep_file(t, raw="- a\n- b\n")], S, "mapping"),
  Case("sweep-not-yaml", lambda t, fx: [sweep_file(t, raw="name: [\n")], S, "not valid YAML"),
  Case("sweep-arms-scalar", lambda t, fx: [sweep_with(t, arms=3)], S, "arms"),
  Case("sweep-arms-null", lambda t, fx: [sweep_with(t, arms=None)], S, "arms"),
  Case("sweep-arms-empty", lambda t, fx: [sweep_with(t, arms=[])], S, "arms"),
  Case("sweep-arm-without-label", lambda t, fx: [sweep_with(t, arms=[{"set": {}}])], S,
       "arms[0]"),
  Case("sweep-arm-not-a-mapping", lambda t, fx: [sweep_with(t, arms=[3])], S, "arms[0]"),
  Case("sweep-arm-set-scalar", lambda t, fx: [sweep_with(t, arms=[{"label": "a", "set": 3}])],
       S, "arms[0]"),
  Case("sweep-base-scalar", lambda t, fx: [sweep_with(t, base=3)], S, "base"),
  Case("sweep-grid-scalar", lambda t, fx: [sweep_with(t, grid=3)], S, "grid"),
  Case("sweep-tiers-list", lambda t, fx: [sweep_with(t, tiers=[1])], S, "tiers"),
  Case("sweep-tier-scalar", lambda t, fx: [sweep_with(t, tiers={"cpu": 3}), "tier=cpu"], S,
       "tiers.cpu"),
  Case("sweep-grid-values-scalar", lambda t, fx: [sweep_with(t, grid={"sampler.steps": 3})], S,
       "grid.sampler.steps"),
  Case("sweep-unknown-file-key", lambda t, fx: [sweep_with(t, armz=[])], S, "armz"),
  # sweeps.run: the command line
  Case("sweep-unknown-tier", lambda t, fx: sweeps_args(t, "tier=huge"), S, "huge"),
  Case("sweep-seeds-0", lambda t, fx: sweeps_args(t, "seeds=0"), S, "seeds"),
  Case("sweep-seeds-abc", lambda t, fx: sweeps_args(t, "seeds=abc"), S, "seeds"),
  Case("sweep-not-key-value", lambda t, fx: sweeps_args(t, "train.steps"), S, "key=value"),
  Case("sweep-unknown-key", lambda t, fx: sweeps_args(t, "train.stepz=3"), S, "train.stepz"),
  Case("sweep-wrong-type", lambda t, fx: sweeps_args(t, "train.steps=many"), S, "train.steps"),
  Case("sweep-value-not-yaml", lambda t, fx: sweeps_args(t, "train.steps=[1,"), S, "train.steps"),
  Case("sweep-not-a-mapping", lambda t, fx: sweeps_args(t, "train=3"), S, "train"),
  Case("sweep-steps-0", lambda t, fx: sweeps_args(t, "train.steps=0"), S, "train.steps"),
  Case("sweep-steps-negative", lambda t, fx: sweeps_args(t, "train.steps=-5"), S, "train.steps"),
  Case("sweep-batch-0", lambda t, fx: sweeps_args(t, "train.batch_size=0"), S, "train.batch_size"),
  Case("sweep-ckpt-every-0", lambda t, fx: sweeps_args(t, "train.ckpt_every=0"), S,
       "train.ckpt_every"),
  Case("sweep-log-every-0", lambda t, fx: sweeps_args(t, "train.log_every=0"), S,
       "train.log_every"),
  Case("sweep-resolution-0", lambda t, fx: sweeps_args(t, "resolution=0"), S, "resolution"),
  Case("sweep-num-samples-0", lambda t, fx: sweeps_args(t, "eval.num_samples=0"), S,
       "eval.num_samples"),
  Case("sweep-sampler-steps-0", lambda t, fx: sweeps_args(t, "sampler.steps=0"), S,
       "sampler.steps"),
  Case("sweep-unknown-schedule", lambda t, fx: sweeps_args(t, "schedule.name=nope"), S,
       "schedule.name"),
  Case("sweep-unknown-loss", lambda t, fx: sweeps_args(t, "loss.name=nope"), S, "loss.name"),
  Case("sweep-unknown-preset", lambda t, fx: sweeps_args(t, "model.preset=nope"), S,
       "model.preset"),
  Case("sweep-unknown-sampler", lambda t, fx: sweeps_args(t, "sampler.name=nope"), S,
       "sampler.name"),
  Case("sweep-unknown-data-source", lambda t, fx: sweeps_args(t, "data.source=nope"), S,
       "data.source"),
  Case("sweep-missing-data-path", lambda t, fx: sweeps_args(
      t, "data.source=folder", f"data.path={t / 'absent'}"), S, "data.path"),
  Case("sweep-only-matches-nothing", lambda t, fx: sweeps_args(t, "--only", "zzz"), S, "--only"),
  Case("sweep-results-is-a-file", lambda t, fx: [
      sweep_file(t), "--results", _write(t / "results", "not a folder")], S, "results"),
  Case("sweep-results-read-only", lambda t, fx: [
      sweep_file(t), "--results", _read_only(t / "ro")], S, "ro"),
  Case("sweep-folder-is-a-file", lambda t, fx: [
      sweep_file(t), "--results", os.path.dirname(_write(t / "results" / "mini_paper", "x")),
      "--no-progress"], S, "mini_paper"),
  # core.train (Hydra)
  Case("train-unknown-key", lambda t, fx: [*MINI_ARGS, "train.stepz=3"], T, "train.stepz"),
  Case("train-unknown-section", lambda t, fx: [*MINI_ARGS, "trian.steps=3"], T, "trian"),
  Case("train-bad-override-syntax", lambda t, fx: [*MINI_ARGS, "train.steps=[1,"], T,
       "train.steps=[1,"),
  Case("train-several-values", lambda t, fx: [*MINI_ARGS, "train.steps=1,2"], T, "--multirun"),
  Case("train-not-key-value", lambda t, fx: [*MINI_ARGS, "steps"], T, "steps"),
  Case("train-wrong-type", lambda t, fx: [*MINI_ARGS, "train.steps=many"], T, "train.steps"),
  Case("train-steps-0", lambda t, fx: [*MINI_ARGS, "train.steps=0"], T, "train.steps"),
  Case("train-batch-negative", lambda t, fx: [*MINI_ARGS, "train.batch_size=-8"], T,
       "train.batch_size"),
  Case("train-ckpt-every-0", lambda t, fx: [*MINI_ARGS, "train.ckpt_every=0"], T,
       "train.ckpt_every"),
  Case("train-log-every-0", lambda t, fx: [*MINI_ARGS, "train.log_every=0"], T, "train.log_every"),
  Case("train-resolution-0", lambda t, fx: [*MINI_ARGS, "resolution=0"], T, "resolution"),
  Case("train-unknown-schedule", lambda t, fx: [*MINI_ARGS, "schedule.name=nope"], T,
       "schedule.name"),
  Case("train-unknown-loss", lambda t, fx: [*MINI_ARGS, "loss.name=nope"], T, "loss.name"),
  Case("train-phema-without-lengths", lambda t, fx: [
      *MINI_ARGS, "optim.phema=true", "optim.phema_sigma_rels=[]"], T, "optim.phema_sigma_rels"),
  Case("train-unknown-preset", lambda t, fx: [*MINI_ARGS, "model.preset=nope"], T, "model.preset"),
  Case("train-unknown-data-source", lambda t, fx: [*MINI_ARGS, "data.source=nope"], T,
       "data.source"),
  Case("train-missing-data-path", lambda t, fx: [
      *MINI_ARGS, "data.source=folder", f"data.path={t / 'absent'}"], T, "data.path"),
  Case("train-model-does-not-fit", lambda t, fx: [*MINI_ARGS, "model.frontend=patch:3"], T,
       "model.frontend"),
  # core.evaluate
  Case("evaluate-missing-dir", lambda t, fx: [str(t / "absent")], E, "config.yaml"),
  Case("evaluate-not-a-run", lambda t, fx: [str(t)], E, "config.yaml"),
  Case("evaluate-no-checkpoint", lambda t, fx: [run_dir(t)], E, "checkpoint"),
  Case("evaluate-unknown-key", lambda t, fx: [run_dir(t, ckpt=True), "eval.num_sample=3"], E,
       "eval.num_sample"),
  Case("evaluate-not-key-value", lambda t, fx: [run_dir(t, ckpt=True), "eval.num_samples"], E,
       "key=value"),
  Case("evaluate-training-key", lambda t, fx: [run_dir(t, ckpt=True), "train.steps=3"], E,
       "train.steps"),
  Case("evaluate-num-samples-0", lambda t, fx: [run_dir(t, ckpt=True), "eval.num_samples=0"], E,
       "eval.num_samples"),
  Case("evaluate-sampler-steps-0", lambda t, fx: [run_dir(t, ckpt=True), "sampler.steps=0"], E,
       "sampler.steps"),
  Case("evaluate-unknown-sampler", lambda t, fx: [run_dir(t, ckpt=True), "sampler.name=nope"], E,
       "sampler.name"),
  Case("evaluate-value-not-yaml", lambda t, fx: [run_dir(t, ckpt=True), "sampler.steps=[1,"], E,
       "sampler.steps"),
  Case("evaluate-wrong-type", lambda t, fx: [run_dir(t, ckpt=True), "sampler.steps=many"], E,
       "sampler.steps"),
  Case("evaluate-ema-too-long", lambda t, fx: [run_dir(t, ckpt=True), "ema.sigma_rel=0.5"], E,
       "ema.sigma_rel=0.5 is outside (0, 0.288)"),
  Case("evaluate-bound-end-points-swapped", lambda t, fx: [
      run_dir(t, ckpt=True), "eval.bound_logsnr_min=12"], E, "eval.bound_logsnr_min=12"),
  Case("evaluate-unknown-bound-schedule", lambda t, fx: [
      run_dir(t, ckpt=True), "eval.bound_schedule=nope"], E, "eval.bound_schedule"),
  Case("evaluate-config-not-yaml", lambda t, fx: [
      os.path.dirname(_write(t / "run" / "config.yaml", "resolution: [\n"))], E, "config.yaml"),
  Case("evaluate-config-a-list", lambda t, fx: [
      os.path.dirname(_write(t / "run" / "config.yaml", "- 1\n"))], E, "config.yaml"),
  # analysis.fid
  Case("fid-missing-path", lambda t, fx: [str(t / "absent"), images(t)], F, "absent"),
  Case("fid-empty-folder", lambda t, fx: [str((t / "empty").mkdir() or t / "empty"), images(t)],
       F, "empty"),
  Case("fid-stats-dims-differ", lambda t, fx: [stats(t, "a.npz", 4), stats(t, "b.npz", 6)], F,
       "b.npz"),
  Case("fid-stats-nan", lambda t, fx: [stats(t, "a.npz"), stats(t, "b.npz", nan=True)], F,
       "b.npz"),
  Case("fid-npz-without-stats-or-images", lambda t, fx: [
      stats(t, "a.npz"), _npz(t / "b.npz", x=np.zeros(3))], F, "b.npz"),
  Case("fid-npz-corrupt", lambda t, fx: [stats(t, "a.npz"), _write(t / "b.npz", b"not a zip")], F,
       "b.npz"),
  Case("fid-npz-torn-zip", lambda t, fx: [
      stats(t, "a.npz"), _write(t / "b.npz", b"PK\x03\x04torn")], F, "b.npz"),
  Case("fid-stats-sigma-not-square", lambda t, fx: [
      stats(t, "a.npz"), _npz(t / "b.npz", mu=np.zeros(4), sigma=np.zeros((4, 3)))], F, "b.npz"),
  Case("fid-not-an-image-kind", lambda t, fx: [_write(t / "a.txt", "x"), images(t)], F, "a.txt"),
  Case("fid-corrupt-image", lambda t, fx: [
      _corrupt_folder(t), stats(t, "b.npz"), "--weights", fx.weights(), "--batch-size", "8",
      "--quiet"], F, "a_bad.png"),
  Case("fid-batch-size-0", lambda t, fx: [stats(t, "a.npz"), stats(t, "b.npz"), "--batch-size",
                                          "0"], F, "--batch-size"),
  # analysis.make_tables / make_figures
  Case("tables-missing-folder", lambda t, fx: [str(t / "absent")], M, "absent"),
  Case("tables-folder-is-a-file", lambda t, fx: [_write(t / "results", "x")], M, "not a folder"),
  Case("tables-sweep-json-torn", lambda t, fx: [results(t, raw='{"runs": [')], M, "sweep.json"),
  Case("tables-sweep-json-a-list", lambda t, fx: [results(t, [1, 2])], M, "sweep.json"),
  Case("tables-sweep-json-runs-a-number", lambda t, fx: [results(t, {"sweep": "mini", "runs": 5})],
       M, "sweep.json"),
  Case("tables-out-is-a-file", lambda t, fx: [
      results(t, {"sweep": "mini", "runs": []}), "--out", _write(t / "out", "x")], M, "out"),
  Case("figures-missing-folder", lambda t, fx: [str(t / "absent")], G, "absent"),
  Case("figures-folder-is-a-file", lambda t, fx: [_write(t / "results", "x")], G, "not a folder"),
  Case("figures-sweep-json-torn", lambda t, fx: [results(t, raw="\xff")], G, "sweep.json"),
  Case("figures-sweep-json-runs-a-number", lambda t, fx: [
      results(t, {"sweep": "mini", "runs": 5})], G, "sweep.json"),
  Case("figures-out-is-a-file", lambda t, fx: [
      results(t, {"sweep": "mini", "runs": []}), "--out", _write(t / "out", "x")], G, "out"),
  # analysis.cost
  Case("cost-missing-file", lambda t, fx: [str(t / "nope.yaml"), "--no-write"], C, "nope.yaml"),
  Case("cost-file-is-a-directory", lambda t, fx: [str(t), "--no-write"], C, "is a directory"),
  Case("cost-arms-null", lambda t, fx: [sweep_with(t, arms=None), "--no-write"], C, "arms"),
  Case("cost-unknown-tier", lambda t, fx: [sweep_file(t), "tier=huge", "--no-write"], C, "huge"),
  Case("cost-seeds-abc", lambda t, fx: [sweep_file(t), "seeds=abc", "--no-write"], C, "seeds"),
  Case("cost-unknown-key", lambda t, fx: [sweep_file(t), "train.stepz=1", "--no-write"], C,
       "train.stepz"),
  Case("cost-batch-0", lambda t, fx: [sweep_file(t), "train.batch_size=0", "--no-write"], C,
       "train.batch_size"),
  Case("cost-unknown-preset", lambda t, fx: ["--preset", "nope", "--resolution", "16"], C, "nope"),
  Case("cost-option-batch-0", lambda t, fx: [sweep_file(t), "--batch", "0", "--no-write"], C,
       "--batch"),
  Case("cost-measure-steps-0", lambda t, fx: [sweep_file(t), "--measure-steps", "0",
                                              "--no-write"], C, "--measure-steps"),
  Case("cost-no-file", lambda t, fx: ["tier=cpu", "--no-write"], C, "sweep file"),
]


# --- the test ------------------------------------------------------------------------------

def _tree(root) -> dict[str, str]:
  out = {}
  for base, _, names in os.walk(root):
    for n in names:
      p = os.path.join(base, n)
      if os.path.isfile(p):
        with open(p, "rb") as f:
          out[os.path.relpath(p, root)] = hashlib.sha1(f.read()).hexdigest()
  return out


def _call(command, argv) -> int:
  try:
    return command(argv)
  except SystemExit as e:   # as the interpreter takes it: a string is printed, status 1
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
      return 1
    return 0 if e.code is None else e.code


def test_cases_cover_every_command():
  assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
  assert {c.command for c in CASES} == {S, T, E, F, M, G, C}


def _no_training(*args, **kwargs):
  raise AssertionError("training started on bad input")


PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                       if c.xfail else []) for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_one_line_exit_2_nothing_touched(case, tmp_path, tmp_path_factory,
                                                      monkeypatch, capsys):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  monkeypatch.chdir(tmp_path)           # core.train's default workdir is relative
  monkeypatch.setattr(sys, "argv", [sys.argv[0]])   # Hydra reads (and run_hydra sets) it
  import core.train
  monkeypatch.setattr(core.train, "_train", _no_training)   # a case that trains fails
  argv = case.build(tmp_path, Fx(tmp_path_factory))
  before = _tree(tmp_path)
  capsys.readouterr()
  code = _call(case.command, argv)
  out, err = capsys.readouterr()
  after = _tree(tmp_path)
  assert "Traceback" not in out + err, err
  lines = err.strip().splitlines()
  assert code == 2, (code, err)
  assert len(lines) == 1, err
  assert case.expect in lines[0], lines[0]
  assert lines[0].startswith("error: "), lines[0]
  new = {k for k in after if k not in before and not k.startswith("cache" + os.sep)}
  assert not new, f"files written on bad input: {sorted(new)}"
  assert {k: after.get(k) for k in before} == before, "an existing file changed or went"
