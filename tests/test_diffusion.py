import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.config import LossConfig
from core.diffusion import (avg_pool_to, diffusion_loss, eps_from_v, loss_at,
                            multiscale_resolutions, q_sample, sample_t, v_from_eps,
                            v_from_x_eps, x_from_eps, x_from_v)
from core.schedules import logsnr_cosine


def _batch(seed=0, shape=(4, 16, 16, 3)):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.uniform(k1, shape, minval=-1, maxval=1)
  eps = jax.random.normal(k2, shape)
  logsnr = jax.random.uniform(k3, shape[:1], minval=-8, maxval=8)
  return x, eps, logsnr


def test_conversions_round_trip():
  x, eps, logsnr = _batch()
  z = q_sample(x, eps, logsnr)
  v = v_from_x_eps(x, eps, logsnr)
  np.testing.assert_allclose(eps_from_v(z, v, logsnr), eps, atol=1e-4)
  np.testing.assert_allclose(x_from_v(z, v, logsnr), x, atol=1e-4)
  np.testing.assert_allclose(v_from_eps(z, eps, logsnr), v, atol=1e-3)
  np.testing.assert_allclose(x_from_eps(z, eps, logsnr), x, atol=1e-3)


def test_q_sample_marginal_variance_is_preserved():
  eps = jax.random.normal(jax.random.key(1), (20000,))
  x = jnp.sign(jax.random.normal(jax.random.key(2), (20000,)))  # unit variance data
  for l in (-5.0, 0.0, 5.0):
    z = q_sample(x, eps, jnp.full((20000,), l))
    assert abs(float(jnp.var(z)) - 1.0) < 0.05


def test_sample_t_uniform_and_stratified():
  t = sample_t(jax.random.key(0), 4096)
  assert 0 <= float(t.min()) and float(t.max()) < 1 and abs(float(t.mean()) - 0.5) < 0.02
  ts = np.sort(np.asarray(sample_t(jax.random.key(0), 8, stratified=True)))
  # exactly one t in each of the 8 strata
  np.testing.assert_array_equal(np.floor(ts * 8), np.arange(8))


def test_perfect_prediction_has_zero_loss_for_every_loss():
  x, eps, _ = _batch()
  t = jnp.linspace(0.05, 0.95, x.shape[0])
  oracle = lambda z, logsnr: v_from_x_eps(x, eps, logsnr)
  for name in ("eps_mse", "v_mse", "sigmoid"):
    for ms in (False, True):
      loss, _ = loss_at(oracle, x, eps, t, logsnr_cosine, LossConfig(name=name, multiscale=ms,
                                                                       multiscale_base=4))
      assert float(loss) < 1e-8, (name, ms)


