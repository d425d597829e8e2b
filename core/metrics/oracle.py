"""An oracle for the procedural data sets (shapes, shapes_simple): a small network trained on
real renders that reads each image's scene back, and the metrics read through it.

Every image of these sets is a known scene (core.data.shapes): the main shape's kind (the class
label), its centre, size and colour, and a background. The oracle is trained once per (source,
content resolution) on renders of a split of its own ("oracle", neither train nor test), kept in
the cache folder (<cache>/oracle/<key>.npz, with a report of its held-out scores), and rebuilt
by `python -m core.metrics.oracle SOURCE RESOLUTION`. Its reading of held-out real images is the
ceiling of every metric below; these are this toolkit's metrics, not the paper's (the paper's
are FID and IS, computed unchanged beside them):

  - class accuracy: the kind read back against the label a class-conditional sample was asked
    for (Ravuri and Vinyals 2019's classification accuracy score, with the oracle in place of a
    classifier trained on samples), with its Wilson interval, beside the oracle's accuracy on
    real images;
  - the Fréchet distance in the oracle's feature space (its last hidden layer), beside its
    real-vs-real floor at the same count;
  - the scene parameters' distributions (centre, size, colours) read from samples and from
    real images.

Samples are read at the content resolution (box-downsampled there, core.metrics.reference.
box_downsample, as the @content FID does), so groups trained at different resolutions compare.
The global structure the paper's ablations are about (section 3.1: which shape, where, how big)
is what the oracle reads; FID at a few hundred samples sees it worst.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np

from core import runio
from core.registry import Registry

# What the oracle regresses besides the kind: resolution-free scene parameters in [0, 1].
TARGETS = ("centre_x", "centre_y", "size", "shape_r", "shape_g", "shape_b", "bg_r", "bg_g",
           "bg_b")
ORACLE_SPLIT = "oracle"    # the renders it trains on: a split of their own
SOURCES = ("shapes", "shapes_simple")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How an oracle is trained; part of its cache key, so a change retrains it."""
  train_size: int = 50_000   # renders of the oracle split (seen ~8 times: no overfitting)
  held_out: int = 10_000     # renders of the test split its report is measured on
  steps: int = 1_500         # about 2.5 minutes on 2 cores at 16 px
  batch: int = 128
  lr: float = 2e-3
  width: int = 16            # channels of the first level, doubled at each stride
  features: int = 128        # the feature layer the Fréchet distance is measured in
  seed: int = 0
  # Views it trains on besides the renders: each upsampled (bicubic) by these factors and box-
  # downsampled back, as a run on upsampled content is read (data.content_resolution); that
  # round trip blurs, and an oracle of crisp renders alone read it 7 points worse.
  roundtrips: tuple = (2, 4)
  version: int = 2           # bump when the network or the training changes


# Recipes by name (eval.oracle_recipe): "default" for every study, "quick" (seconds, well below
# the default's accuracy) for tests and the smoke tier.
RECIPES: Registry[Recipe] = Registry("eval.oracle_recipe")
RECIPES.register("default")(Recipe())
RECIPES.register("quick")(Recipe(train_size=4_000, held_out=1_000, steps=300, width=8))


def get_recipe(name: str) -> Recipe:
  from core.config import ConfigError, check_choice
  check_choice("eval.oracle_recipe", name, RECIPES)
  return RECIPES.get(name)


def scene_targets(scene: dict, res: int) -> np.ndarray:
  """The TARGETS of a scene (float32): its main shape (the last drawn) centre, size and colour,
  and the mean colour of its background rendered alone at `res`."""
  from core.data.shapes import _background
  sh = scene["shapes"][-1]
  bg = _background(scene["background"], res).mean(axis=(1, 2))
  return np.asarray([*sh["centre"], sh["size"], *sh["colour"], *np.clip(bg, 0, 1)], np.float32)


