"""Makes tests/data/kid_golden.npz: KID golden values from torch-fidelity itself.

One-off, run in a scratch venv outside the repository (torch is never a project dependency;
torch-fidelity's package __init__ imports torchvision, which is not needed here, so the script
loads torch_fidelity/metric_kid.py alone, with the feature-extraction helpers it never calls
stubbed out):

  python3 -m venv /tmp/kidref
  /tmp/kidref/bin/pip install torch==2.13.0 numpy tqdm     # the CPU wheel; no torchvision
  /tmp/kidref/bin/pip install --no-deps torch-fidelity==0.4.0
  /tmp/kidref/bin/python -m scripts.make_kid_golden

Inputs are random (numpy default_rng(0)) and stored with the results:
  feat_a, feat_b, feat_c   (300, 64), (280, 64), (290, 64) float32: b has another mean and
                           scale, c is drawn like a (a vs c: a KID near 0, possibly negative)
  q2048_a, q2048_b         (200, 2048), (180, 2048) uint8; the features are q / 32 (exact in
                           float32), non-negative and skewed like Inception pool_3 activations
  cases                    case names; per case <c>_pair (which two arrays, rows cut to
                           <c>_rows), <c>_params (subsets, subset_size, seed) for
                           core.metrics.fid.kid_from_features, <c>_tf_subset_size (what torch-fidelity
                           was given: it raises where subset_size exceeds a set, ours clamps)
  <c>_mean, <c>_std        torch-fidelity's kid_features_to_metric on float64 tensors of the
                           features (kernel_inception_distance_mean / _std)
  <c>_mean_f32, <c>_std_f32  the same on float32 tensors, torch-fidelity's usual path (it keeps
                           the tensor dtype); for reference, not for parity
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

# name: (pair, rows, (subsets, subset_size, seed) for ours, subset size given to torch-fidelity)
CASES = {
    "d64": (("feat_a", "feat_b"), (300, 280), (100, 250, 2020), 250),   # torch-fidelity's seed
    "d64_clamped": (("feat_a", "feat_b"), (300, 280), (100, 1000, 0), 280),
    "d64_same": (("feat_a", "feat_c"), (300, 290), (100, 200, 1), 200),
    "tiny": (("feat_a", "feat_b"), (40, 35), (50, 1000, 7), 35),
    "d2048": (("q2048_a", "q2048_b"), (200, 180), (20, 150, 3), 150),
}


def load_metric_kid():
  """torch_fidelity.metric_kid without running the package __init__ (torchvision)."""
  spec = importlib.util.find_spec("torch_fidelity")   # finds, does not import
  pkg = types.ModuleType("torch_fidelity")
  pkg.__path__ = list(spec.submodule_search_locations)
  sys.modules["torch_fidelity"] = pkg
  utils = types.ModuleType("torch_fidelity.utils")    # feature extraction only; never called
  for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached",
               "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
    setattr(utils, name, None)
  sys.modules["torch_fidelity.utils"] = utils
  mod = importlib.import_module("torch_fidelity.metric_kid")
  version = {}
  exec(Path(pkg.__path__[0], "version.py").read_text(), version)
  return mod, version["__version__"], hashlib.sha256(Path(mod.__file__).read_bytes()).hexdigest()


def make_inputs(rng):
  a = rng.normal(size=(300, 64)).astype(np.float32)
  b = (rng.normal(size=(280, 64)) * 1.1 + 0.15).astype(np.float32)
  c = rng.normal(size=(290, 64)).astype(np.float32)
  qa = np.minimum(np.round(rng.exponential(0.5, size=(200, 2048)) * Q_SCALE), 255).astype(np.uint8)
  qb = np.minimum(np.round(rng.exponential(0.55, size=(180, 2048)) * Q_SCALE), 255).astype(np.uint8)
  return {"feat_a": a, "feat_b": b, "feat_c": c, "q2048_a": qa, "q2048_b": qb}


def features(arrays, name):
  x = arrays[name]
  return x.astype(np.float32) / Q_SCALE if name.startswith("q") else x


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "kid_golden.npz"))
  args = ap.parse_args()
  kid, version, digest = load_metric_kid()
  arrays = make_inputs(np.random.default_rng(0))
  out = dict(arrays, cases=np.array(list(CASES)), q_scale=np.int64(Q_SCALE),
             torch_fidelity_version=np.array(version), metric_kid_sha256=np.array(digest))
  for c, (pair, rows, (subsets, _, seed), tf_size) in CASES.items():
    x, y = (features(arrays, p)[:n] for p, n in zip(pair, rows))
    for suffix, dtype in (("", torch.float64), ("_f32", torch.float32)):
      r = kid.kid_features_to_metric(
          torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype), kid_subsets=subsets,
          kid_subset_size=tf_size, rng_seed=seed, verbose=False)
      out[f"{c}_mean{suffix}"] = np.float64(r[kid.KEY_METRIC_KID_MEAN])
      out[f"{c}_std{suffix}"] = np.float64(r[kid.KEY_METRIC_KID_STD])
    out[f"{c}_pair"] = np.array(pair)
    out[f"{c}_rows"] = np.array(rows, np.int64)
    out[f"{c}_params"] = np.array(CASES[c][2], np.int64)
    out[f"{c}_tf_subset_size"] = np.int64(tf_size)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} with torch-fidelity {version} (metric_kid.py sha256 {digest[:12]}), "
        f"torch {torch.__version__}:")
  for c in CASES:
    print(f"  {c}: mean {out[f'{c}_mean']!r} std {out[f'{c}_std']!r} "
          f"(float32 path: {out[f'{c}_mean_f32']!r} / {out[f'{c}_std_f32']!r})")


if __name__ == "__main__":
  main()
