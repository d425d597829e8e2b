"""A warm start does no needless work (a warm smoke run in at most 15 seconds)."""
import logging

import jax
import numpy as np
import pytest

from core.metrics import inception_weights as W


def _compiles(caplog, fn):
  """The names of the programs `fn` compiles (jax.log_compiles' lines), and fn's result."""
  caplog.clear()
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    out = fn()
  return [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()], out


def test_inception_extractor_places_its_weights_without_compiling(caplog):
  """Its ~50 host arrays go to the devices as they are; jnp.asarray per leaf compiled a
  program per shape (about 1 s of every start). Same values, JAX's dtypes."""
  from core.metrics.features import InceptionExtractor
  from core.metrics.inception import _param_shapes, flax_flatten
  params = W.flax_unflatten({k: np.full(s, 0.5, np.float64 if k.endswith("/mean") else
                                        np.float32)
                             for k, s in flax_flatten(_param_shapes(False)).items()})
  names, ext = _compiles(caplog, lambda: InceptionExtractor(params=params))
  assert names == []
  leaves = jax.tree_util.tree_leaves(ext.params)
  assert {x.dtype for x in leaves} == {np.dtype(np.float32)}   # float64 -> float32 as jnp's
  assert all((np.asarray(x) == 0.5).all() for x in leaves)


def test_a_run_imports_no_module_only_one_path_needs():
  """scipy (0.2 s; only IS needs it), pandas and matplotlib (analysis only) stay out of a run's
  imports: the runner, training, evaluation, FID and Inception."""
  import subprocess
  import sys
  code = ("import sys, sweeps.run, sweeps.execute, core.train, core.evaluate, core.metrics.fid, "
          "core.metrics.features, core.metrics.reference; print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'scipy', 'pandas', 'matplotlib', 'torch', 'tensorflow'}))")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True).stdout
  assert out.split("\n")[-2] == "[]", out


def test_inception_compiles_without_ynn_fusions_on_cpu(monkeypatch):
  """The FID network's jit gets core.metrics.features.compiler_options(): on CPU (jaxlib 0.10) no
  YNNPACK fusions, 1.1-1.6x its images/s at the same features (1e-6 relative;
  results/reference/inception_speed.txt). The option itself is checked on a small program:
  it takes the YNN fusion out of a reduction that XLA's default puts in one."""
  from jax import lax
  from core.metrics import features as I
  if not I.cpu_options_measured():
    pytest.skip("this jaxlib release was not measured")
  seen = {}
  real_jit = jax.jit

  def spy(f, **kw):
    seen.update(kw)
    return real_jit(f, **kw)
  I._network_fn.cache_clear()
  monkeypatch.setattr(I.jax, "jit", spy)
  try:
    I._network_fn(False, lax.Precision.HIGHEST)
  finally:
    monkeypatch.undo()
    I._network_fn.cache_clear()
  assert seen["compiler_options"] == {"xla_backend_optimization_level": 3,
                                      **I.CPU_COMPILER_OPTIONS}
  x = jax.numpy.ones((64, 64))
  text = lambda **kw: jax.jit(lambda v: (v * v).sum(0), **kw).lower(x).compile().as_text()  # noqa: E731
  assert "__ynn_fusion" in text()
  assert "__ynn_fusion" not in text(compiler_options=I.CPU_COMPILER_OPTIONS)
