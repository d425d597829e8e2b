"""Makes tests/data/prc_golden.npz: precision/recall golden values from torch-fidelity itself.

Improved precision and recall (Kynkaanniemi et al. 2019) as torch-fidelity 0.4.0's
metric_prc.prc_features_to_metric computes them; core.metrics.fid.precision_recall must give the same.
One-off, run in a scratch venv outside the repository (torch is never a project dependency;
torch-fidelity's package __init__ imports torchvision, which is not needed here, so the script
loads torch_fidelity/metric_prc.py alone, with the feature-extraction helpers it never calls
stubbed out):

  python3 -m venv /tmp/prref
  /tmp/prref/bin/pip install torch==2.13.0 numpy tqdm     # the CPU wheel; no torchvision
  /tmp/prref/bin/pip install --no-deps torch-fidelity==0.4.0
  /tmp/prref/bin/python -m scripts.make_prc_golden

torch-fidelity's convention: features_1 is the generated set, features_2 the real one; the
radius of a row is kthvalue(neighborhood + 1) of its distances to its own set, its own 0
included, i.e. the distance to its k-th nearest neighbour with itself left out (a duplicate row
is a neighbour at 0); a row is inside a ball where its distance is <= the radius. Distances are
torch.cdist's (the |a|^2 + |b|^2 - 2ab matrix-product route at these sizes). core.metrics.fid takes the
radius the same way, so no convention differs.

Inputs are random (numpy default_rng(0)) and stored with the results:
  feat_a, feat_b, feat_c   (300, 64), (280, 64), (290, 64) float32: b has another mean and
                           scale, c is drawn like a
  q2048_a, q2048_b         (200, 2048), (180, 2048) uint8; the features are q / 32 (exact in
                           float32, and so are their squared distances in float64), non-negative
                           and skewed like Inception pool_3 activations, near a 16-dimensional
                           latent manifold (b's latents shifted and scaled) so that neighbours
                           mean something at D = 2048
  bin32_a, bin32_b         (150, 32), (140, 32) float32 of 0s and 1s (b's 1s rarer): distances
                           are square roots of whole numbers, so many equal a radius exactly
                           and the <= in "inside a ball" matters
  cases                    case names; per case <c>_pair (the arrays of the real and the fake
                           set), <c>_real_rows and <c>_fake_rows (row indices into them; the
                           d2048_dup case repeats rows in both sets and shares rows between
                           them), <c>_k (the neighbourhood size)
  <c>_precision, <c>_recall  torch-fidelity's prc_features_to_metric on float64 tensors
                           (save_cpu_ram False, its default: calculate_precision_recall_full);
                           its blockwise path (save_cpu_ram True, prc_batch_size 64) is checked
                           here to give the same. Each is a count over a set size that torch-
                           fidelity averages as float32 (.float().mean()), so it is that
                           fraction rounded to float32 (~3e-8 relative)
  <c>_precision_f32, <c>_recall_f32  the same on float32 tensors, torch-fidelity's usual path
                           (it keeps the tensor dtype); for reference, not for parity
"""

import argparse
import hashlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
Q_SCALE = 32
R = np.r_

# name: ((real array, fake array), real rows, fake rows, k)
CASES = {
    "d64": (("feat_a", "feat_b"), R[:300], R[:280], 3),
    "d64_swapped": (("feat_b", "feat_a"), R[:280], R[:300], 3),
    "d64_same": (("feat_a", "feat_c"), R[:300], R[:290], 3),
    "d64_k5": (("feat_a", "feat_b"), R[:300], R[:280], 5),
    "tiny": (("feat_a", "feat_b"), R[:40], R[:35], 3),
    "d2048": (("q2048_a", "q2048_b"), R[:200], R[:180], 3),
    "d2048_dup": (("q2048_a", "q2048_a"), R[:150, :20], R[100:200, 100:110], 3),
    "bin32_ties": (("bin32_a", "bin32_b"), R[:150], R[:140], 3),
}


