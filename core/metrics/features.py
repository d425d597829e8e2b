"""Inception features of images: the batched, jitted extractor over this process's devices,
one per weights source and process, and features of a stream of image batches.

core/metrics/inception.py is the network, core/metrics/inception_weights.py where its weights come from.
"""
from __future__ import annotations

import functools
import math
import queue
import sys
import threading
from typing import Iterable, Iterator

import jax
import numpy as np
from jax import lax

from core.metrics.inception import (NUM_CLASSES, NUM_FEATURES, SPATIAL_FEATURES, InceptionV3,
                                    check_params, preprocess)
from core.metrics.inception_weights import load_inception_params

# On CPU, without YNNPACK's fusions (on by default in jaxlib 0.10; they take this network's
# reductions, dots and some convolutions from XLA's own emitters): measured side by side in
# one process, scripts/benchmark_inception.py, results/reference/inception_speed.txt. Only for
# the jaxlib releases it was measured with (the option is experimental; XLA rejects an unknown
# one).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
CPU_COMPILER_OPTIONS_RELEASES = ("0.10",)


def cpu_options_measured() -> bool:
  """Whether this jaxlib is a release CPU_COMPILER_OPTIONS were measured with."""
  import jaxlib.version
  return ".".join(jaxlib.version.__version__.split(".")[:2]) in CPU_COMPILER_OPTIONS_RELEASES


def compiler_options() -> dict:
  """XLA's default optimisation level (3), even where XLA_FLAGS lowers it to compile faster (the
  test suite does): this network's run time dominates its compile time; CPU_COMPILER_OPTIONS
  on CPU."""
  opts = {"xla_backend_optimization_level": 3}
  if jax.default_backend() == "cpu" and cpu_options_measured():
    opts.update(CPU_COMPILER_OPTIONS)
  return opts


@functools.cache
def _network_fn(with_logits: bool, precision, with_spatial: bool = False):
  model = InceptionV3(with_logits=with_logits, precision=precision, with_spatial=with_spatial)
  return jax.jit(lambda params, x: model.apply({"params": params}, x),
                 compiler_options=compiler_options())


_preprocess_fn = jax.jit(preprocess)


def _host_array(a):
  """A leaf as the host array jnp.asarray would make of it (JAX's dtype), or the jax.Array."""
  if isinstance(a, jax.Array):
    return a
  a = np.asarray(a)
  return a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)