def render_set(source: str, res: int, split: str, n: int, progress: bool = False):
  """(images uint8 (n, res, res, 3), labels int32 (n,), targets float32 (n, 9)) of the first n
  scenes of a split of a procedural source (seed 0, as core.data.sources makes them)."""
  from core.data.shapes import ShapesSource, render
  from tqdm.auto import tqdm
  src = ShapesSource(n, res, split, style="simple" if source == "shapes_simple" else "full")
  images = np.empty((n, res, res, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  targets = np.empty((n, len(TARGETS)), np.float32)
  for i in tqdm(range(n), desc=f"oracle: rendering {source} {split} at {res} px", unit="img",
                disable=not progress, dynamic_ncols=True):
    sc = src.scene(i)
    images[i] = render(sc, res)
    labels[i] = sc["label"]
    targets[i] = scene_targets(sc, res)
  return images, labels, targets


def roundtrip(images: np.ndarray, factor: int, method: str = "bicubic") -> np.ndarray:
  """Images upsampled by `factor` (core.data.images.upsample) and box-downsampled back: what the
  metric reads of real images made at the content resolution and upsampled."""
  from core.data.images import upsample
  from core.metrics.reference import box_downsample
  r = images.shape[1]
  up = np.stack([upsample(im, r * factor, method) for im in images])
  return box_downsample(up, r)


def flip_targets(targets: np.ndarray) -> np.ndarray:
  """The targets of horizontally flipped images (training flips them, core.data.pipeline._Flip)."""
  out = np.array(targets, copy=True)
  out[..., 0] = 1.0 - out[..., 0]
  return out


def _net(recipe: Recipe):
  import flax.linen as nn
  import jax.numpy as jnp

  class OracleNet(nn.Module):
    """Conv levels down to 4x4 (3x3 convolutions, GELU, GroupNorm), then a dense feature layer
    and two heads: the kind's logits and the scene parameters."""

    @nn.compact
    def __call__(self, x):
      h, w = x, recipe.width
      while True:
        h = nn.gelu(nn.GroupNorm(num_groups=8)(nn.Conv(w, (3, 3))(h)))
        h = nn.gelu(nn.GroupNorm(num_groups=8)(nn.Conv(w, (3, 3))(h)))
        if h.shape[1] <= 4:
          break
        w *= 2
        h = nn.Conv(w, (3, 3), strides=(2, 2))(h)
      f = nn.gelu(nn.Dense(recipe.features)(h.reshape(h.shape[0], -1)))
      return {"logits": nn.Dense(10)(f), "targets": nn.Dense(len(TARGETS))(f), "features": f}
  return OracleNet()


def _to_input(images: np.ndarray):
  return np.asarray(images, np.float32) / 127.5 - 1.0


@dataclasses.dataclass
class Oracle:
  """A trained oracle: `read(images)` -> kind, logits, scene parameters and features."""
  source: str
  resolution: int
  recipe: Recipe
  params: dict
  report: dict            # its held-out scores (accuracy, target errors, feature floor)

  def __post_init__(self):
    import jax
    net = _net(self.recipe)
    self._apply = jax.jit(lambda p, x: net.apply({"params": p}, x))

  def read(self, images: np.ndarray, batch: int = 512) -> dict:
    """uint8 (n, r, r, 3) images at the oracle's resolution -> {'label' int32 (n,), 'logits',
    'targets' (n, 9), 'features' (n, recipe.features)} as numpy. Any other resolution is an
    error: the caller box-downsamples (core.metrics.reference.box_downsample)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, 3):
      raise ValueError(f"oracle for {self.source} at {self.resolution} px got images of shape "
                       f"{images.shape}; box-downsample them to {self.resolution} px first")
    out: dict = {"logits": [], "targets": [], "features": []}
    n = len(images)
    for i in range(0, n, batch):
      x = images[i:i + batch]
      pad = batch - len(x) if n > batch else 0   # one compiled shape for every full batch
      if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
      o = self._apply(self.params, _to_input(x))
      for k in out:
        out[k].append(np.asarray(o[k])[:len(x) - pad])
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["label"] = res["logits"].argmax(-1).astype(np.int32)
    return res


def cache_key(source: str, resolution: int, recipe: Recipe) -> str:
  """<source>-<res>px-<hash of the recipe and of the renderer>: an edit to either retrains."""
  import hashlib
  from core.data.sources import _renderer_version
  h = hashlib.sha1(json.dumps([dataclasses.asdict(recipe), _renderer_version()]).encode())
  return f"{source}-{resolution}px-{h.hexdigest()[:12]}"


def train_oracle(source: str, resolution: int, recipe: Recipe = Recipe(),
                 progress: bool = True, log=print) -> Oracle:
  """Trains an oracle on renders of the oracle split (with horizontal flips, as training sees
  images) and scores it on the first recipe.held_out images of the test split. Deterministic:
  one device, seeded initialisation and batch order."""
  import jax
  import jax.numpy as jnp
  import optax
  if source not in SOURCES:
    raise ValueError(f"no oracle for data.source={source!r}: only {', '.join(SOURCES)} are "
                     "procedural scenes an oracle can read")
  t0 = time.perf_counter()
  images, labels, targets = render_set(source, resolution, ORACLE_SPLIT, recipe.train_size,
                                       progress)
  views = np.stack([images, *(roundtrip(images, f) for f in recipe.roundtrips)])
  net = _net(recipe)
  # one device (jit's default, uncommitted inputs), so the result does not depend on their number
  dev = jax.devices()[0]
  params = jax.jit(net.init)(jax.random.key(recipe.seed),
                             jnp.zeros((1, resolution, resolution, 3)))["params"]
  warm = min(100, recipe.steps // 10)
  sched = optax.warmup_cosine_decay_schedule(0.0, recipe.lr, warm, max(recipe.steps, warm + 1))
  opt = optax.adam(sched)
  opt_state = opt.init(params)

  def loss_fn(p, x, y, t):
    o = net.apply({"params": p}, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(o["logits"], y).mean()
    mse = ((o["targets"] - t) ** 2).mean()
    return ce + 10.0 * mse, (ce, mse)

  @jax.jit
  def step(p, s, x, y, t):
    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y, t)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, aux

  rng = np.random.default_rng(recipe.seed)
  from tqdm.auto import tqdm
  bar = tqdm(range(recipe.steps), desc=f"oracle: training {source} {resolution} px",
             disable=not progress, dynamic_ncols=True)
  for k in bar:
    idx = rng.integers(0, len(images), recipe.batch)
    flip = rng.random(recipe.batch) < 0.5
    x = views[rng.integers(0, len(views), recipe.batch), idx]
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    t = np.where(flip[:, None], flip_targets(targets[idx]), targets[idx])
    params, opt_state, (ce, mse) = step(params, opt_state, jax.device_put(_to_input(x), dev),
                                        labels[idx], t)
    if k % 200 == 0:
      bar.set_postfix(ce=f"{float(ce):.3f}", mse=f"{float(mse):.4f}")
  params = jax.device_get(params)
  train_s = time.perf_counter() - t0
  oracle = Oracle(source, resolution, recipe, params, {})
  oracle.report = held_out_report(oracle, recipe.held_out, progress)
  oracle.report["train_time_s"] = train_s
  log(f"oracle {source} {resolution} px: held-out accuracy {oracle.report['accuracy']:.4f} "
      f"({oracle.report['num']} test images), trained in {train_s:.0f} s")
  return oracle


def held_out_report(oracle: Oracle, n: int, progress: bool = False) -> dict:
  """The oracle on the first n test-split renders: accuracy (with its Wilson interval),
  per-class accuracy, each target's mean absolute error, and the feature-space floor (the
  Fréchet distance between two disjoint halves of them)."""
  images, labels, targets = render_set(oracle.source, oracle.resolution, "test", n, progress)
  o = oracle.read(images)
  right = o["label"] == labels
  lo, hi = wilson(int(right.sum()), n)
  per_class = [float(right[labels == c].mean()) for c in range(10)]
  mae = np.abs(o["targets"] - targets).mean(0)
  trips = {f"x{f}": float((oracle.read(roundtrip(images, f))["label"] == labels).mean())
           for f in oracle.recipe.roundtrips}
  return {"num": n, "accuracy": float(right.mean()), "accuracy_lo": lo, "accuracy_hi": hi,
          "per_class": per_class, "mae": dict(zip(TARGETS, map(float, mae))),
          "accuracy_roundtrip": trips}


def _save(path: str, oracle: Oracle) -> None:
  import jax
  from flax.traverse_util import flatten_dict
  flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(oracle.params).items()}
  meta = {"source": oracle.source, "resolution": oracle.resolution,
          "recipe": dataclasses.asdict(oracle.recipe), "report": oracle.report,
          "jax": jax.__version__}
  runio.write_npz_atomic(path, {"__meta__": np.array(json.dumps(meta)), **flat})


def _load(path: str) -> Oracle:
  from flax.traverse_util import unflatten_dict
  with np.load(path) as z:
    meta = json.loads(str(z["__meta__"]))
    params = unflatten_dict({tuple(k.split("/")): z[k] for k in z.files if k != "__meta__"})
  recipe = Recipe(**{**meta["recipe"], "roundtrips": tuple(meta["recipe"]["roundtrips"])})
  return Oracle(meta["source"], int(meta["resolution"]), recipe, params, meta["report"])


def oracle_path(source: str, resolution: int, recipe: Recipe = Recipe()) -> str:
  return runio.cache_dir("oracle", cache_key(source, resolution, recipe) + ".npz")


_LOADED: dict = {}
# Oracles shipped with the package (core/metrics/oracles/<cache key>.npz), made by `python -m
# core.metrics.oracle SOURCE RES` and copied: a fresh machine reads them instead of spending minutes
# training one (the main job's budget). Their key holds the recipe and the renderer's hash, so
# a change to either falls back to training.
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracles")


def load_oracle(source: str, resolution: int, recipe: Recipe = Recipe(),
                progress: bool = True, log=print) -> Oracle:
  """The oracle of (source, resolution): from the cache folder, else the one shipped in
  core/metrics/oracles/, else trained into the cache (a torn or foreign file is trained again). Kept
  in memory for the process."""
  path = oracle_path(source, resolution, recipe)
  if path in _LOADED:
    return _LOADED[path]
  oracle = None
  shipped = os.path.join(SHIPPED, os.path.basename(path))
  for p in (path, shipped):
    if oracle is None and os.path.isfile(p):
      try:
        oracle = _load(p)
      except (OSError, ValueError, KeyError, EOFError):
        oracle = None
  if oracle is None:
    oracle = train_oracle(source, resolution, recipe, progress, log)
    _save(path, oracle)
  _LOADED[path] = oracle
  return oracle


# ---------------------------------------------------------------------------------------------
# Metrics


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
  """The Wilson score interval (95% by default) of a binomial proportion k / n."""
  if n <= 0:
    return math.nan, math.nan
  p = k / n
  d = 1 + z * z / n
  c = (p + z * z / (2 * n)) / d
  h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return max(0.0, c - h), min(1.0, c + h)


def class_accuracy(read: dict, asked: np.ndarray) -> dict:
  """How often the kind read back is the label asked: {'accuracy', 'lo', 'hi', 'num'}."""
  right = np.asarray(read["label"]) == np.asarray(asked)
  lo, hi = wilson(int(right.sum()), len(right))
  return {"accuracy": float(right.mean()), "lo": lo, "hi": hi, "num": int(len(right))}


def feature_distance(a: np.ndarray, b: np.ndarray) -> float:
  """The Fréchet distance between two sets of oracle features (core.metrics.fid's, in float64)."""
  from core.metrics.fid import fid_from_features
  return fid_from_features(a, b)


def target_summary(targets: np.ndarray) -> dict:
  """Mean and std of each scene parameter read back."""
  t = np.asarray(targets, np.float64)
  return {name: {"mean": float(t[:, i].mean()), "std": float(t[:, i].std())}
          for i, name in enumerate(TARGETS)}


# ---------------------------------------------------------------------------------------------
# A run's samples read by the oracle


def oracle_resolution(cfg) -> Optional[int]:
  """Where the oracle reads a run's samples: the data's content resolution (the samples box-
  downsampled there), else the run's resolution; None where the run has no oracle (eval.oracle
  off, or data that are not procedural scenes)."""
  from core.data.sources import content_resolution
  if not cfg.eval.oracle or cfg.data.source not in SOURCES:
    return None
  at = content_resolution(cfg.data, cfg.resolution)
  return at if cfg.resolution % at == 0 else cfg.resolution


def for_run(cfg, progress: bool = True) -> Optional[Oracle]:
  """The oracle that reads a run's samples (trained into the cache the first time), or None."""
  at = oracle_resolution(cfg)
  if at is None:
    return None
  return load_oracle(cfg.data.source, at, get_recipe(cfg.eval.oracle_recipe), progress)


def read_images(oracle: Oracle, images: np.ndarray) -> dict:
  """uint8 images at any multiple of the oracle's resolution, box-downsampled to it and read."""
  from core.metrics.reference import box_downsample
  images = np.asarray(images)
  if images.shape[1] != oracle.resolution:
    images = box_downsample(images, oracle.resolution)
  return oracle.read(images)


_REAL: dict = {}


def real_reads(cfg, split: str, num: int, oracle: Oracle) -> dict:
  """The oracle's reading of `num` real images of a split, taken as a run's samples are: at
  the run's resolution (upsampled from the content where the data are), box-downsampled to the
  oracle's; with their true labels under 'asked'. The same subset as the reference statistics
  (core.data.sources.reference_indices); kept for the process."""
  from core.data.pipeline import iterate_uint8
  from core.data.sources import data_fingerprint
  key = (data_fingerprint(cfg.data, split, num), cfg.resolution, oracle.resolution,
         cache_key(oracle.source, oracle.resolution, oracle.recipe))
  if key not in _REAL:
    parts, asked = [], []
    for images, labels in iterate_uint8(cfg.data, cfg.resolution, split, num,
                                        min(cfg.eval.batch_size, num), labels=True):
      parts.append(read_images(oracle, images))
      asked.append(labels)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["asked"] = np.concatenate(asked).astype(np.int32)
    _REAL[key] = out
  return _REAL[key]


def run_scores(cfg, oracle: Oracle, reads: dict, asked: Optional[np.ndarray]) -> dict:
  """The record's "oracle" entry for samples read by the oracle: class accuracy (against the
  labels asked; None for an unconditional model) with its Wilson interval, the Fréchet
  distance of the oracle's features to as many real images of the eval split, and the floor:
  the same figures for real images (the train split's against the eval split's features; the
  eval split's own class accuracy, the ceiling), and the scene parameters read back."""
  n = len(reads["label"])
  real = real_reads(cfg, cfg.data.eval_split, n, oracle)
  other = real_reads(cfg, cfg.data.split, n, oracle)
  acc = class_accuracy(reads, asked) if asked is not None else None
  real_acc = class_accuracy(real, real["asked"])
  return {"resolution": oracle.resolution, "num": n, "recipe": cache_key(
              oracle.source, oracle.resolution, oracle.recipe),
          "held_out_accuracy": oracle.report.get("accuracy"),
          "class_acc": acc and acc["accuracy"], "class_acc_lo": acc and acc["lo"],
          "class_acc_hi": acc and acc["hi"],
          "fd_eval": feature_distance(reads["features"], real["features"]),
          "floor": {"num": n, "fd_eval": feature_distance(other["features"], real["features"]),
                    "class_acc": real_acc["accuracy"], "class_acc_lo": real_acc["lo"],
                    "class_acc_hi": real_acc["hi"]},
          "params": target_summary(reads["targets"]),
          "params_real": target_summary(real["targets"])}


def save_reads(path: str, reads: dict, asked: Optional[np.ndarray], real: dict) -> None:
  """The per-image reading of samples and of the real images they are compared with (labels,
  scene parameters as float16), for figures: a few tens of kB."""
  arrays = {"label": reads["label"], "targets": reads["targets"].astype(np.float16),
            "real_label": real["label"], "real_asked": real["asked"],
            "real_targets": real["targets"].astype(np.float16),
            "target_names": np.array(TARGETS)}
  if asked is not None:
    arrays["asked"] = np.asarray(asked, np.int32)
  runio.write_npz_atomic(path, arrays)


def main(argv: Optional[list] = None) -> int:
  """python -m core.metrics.oracle SOURCE RESOLUTION [--retrain]: builds (or reads) the oracle and
  prints its held-out report."""
  import argparse
  ap = argparse.ArgumentParser(prog="python -m core.metrics.oracle",
                               description="Train (once, into the cache folder) and report the "
                               "oracle of a procedural data set at a content resolution.")
  ap.add_argument("source", choices=SOURCES)
  ap.add_argument("resolution", type=int)
  ap.add_argument("--recipe", default="default", choices=RECIPES.names())
  ap.add_argument("--retrain", action="store_true",
                  help="train it again here (the cache's and the shipped copy are not read)")
  args = ap.parse_args(argv)
  from core.devices import setup
  setup()
  recipe = get_recipe(args.recipe)
  path = oracle_path(args.source, args.resolution, recipe)
  if args.retrain:
    o = train_oracle(args.source, args.resolution, recipe)
    _save(path, o)
  else:
    o = load_oracle(args.source, args.resolution, recipe)
  r = o.report
  print(f"{path}")
  print(f"oracle {o.source} at {o.resolution} px: held-out accuracy {r['accuracy']:.4f} "
        f"[{r['accuracy_lo']:.4f}, {r['accuracy_hi']:.4f}] on {r['num']} test renders; "
        f"trained in {r.get('train_time_s', float('nan')):.0f} s")
  print("per class: " + ", ".join(f"{a:.3f}" for a in r["per_class"]))
  print("after a bicubic round trip (upsampled, box-downsampled back): " + ", ".join(
      f"{k} {v:.4f}" for k, v in r.get("accuracy_roundtrip", {}).items()))
  print("mean abs error: " + ", ".join(f"{k} {v:.4f}" for k, v in r["mae"].items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
