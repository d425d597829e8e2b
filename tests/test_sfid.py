"""sFID (the ADM evaluator's spatial FID) and ADM reference batches.

Golden values: tests/data/sfid_golden.npz, made by scripts/make_sfid_golden.py with the ADM
evaluator's own numpy code (openai/guided-diffusion evaluations/evaluator.py). The network's
spatial features against default_1.pt: tests/test_fid.py::test_features_match_torchscript_reference.
"""

import numpy as np
import pytest

from analysis import fid as CLI
from core.metrics import features as X
from core.metrics import fid as F
from core.metrics import reference as R
from tests.golden import load as golden_npz


@pytest.fixture(scope="module")
def golden():
  return golden_npz("sfid_golden.npz")


@pytest.fixture(scope="module")
def sets(golden):
  """The golden's feature sets, rebuilt from integers (RandomState streams are frozen) and
  checked against the digest the script stored."""
  from scripts.make_sfid_golden import make_sets, sets_digest
  a, b = make_sets()
  assert sets_digest(a, b) == str(golden["sets_sha256"]), "make_sets() no longer gives the golden's sets"
  return a, b


def _spatial(x):
  """Statistics with only the sFID part, as an ADM reference batch's mu_s, sigma_s."""
  s = F.compute_stats(x)
  return {"mu_s": s["mu"], "sigma_s": s["sigma"], "count": s["count"]}


def test_sfid_matches_adm_evaluator_few_samples(golden, sets):
  """Fewer samples than the 2023 dimensions (small evaluations): the low-rank route that
  evaluation takes against the evaluator's compute_statistics + frechet_distance."""
  a, b = sets
  na, nb = golden["few_rows"]
  assert not golden["few_eps"]   # the evaluator's sqrtm needed no eps offset here
  got = F.sfid_features_vs_stats(a[:na], _spatial(b[:nb]))
  assert got == pytest.approx(float(golden["few_sfid"]), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full", "unequal", "few"])
def test_sfid_matches_adm_evaluator(golden, sets, case):
  """Each case by both routes: statistics against statistics, and features against statistics."""
  a, b = sets
  na, nb = golden[f"{case}_rows"]
  want = float(golden[f"{case}_sfid"])
  assert F.sfid_from_stats(_spatial(a[:na]), _spatial(b[:nb])) == pytest.approx(want, rel=1e-6)
  assert F.sfid_features_vs_stats(a[:na], _spatial(b[:nb])) == pytest.approx(want, rel=1e-6)


def test_spatial_statistics_are_optional():
  rng = np.random.default_rng(0)
  pool, spatial = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
  s = F.compute_stats(pool, spatial)
  np.testing.assert_array_equal(s["mu_s"], F.compute_stats(spatial)["mu"])
  plain = F.compute_stats(pool)
  assert "mu_s" not in plain and F.spatial_stats(plain) is None
  assert F.sfid_from_stats(s, plain) is None and F.sfid_features_vs_stats(spatial, plain) is None
  assert F.sfid_from_stats(s, s) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="spatial feature vectors"):
    F.compute_stats(pool, spatial[:5])


def _adm_batch(path, rng, n=5, dim=4, dim_s=3, drop=()):
  """An npz laid out as the ADM evaluator's reference batches: arr_0 images and the stats of
  pool_3 (mu, sigma) and of the spatial features (mu_s, sigma_s), no count."""
  arrays = {"arr_0": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "mu": rng.normal(size=dim), "sigma": np.eye(dim) * 2.0,
            "mu_s": rng.normal(size=dim_s), "sigma_s": np.eye(dim_s) * 3.0}
  np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
  return arrays


def test_adm_reference_batch_loads_as_statistics(tmp_path):
  rng = np.random.default_rng(1)
  want = _adm_batch(tmp_path / "VIRTUAL_ref.npz", rng, n=7)
  st = R.load_stats(tmp_path / "VIRTUAL_ref.npz")
  assert st["count"] == 7   # from arr_0's header
  for k in ("mu", "sigma", "mu_s", "sigma_s"):
    np.testing.assert_array_equal(st[k], want[k])
  src = CLI.open_source(tmp_path / "VIRTUAL_ref.npz")
  assert src.stats is not None and src.images is None and src.count == 7
  # our saved statistics carry mu_s, sigma_s under the same names
  R.save_stats(tmp_path / "ours.npz", st)
  again = R.load_stats(tmp_path / "ours.npz")
  np.testing.assert_array_equal(again["sigma_s"], want["sigma_s"])
  assert F.sfid_from_stats(again, st) == 0.0


@pytest.mark.parametrize("drop, missing", [(("sigma_s",), "sigma_s"), (("mu",), "mu"),
                                           (("mu", "sigma"), "'mu' and 'sigma'")])
def test_adm_reference_batch_missing_key_is_one_line(tmp_path, drop, missing):
  _adm_batch(tmp_path / "ref.npz", np.random.default_rng(2), drop=drop)
  for load in (R.load_stats, CLI.open_source):   # open_source must not fall back to its images
    with pytest.raises(ValueError) as e:
      load(tmp_path / "ref.npz")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "ref.npz")) and missing in msg and "\n" not in msg