def default_batch_size(num_devices: int = 1) -> int:
  """One image per device on CPU, 50 (rounded up to a multiple of the devices) on
  accelerators. XLA's CPU convolutions of this network run fastest one image at a time on
  each device (2 cores, one device: 8.5 img/s at batch 1, 7.6 at 2, 6.0 at 10, 5.3 at 50)."""
  if jax.default_backend() == "cpu":
    return num_devices
  return -(-50 // num_devices) * num_devices


class InceptionExtractor:
  """uint8 NHWC images of any size -> {'pool': (N, 2048)[, 'logits': (N, 1008)][, 'spatial':
  (N, 2023)]} as numpy; 'spatial' (sFID's features, see InceptionV3) only with `spatial`.

  Images are processed in chunks of `batch_size` (default: default_batch_size(); the last one
  padded) so the network compiles once per chunk size; resizing is jitted separately per input
  size. Each chunk is split over the mesh's 'data' axis (default: every device, one per core
  on CPU), the weights replicated; features are per image, so the split changes nothing.
  """

  def __init__(self, weights=None, *, need_logits: bool = False, batch_size: int | None = None,
               params=None, precision=lax.Precision.HIGHEST, verbose: bool = False, mesh=None,
               spatial: bool = False, **load_kw):
    from jax.sharding import NamedSharding, PartitionSpec as P
    from core.devices import make_mesh
    if params is None:
      params, self.source = load_inception_params(weights, need_logits=need_logits, verbose=verbose, **load_kw)
    else:
      self.source = None
    self.has_logits = check_params(params)
    if need_logits and not self.has_logits:
      raise ValueError("these Inception weights have no logits, so IS cannot be computed")
    if mesh is None:   # this process's devices: each process extracts the images it holds
      from core.devices import devices_for_batch
      local = jax.local_devices()
      mesh = make_mesh(devices_for_batch(batch_size, local) if batch_size else local)
    self.mesh = mesh
    self.num_devices = mesh.devices.size
    self.batch_size = int(batch_size or default_batch_size(self.num_devices))
    if self.batch_size % self.num_devices:
      raise ValueError(f"Inception batch_size={self.batch_size} must be a multiple of the "
                       f"{self.num_devices} devices it is split over")
    self._rows = NamedSharding(mesh, P("data"))
    # Host arrays straight to the devices: jnp.asarray per leaf compiles a program per shape
    # (about 1 s at every start for this network's ~50 shapes).
    self.params = jax.device_put(jax.tree_util.tree_map(_host_array, params),
                                 NamedSharding(mesh, P()))
    self.has_spatial = bool(spatial)
    self._net = _network_fn(self.has_logits, precision, self.has_spatial)

  def __call__(self, images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB images, got shape {images.shape}")
    outs = []
    # A call with fewer images than batch_size runs (and compiles) a chunk of that many, rounded
    # up to 8 (and to the devices), rather than padding to batch_size: small evaluations would
    # mostly run padding.
    step = math.lcm(8, self.num_devices)
    size = min(self.batch_size, -(-len(images) // step) * step)
    for i in range(0, len(images), size):
      chunk = images[i: i + size]
      n = len(chunk)
      if n < size:
        chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
      out = self.apply(_preprocess_fn(jax.device_put(chunk, self._rows)))
      outs.append({k: v[:n] for k, v in out.items()})
    if not outs:
      dims = {"pool": NUM_FEATURES, "logits": NUM_CLASSES, "spatial": SPATIAL_FEATURES}
      keys = ["pool"] + ["logits"] * self.has_logits + ["spatial"] * self.has_spatial
      return {k: np.zeros((0, dims[k]), np.float32) for k in keys}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def apply(self, x) -> dict[str, np.ndarray]:
    """The network alone, on preprocessed (N, 299, 299, 3) input (see `preprocess`)."""
    return {k: np.asarray(v) for k, v in self._net(self.params, x).items()}

  def map(self, batches: Iterable) -> Iterable[dict[str, np.ndarray]]:
    for b in batches:
      yield self(b)


_EXTRACTORS: dict = {}


def inception_extractor(weights: str = "", need_logits: bool = False, spatial: bool = True):
  """One extractor per weights source and process, so the network compiles once; with the
  spatial features for sFID by default (its pool_3 output is the same either way)."""
  key = (weights or "", need_logits, spatial)
  if key not in _EXTRACTORS:
    _EXTRACTORS[key] = InceptionExtractor(weights or None, need_logits=need_logits,
                                          spatial=spatial)
  return _EXTRACTORS[key]


# ----------------------------------------------------------------------------------------------
# Features of a stream of batches


def _prefetch(it: Iterable, depth: int = 2) -> Iterator:
  # Decodes the next batches in a thread while the network runs (JAX releases the GIL).
  q: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def put(item):
    while not stop.is_set():  # gives up once the consumer has left
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def work():
    try:
      for item in it:
        if not put(item):
          return
      put(done)
    except BaseException as e:  # surfaced in the consumer
      put(e)

  t = threading.Thread(target=work, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def extract_features(batches: Iterable, extractor, *, total: int | None = None,
                     num: int | None = None, logits: bool = False, spatial: bool = False,
                     desc: str = "Inception", progress: bool = True) -> dict[str, np.ndarray]:
  """Runs uint8 NHWC batches through the extractor; returns {'pool'[, 'logits'][, 'spatial']}
  for all images ('spatial': sFID's features, from an extractor made with spatial=True).

  `num` stops after that many images; `total` (or num) sizes the progress bar (images and ETA).
  """
  from tqdm.auto import tqdm
  if total is not None and num is not None:
    total = min(total, num)
  total = total if total is not None else num
  keep = ("pool",) + ("logits",) * logits + ("spatial",) * spatial
  if logits and not getattr(extractor, "has_logits", True):
    raise ValueError("these Inception weights have no logits, so IS cannot be computed")
  if spatial and not getattr(extractor, "has_spatial", False):
    raise ValueError("sFID needs an extractor made with spatial=True (InceptionExtractor)")
  outs = {k: [] for k in keep}
  seen = 0
  with tqdm(total=total, unit="img", desc=desc, disable=not progress, file=sys.stderr,
            dynamic_ncols=True) as bar:
    for batch in _prefetch(batches):
      batch = np.asarray(batch)
      if num is not None:
        batch = batch[: num - seen]
      if len(batch) == 0:
        break
      out = extractor(batch)
      for k in keep:
        outs[k].append(np.asarray(out[k], np.float32))
      seen += len(batch)
      bar.update(len(batch))
      if num is not None and seen >= num:
        break
  return {k: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for k, v in outs.items()}