def load_metric_prc():
  """torch_fidelity.metric_prc without running the package __init__ (torchvision)."""
  spec = importlib.util.find_spec("torch_fidelity")   # finds, does not import
  pkg = types.ModuleType("torch_fidelity")
  pkg.__path__ = list(spec.submodule_search_locations)
  sys.modules["torch_fidelity"] = pkg
  utils = types.ModuleType("torch_fidelity.utils")    # feature extraction only; never called
  for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached",
               "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
    setattr(utils, name, None)
  sys.modules["torch_fidelity.utils"] = utils
  mod = importlib.import_module("torch_fidelity.metric_prc")
  version = {}
  exec(Path(pkg.__path__[0], "version.py").read_text(), version)
  return mod, version["__version__"], hashlib.sha256(Path(mod.__file__).read_bytes()).hexdigest()


def make_inputs(rng):
  a = rng.normal(size=(300, 64)).astype(np.float32)
  b = (rng.normal(size=(280, 64)) * 1.1 + 0.15).astype(np.float32)
  c = rng.normal(size=(290, 64)).astype(np.float32)
  w = rng.normal(size=(16, 2048)) / 4

  def quantised(z, noise):
    f = np.maximum(z @ w + noise * rng.normal(size=(len(z), 2048)), 0.0) ** 1.5
    return np.minimum(np.round(f * Q_SCALE), 255).astype(np.uint8)

  qa = quantised(rng.normal(size=(200, 16)), 0.3)
  qb = quantised(rng.normal(size=(180, 16)) * 1.2 + 0.3, 0.35)
  ba = (rng.random((150, 32)) < 0.5).astype(np.float32)
  bb = (rng.random((140, 32)) < 0.25).astype(np.float32)
  return {"feat_a": a, "feat_b": b, "feat_c": c, "q2048_a": qa, "q2048_b": qb, "bin32_a": ba,
          "bin32_b": bb}


def features(arrays, name):
  x = arrays[name]
  return x.astype(np.float32) / Q_SCALE if name.startswith("q") else x


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "prc_golden.npz"))
  args = ap.parse_args()
  prc, version, digest = load_metric_prc()
  arrays = make_inputs(np.random.default_rng(0))
  out = dict(arrays, cases=np.array(list(CASES)), q_scale=np.int64(Q_SCALE),
             torch_fidelity_version=np.array(version), metric_prc_sha256=np.array(digest))
  for c, ((real_name, fake_name), real_rows, fake_rows, k) in CASES.items():
    real = features(arrays, real_name)[real_rows]
    fake = features(arrays, fake_name)[fake_rows]
    for suffix, dtype in (("", torch.float64), ("_f32", torch.float32)):
      f1, f2 = torch.from_numpy(fake).to(dtype), torch.from_numpy(real).to(dtype)  # 1 = fake
      r = prc.prc_features_to_metric(f1, f2, prc_neighborhood=k, prc_batch_size=10000,
                                     save_cpu_ram=False, verbose=False)
      out[f"{c}_precision{suffix}"] = np.float64(r[prc.KEY_METRIC_PRECISION])
      out[f"{c}_recall{suffix}"] = np.float64(r[prc.KEY_METRIC_RECALL])
      if dtype == torch.float64:   # the blockwise path agrees
        part = prc.calculate_precision_recall_part(f1, f2, neighborhood=k, batch_size=64)
        assert part == (r[prc.KEY_METRIC_PRECISION], r[prc.KEY_METRIC_RECALL]), (c, part, r)
    out[f"{c}_pair"] = np.array([real_name, fake_name])
    out[f"{c}_real_rows"] = np.asarray(real_rows, np.int64)
    out[f"{c}_fake_rows"] = np.asarray(fake_rows, np.int64)
    out[f"{c}_k"] = np.int64(k)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} with torch-fidelity {version} (metric_prc.py sha256 {digest[:12]}), "
        f"torch {torch.__version__}:")
  for c in CASES:
    print(f"  {c}: precision {out[f'{c}_precision']!r} recall {out[f'{c}_recall']!r} "
          f"(float32 path: {out[f'{c}_precision_f32']!r} / {out[f'{c}_recall_f32']!r})")


if __name__ == "__main__":
  main()
