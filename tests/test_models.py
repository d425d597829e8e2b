"""Models (docs/paper.md §2): shapes, front-ends, conditioning, dropout, precision, presets.

Compiles are the cost on CPU: everything that runs uses the tiny presets, parameters come
from eval_shape filled with numpy noise (no init compile, and non-zero zero-init layers so
that every input can reach the output), and jitted functions are shared through a cache.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.config import ConfigError, ModelConfig
from core.models import (PAPER_RESOLUTIONS, build_model, init_params, level_resolutions,
                         param_count, param_shapes, preset)

TINY = ["unet_tiny", "uvit_tiny"]
COND = dict(cond_channels=3, cond_noise_embedding=True)


def _tiny(name, **over):
  # The CDM-conditioned variant throughout, so that its compiles are shared between tests;
  # the plain variant runs in test_param_count_matches_init (init runs the forward pass).
  return preset(name, **COND, **over)


@functools.lru_cache(maxsize=None)
def _params(cfg, res, seed=0):
  """Random float32 parameters with the model's shapes, ~1/sqrt(fan_in) scale."""
  rng = np.random.default_rng(seed)

  def fill(s):
    std = 1 / math.sqrt(math.prod(s.shape[:-1])) if len(s.shape) >= 2 else 0.3
    return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
  return jax.tree_util.tree_map(fill, param_shapes(cfg, res))


# Tests check values, not speed: XLA's backend optimisation is what makes a CPU compile of even
# the tiny models take 10-20 s, and level 0 cuts that by ~5x.
_FAST = {"xla_backend_optimization_level": 0}
_compiled = {}


def _compile(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)


def _apply(cfg, res, train, null_label, *args):
  key = (cfg, res, train, null_label)
  if key not in _compiled:
    model = build_model(cfg, res)

    def f(params, z, logsnr, label, cond, cond_logsnr, rng):
      return model.apply({"params": params}, z, logsnr, None if null_label else label, cond,
                         cond_logsnr, train=train, rngs={"dropout": rng})
    _compiled[key] = _compile(f, *args)
  return _compiled[key](*args)


def _inputs(cfg, res, seed=1):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(2, res, res, cfg.in_channels)), jnp.float32)
  cond = (jnp.asarray(rng.normal(size=(2, res, res, cfg.cond_channels)), jnp.float32)
          if cfg.cond_channels else None)
  return dict(z=z, logsnr=jnp.array([-3.0, 5.0]), label=jnp.array([1, 7], jnp.int32),
              cond=cond, cond_logsnr=jnp.array([2.0, 4.0]) if cfg.cond_noise_embedding else None)


def _run(cfg, res, train=False, key=0, null_label=False, params=None, **over):
  x = {**_inputs(cfg, res), **over}
  p = _params(cfg, res) if params is None else params
  out = _apply(cfg, res, train, null_label, p, x["z"], x["logsnr"], x["label"], x["cond"],
               x["cond_logsnr"], jax.random.key(key, impl="rbg"))
  return np.asarray(out)


@pytest.mark.parametrize("frontend,res", [("none", 16), ("dwt:1", 32), ("patch:2", 32)])
@pytest.mark.parametrize("name", TINY)
def test_output_shape_frontends_and_cond(name, frontend, res):
  cfg = preset(name, frontend=frontend, **COND)
  out = _run(cfg, res)
  assert out.shape == (2, res, res, 3) and out.dtype == np.float32
  assert np.isfinite(out).all()
  # The CDM conditioning image and its augmentation level both reach the output.
  x = _inputs(cfg, res)
  assert not np.allclose(out, _run(cfg, res, cond=x["cond"] * 0.0), atol=1e-5)
  assert not np.allclose(out, _run(cfg, res, cond_logsnr=x["cond_logsnr"] + 3.0), atol=1e-5)
  # The front-end sets the working resolution: (3 + 3) channels, 4x more per DWT level.
  stem = param_shapes(cfg, res)["stem"]
  if frontend == "dwt:1":
    assert stem["conv_in"]["kernel"].shape[:3] == (3, 3, 24)
    assert param_shapes(cfg, res)["head"]["conv_out"]["kernel"].shape[-1] == 12
  elif frontend == "patch:2":
    assert stem["patch_in"]["kernel"].shape[:3] == (2, 2, 6)
  else:
    assert stem["conv_in"]["kernel"].shape[:3] == (3, 3, 6)