def test_eps_mse_of_zero_v_prediction_matches_closed_form():
  x, eps, _ = _batch()
  t = jnp.linspace(0.05, 0.95, x.shape[0])
  logsnr = logsnr_cosine(t)
  loss, aux = loss_at(lambda z, l: jnp.zeros_like(z), x, eps, t, logsnr_cosine, LossConfig())
  z = q_sample(x, eps, logsnr)
  sigma = jnp.sqrt(jax.nn.sigmoid(-logsnr))[:, None, None, None]
  want = jnp.mean((eps - sigma * z) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(aux["loss_per_example"], want, rtol=1e-5)


def test_sigmoid_weight_is_kingma_gao_on_the_elbo_integrand():
  """SiD2's loss: (1/2) sigmoid(b - logsnr) (-dlogsnr/dt) times the eps-MSE (Kingma and Gao
  2023, eq. 6), against the cosine schedule's derivative in closed form, at several t."""
  import math
  from core.schedules import logsnr_shifted
  x, eps, _ = _batch(shape=(6, 8, 8, 3))
  t = jnp.array([0.02, 0.2, 0.4, 0.5, 0.7, 0.97])
  f = lambda z, l: jnp.zeros_like(z)
  a, b_ = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
  u = a + np.asarray(t, np.float64) * (b_ - a)
  minus_dlogsnr = 2 * (b_ - a) / (np.sin(u) * np.cos(u))   # -d/dt of -2 log tan(u(t))
  for sched, shift in ((logsnr_cosine, 0.0), (lambda s: logsnr_shifted(s, 64, 16), 2 * math.log(16 / 64))):
    _, plain = loss_at(f, x, eps, t, sched, LossConfig(name="eps_mse"))
    lam = -2 * np.log(np.tan(u)) + shift
    for b in (0.0, -1.0, -3.0):
      _, aux = loss_at(f, x, eps, t, sched, LossConfig(name="sigmoid", sigmoid_bias=b))
      want = 0.5 / (1 + np.exp(-(b - lam))) * minus_dlogsnr
      np.testing.assert_allclose(aux["loss_per_example"] / plain["loss_per_example"], want,
                                 rtol=2e-4)


def test_multiscale_equals_plain_when_only_full_resolution_is_kept():
  x, eps, _ = _batch(shape=(4, 32, 32, 3))
  t = jnp.linspace(0.1, 0.9, 4)
  f = lambda z, l: 0.3 * z
  plain, _ = loss_at(f, x, eps, t, logsnr_cosine, LossConfig())
  ms, _ = loss_at(f, x, eps, t, logsnr_cosine, LossConfig(multiscale=True, multiscale_base=32))
  np.testing.assert_allclose(float(ms), float(plain), rtol=1e-6)
  ms2, _ = loss_at(f, x, eps, t, logsnr_cosine, LossConfig(multiscale=True, multiscale_base=8))
  assert float(ms2) > float(plain)  # the coarser terms add to it


def test_multiscale_terms_are_weighted_one_over_s():
  err = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  from core.diffusion import pixel_mse
  got = pixel_mse(err, LossConfig(multiscale=True, multiscale_base=4))
  want = sum((16 / s) * jnp.mean((avg_pool_to(err, s) if s < 16 else err) ** 2, axis=(1, 2, 3))
             for s in (4, 8, 16))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert multiscale_resolutions(512, 32) == [32, 64, 128, 256, 512]
  assert multiscale_resolutions(16, 32) == [16]


def test_avg_pool_is_a_box_average():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(avg_pool_to(x, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_diffusion_loss_is_reproducible_from_key():
  x, _, _ = _batch()
  f = lambda z, l: 0.5 * z
  a, _ = diffusion_loss(f, x, jax.random.key(5), logsnr_cosine, LossConfig())
  b, _ = diffusion_loss(f, x, jax.random.key(5), logsnr_cosine, LossConfig())
  c, _ = diffusion_loss(f, x, jax.random.key(6), logsnr_cosine, LossConfig())
  assert float(a) == float(b) and float(a) != float(c)


def test_unknown_loss_name():
  x, eps, _ = _batch()
  with pytest.raises(KeyError, match="eps_mse, sigmoid, v_mse"):
    loss_at(lambda z, l: z, x, eps, jnp.full((4,), .5), logsnr_cosine, LossConfig(name="l1"))


def test_every_prediction_target_with_every_loss_space():
  """JiT's grid (Li and He 2025): the network predicts x, eps or v, and the loss is measured in
  x, eps or v space. An oracle output of each kind is the true v, and costs zero in each space;
  a wrong one costs the space's own error."""
  from core.diffusion import PREDICTIONS, v_from_prediction, x_from_v
  x, eps, _ = _batch()
  t = jnp.linspace(0.1, 0.9, x.shape[0])   # inside the 0.05 floor of both divisions
  logsnr = logsnr_cosine(t)
  z = q_sample(x, eps, logsnr)
  v = v_from_x_eps(x, eps, logsnr)
  truth = {"x": x, "eps": eps, "v": v}
  assert sorted(PREDICTIONS.names()) == ["eps", "v", "x"]
  for kind, out in truth.items():
    v_hat = v_from_prediction(kind, out, z, logsnr)
    np.testing.assert_allclose(v_hat, v, atol=2e-5, err_msg=kind)
    for loss in ("x_mse", "eps_mse", "v_mse"):
      oracle = lambda zz, l, k=kind: v_from_prediction(k, truth[k], zz, l)
      val, _ = loss_at(oracle, x, eps, t, logsnr_cosine, LossConfig(name=loss))
      assert float(val) < 1e-8, (kind, loss)
  # x_mse of a v prediction off by d is the x error sigma * d, squared and averaged.
  d = 0.1
  _, aux = loss_at(lambda zz, l: v_from_x_eps(x, eps, l) + d, x, eps, t, logsnr_cosine,
                   LossConfig(name="x_mse"))
  sigma = np.sqrt(np.asarray(jax.nn.sigmoid(-logsnr)))
  np.testing.assert_allclose(aux["loss_per_example"], (sigma * d) ** 2, rtol=1e-4)
  np.testing.assert_allclose(x_from_v(z, v, logsnr), x, atol=2e-5)


def test_a_model_that_predicts_x_or_eps_outputs_v():
  from core.config import ModelConfig
  from core.models import Predicting, build_model, init_params, preset
  cfg = preset("unet_tiny")
  assert not isinstance(build_model(cfg, 16), Predicting)   # v: the architecture as it was
  import dataclasses
  for kind in ("x", "eps"):
    c = dataclasses.replace(cfg, prediction=kind)
    m = build_model(c, 16)
    p = init_params(c, 16, jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    out = m.apply({"params": p}, z, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32), train=False)
    assert out.shape == z.shape and bool(jnp.isfinite(out).all())
  with pytest.raises(Exception, match="model.prediction"):
    build_model(dataclasses.replace(cfg, prediction="score"), 16)