def test_cli_prints_sfid_against_an_adm_reference_batch(tmp_path, capsys):
  from analysis.fid import main
  rng = np.random.default_rng(3)
  _adm_batch(tmp_path / "ref.npz", rng)
  a = F.compute_stats(rng.normal(size=(9, 4)), rng.normal(size=(9, 3)))
  R.save_stats(tmp_path / "a.npz", a)
  assert main([str(tmp_path / "a.npz"), str(tmp_path / "ref.npz")]) == 0
  out = dict(l.split(": ") for l in capsys.readouterr().out.splitlines())
  ref = R.load_stats(tmp_path / "ref.npz")
  assert float(out["sFID"]) == pytest.approx(F.sfid_from_stats(a, ref), abs=1e-4)
  assert float(out["FID"]) == pytest.approx(F.fid_from_stats(a, ref), abs=1e-4)
  # statistics without the spatial part: FID only, and a note that says why
  R.save_stats(tmp_path / "old.npz", F.compute_stats(rng.normal(size=(9, 4))))
  assert main([str(tmp_path / "old.npz"), str(tmp_path / "ref.npz")]) == 0
  cap = capsys.readouterr()
  assert [l.split(":")[0] for l in cap.out.splitlines()] == ["FID"]
  assert "no sFID" in cap.err and str(tmp_path / "old.npz") in cap.err
  # spatial statistics of another dimension: one error line
  R.save_stats(tmp_path / "d5.npz", F.compute_stats(rng.normal(size=(9, 4)), rng.normal(size=(9, 5))))
  assert main([str(tmp_path / "d5.npz"), str(tmp_path / "ref.npz")]) == 2
  err = capsys.readouterr().err
  assert "spatial statistics of dimension" in err and len(err.strip().splitlines()) == 1


class _Extractor:
  """Stands in for the network: deterministic pool and spatial features of the pixels."""
  has_logits = False

  def __init__(self, spatial: bool):
    self.has_spatial = spatial
    self.calls = 0

  def __call__(self, batch):
    self.calls += 1
    flat = batch.reshape(len(batch), -1).astype(np.float32)
    out = {"pool": flat[:, :6] + flat[:, 6:12] ** 0.5}
    if self.has_spatial:
      out["spatial"] = flat[:, 12:17] * 0.5 + flat[:, :5]
    return out


def _images():
  rng = np.random.default_rng(4)
  return [rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8) for _ in range(3)]


def test_reference_cache_without_spatial_is_computed_again(tmp_path):
  """An entry written before sFID (no mu_s) serves pool_3 figures as before; asked for sFID it
  is computed again once, with the same pool_3 figures, and then kept."""
  images = _images()
  old = _Extractor(spatial=False)
  kw = dict(split="train", resolution=4, progress=False)
  s0 = R.reference_stats("toy", lambda: iter(images), tmp_path, extractor=old, **kw)
  assert "mu_s" not in s0 and old.calls == 3
  again = R.reference_stats("toy", lambda: iter(images), tmp_path, extractor=old, **kw)
  assert old.calls == 3 and "mu_s" not in again
  new = _Extractor(spatial=True)
  s1 = R.reference_stats("toy", lambda: iter(images), tmp_path, extractor=new, spatial=True, **kw)
  assert new.calls == 3 and s1["features_s"].shape == (12, 5) and s1["sigma_s"].shape == (5, 5)
  for k in ("mu", "sigma", "features"):
    np.testing.assert_array_equal(s1[k], s0[k])
  s2 = R.reference_stats("toy", lambda: iter(images), tmp_path, extractor=new, spatial=True, **kw)
  assert new.calls == 3
  np.testing.assert_array_equal(s2["features_s"], s1["features_s"])
  with pytest.raises(ValueError, match="spatial=True"):
    X.extract_features(iter(images), old, spatial=True, progress=False)


def test_sample_and_floor_metrics_carry_sfid():
  from core.metrics.fid import floor_metrics, sample_metrics
  rng = np.random.default_rng(5)
  pool_r, sp_r = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))
  pool_o, sp_o = rng.normal(size=(30, 6)), rng.normal(size=(30, 5)) + 0.3
  ref = {**F.compute_stats(pool_r, sp_r), "features": pool_r, "features_s": sp_r}
  other = {**F.compute_stats(pool_o, sp_o), "features": pool_o, "features_s": sp_o}
  fake, fake_s = rng.normal(size=(12, 6)), rng.normal(size=(12, 5)) * 1.2
  m = sample_metrics(fake, ref, kid_subsets=2, spatial=fake_s)
  assert m["sfid"] == F.sfid_features_vs_stats(fake_s, ref) and m["sfid"] > 0
  assert m["fid"] == sample_metrics(fake, ref, kid_subsets=2)["fid"]
  assert sample_metrics(fake, ref, kid_subsets=2)["sfid"] is None
  no_s = {k: v for k, v in ref.items() if k not in ("mu_s", "sigma_s", "features_s")}
  assert sample_metrics(fake, no_s, kid_subsets=2, spatial=fake_s)["sfid"] is None
  fm, n = floor_metrics(20, ref, other, kid_subsets=2)
  assert n == 20 and fm["sfid"] == F.sfid_features_vs_stats(sp_o[:20], ref)
  fm, n = floor_metrics(35, ref, other, kid_subsets=2)   # more than the kept rows: full stats
  assert n == 30 and fm["sfid"] == F.sfid_from_stats(other, ref)