@pytest.mark.parametrize("name", TINY)
def test_param_count_matches_init(name):
  init = _compile(functools.partial(init_params, preset(name), 16), jax.random.key(0))
  params = init(jax.random.key(0))
  leaves = jax.tree_util.tree_leaves(params)
  assert param_count(name, 16) == sum(x.size for x in leaves)
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert 3_000 < param_count(name, 16) < 150_000


def test_small_presets_size():
  for name in ["unet_small", "uvit_small"]:
    assert 1_000_000 < param_count(name, 32) < 3_000_000, name
  param_count(preset("unet_small", frontend="patch:2"), 64)   # builds
  param_count(preset("uvit_small", frontend="dwt:1"), 64)


def test_paper_presets():
  counts = {n: param_count(n, r) for n, r in PAPER_RESOLUTIONS.items()}
  for n, c in counts.items():
    lo, hi = (1.5e9, 2.5e9) if n.startswith("uvit") else (0.8e9, 1.6e9)
    assert lo < c < hi, (n, c)
  assert counts["unet512"] == counts["unet512_dwt2"]
  # Table 4: "12+13" blocks at 16x16 (level 3 of the ImageNet-128 U-Net).
  p = param_shapes(preset("unet128"), 128)
  assert level_resolutions(preset("unet128"), 128)[3] == 16
  assert sum(k.startswith("down3_res") for k in p) == 12
  assert sum(k.startswith("up3_res") for k in p) == 13
  assert sum(k.startswith("down3_attn") for k in p) == 12   # attention at 16x16
  assert not any(k.startswith(("down2_attn", "up2_attn")) for k in p)   # none at 32x32
  # Resolutions are counted after the front-end (docs/paper.md §2.3, table 5).
  assert level_resolutions(preset("unet512"), 512) == [128, 64, 32, 16, 8]
  assert level_resolutions(preset("unet512_none"), 512) == [512, 256, 128, 64, 32, 16, 8]
  # U-ViT: 36 stacked transformer blocks of width 2048 at 16x16 whatever the resolution.
  for n in ["uvit128", "uvit256", "uvit512"]:
    cfg = preset(n)
    t = param_shapes(cfg, PAPER_RESOLUTIONS[n])["transformer"]
    assert t["mlp_in"]["kernel"].shape == (36, 2048, 8192)
    assert level_resolutions(cfg, PAPER_RESOLUTIONS[n])[-1] == 16


@pytest.mark.parametrize("name", TINY)
def test_dropout(name):
  cfg = _tiny(name)
  p = _params(cfg, 16)
  ev = _run(cfg, 16, train=False, key=0)
  np.testing.assert_array_equal(ev, _run(cfg, 16, train=False, key=1))   # deterministic
  # Feature resolutions are 16 and 8 (the U-ViT's transformer at 8). For the U-ViT,
  # dropout_max_res=8 leaves dropout in the transformer only, as the paper presets do.
  on = cfg if name == "unet_tiny" else _tiny(name, dropout_max_res=8)
  tr0, tr1 = _run(on, 16, True, key=0, params=p), _run(on, 16, True, key=1, params=p)
  assert not np.allclose(tr0, tr1, atol=1e-5) and not np.allclose(tr0, ev, atol=1e-5)
  # dropout_max_res below every feature resolution: no dropout anywhere, train or not.
  off = _tiny(name, dropout_max_res=4)
  a, b = _run(off, 16, True, key=0, params=p), _run(off, 16, True, key=1, params=p)
  np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(a, ev, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_class_label_and_null_class(name):
  cfg = _tiny(name)
  out = _run(cfg, 16)
  other = _run(cfg, 16, label=jnp.array([2, 3], jnp.int32))
  for i in range(2):
    assert not np.allclose(out[i], other[i], atol=1e-5)
  null = _run(cfg, 16, null_label=True)
  explicit = _run(cfg, 16, label=jnp.full((2,), cfg.num_classes, jnp.int32))
  np.testing.assert_allclose(null, explicit, atol=1e-5)
  assert not np.allclose(null, out, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute(name):
  cfg16 = _tiny(name, dtype="bfloat16")
  shapes = jax.tree_util.tree_leaves(param_shapes(cfg16, 16))
  assert all(s.dtype == jnp.float32 for s in shapes)
  ref = _run(_tiny(name), 16)
  out = _run(cfg16, 16, params=_params(_tiny(name), 16))
  assert out.dtype == np.float32 and out.shape == ref.shape
  assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.1


def test_config_errors():
  with pytest.raises(ConfigError, match="num_res_blocks"):
    build_model(preset("unet_tiny", num_res_blocks=(1, 1, 1)), 16)
  with pytest.raises(ConfigError, match="num_res_blocks"):
    build_model(preset("uvit_tiny", num_res_blocks=(1, 1)), 16)
  with pytest.raises(ConfigError, match="halved"):
    build_model(preset("unet_tiny"), 15)
  with pytest.raises(ConfigError, match="divisible"):
    build_model(preset("unet_tiny", frontend="patch:4"), 18)
  with pytest.raises(ConfigError, match="frontend"):
    build_model(preset("unet_tiny", frontend="wavelet:2"), 16)
  with pytest.raises(ConfigError, match="norm_groups"):
    param_count(preset("unet_tiny", norm_groups=5), 16)
  with pytest.raises(ConfigError, match="'channel_mult'"):
    preset("unet_tiny", channel_mult=(1, 2))
  with pytest.raises(KeyError, match="unet"):
    build_model(ModelConfig(arch="resnet"), 16)
  assert preset("unet_tiny", attn_resolutions=[4]).attn_resolutions == (4,)


def test_call_errors():
  cfg = preset("unet_tiny")
  model = build_model(cfg, 16)
  p = param_shapes(cfg, 16)
  z, s = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,))
  with pytest.raises(ValueError, match="shape"):
    jax.eval_shape(lambda q: model.apply({"params": q}, jnp.zeros((2, 32, 32, 3)), s), p)
  with pytest.raises(ValueError, match="cond"):
    jax.eval_shape(lambda q: model.apply({"params": q}, z, s, cond=z), p)
  ccfg = preset("unet_tiny", **COND)
  cmodel = build_model(ccfg, 16)
  cp = param_shapes(ccfg, 16)
  with pytest.raises(ValueError, match="cond"):
    jax.eval_shape(lambda q: cmodel.apply({"params": q}, z, s), cp)
  with pytest.raises(ValueError, match="cond_logsnr"):
    jax.eval_shape(lambda q: cmodel.apply({"params": q}, z, s, cond=z), cp)
  ucfg = preset("unet_tiny", num_classes=0)
  with pytest.raises(ValueError, match="unconditional"):
    jax.eval_shape(lambda q: build_model(ucfg, 16).apply(
      {"params": q}, z, s, label=jnp.zeros((2,), jnp.int32)), param_shapes(ucfg, 16))


@pytest.mark.parametrize("shape,groups", [((3, 8, 8, 16), 4), ((2, 5, 6, 12), 3), ((2, 4, 8), 2)])
def test_group_norm_equals_flax_reference(shape, groups):
  # Our GroupNorm is written out for speed; flax's nn.GroupNorm is the reference it must equal.
  import flax.linen as nn
  from core.models.layers import GroupNorm
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 3.0, shape), jnp.float32)
  c = shape[-1]
  params = {"scale": jnp.asarray(rng.normal(1, 0.5, c), jnp.float32),
            "bias": jnp.asarray(rng.normal(0, 0.5, c), jnp.float32)}
  ours = GroupNorm(groups).apply({"params": params}, x)
  ref = nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert ours.dtype == jnp.float32
  # The gradient too (the statistics' reduction order is ours): w.r.t. x, scale and bias.
  w = jnp.asarray(rng.normal(0, 1, shape), jnp.float32)

  def grads(module):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)) * w),
                    argnums=(0, 1))(params, x)
  for a, r in zip(jax.tree.leaves(grads(GroupNorm(groups))),
                  jax.tree.leaves(grads(nn.GroupNorm(num_groups=groups, epsilon=1e-6)))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-5)
  bf = GroupNorm(groups).apply({"params": params}, x.astype(jnp.bfloat16))
  assert bf.dtype == jnp.float32   # normalisation in float32 whatever the compute dtype


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_equals_jax_reference(heads):
  # Our attention lays heads out next to the batch for speed; jax.nn.dot_product_attention on
  # the same projections is the reference (head order, scaling, softmax axis).
  from core.models.layers import MultiHeadAttention
  rng = np.random.default_rng(0)
  b, n, c = 3, 10, 8
  x = jnp.asarray(rng.normal(0, 1, (b, n, c)), jnp.float32)
  mha = MultiHeadAttention(heads)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.5, p.shape), jnp.float32),
                        mha.init(jax.random.key(0), x)["params"])
  ours = mha.apply({"params": params}, x)
  qkv = x @ params["qkv"]["kernel"] + params["qkv"]["bias"]
  q, k, v = jnp.split(qkv.reshape(b, n, 3 * heads, c // heads), 3, axis=2)
  ref = jax.nn.dot_product_attention(q, k, v).reshape(b, n, c)
  ref = ref @ params["out"]["kernel"] + params["out"]["bias"]
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
