import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.config import LossConfig
from core.diffusion.process import (avg_pool_to, diffusion_loss, eps_from_v, loss_at,
                                    multiscale_resolutions, q_sample, sample_t, v_from_eps,
                                    v_from_x_eps, x_from_eps, x_from_v)
from core.diffusion.schedules import logsnr_cosine


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
  for name in ("eps_mse", "v_mse", "x_mse", "sigmoid"):
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
  from core.diffusion.schedules import logsnr_shifted
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
  from core.diffusion.process import pixel_mse
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


# t from end to end of the clipped schedules, where sigma (t -> 0) or alpha (t -> 1) is about
# 1e-4: the old floor of 0.05 in the x and eps conversions broke both ends.
T_ENDS = jnp.array([0.0, 1e-4, 0.003, 0.02, 0.3, 0.7, 0.98, 0.9997, 1.0])
SCHEDULES_ENDS = {"cosine": logsnr_cosine,
                  "shifted 1/4": lambda t: logsnr_cosine(t) + 2 * np.log(16 / 64)}
LOSS_NAMES = ("x_mse", "eps_mse", "v_mse", "sigmoid")


def _pred_output(kind, x_hat, z, logsnr):
  """What a network of `kind` outputs when its x_hat is x_hat (eps_hat then follows from z)."""
  from core.diffusion.process import eps_from_x, v_from_x_eps
  if kind == "x":
    return x_hat
  eps_hat = eps_from_x(z, x_hat, logsnr)
  return eps_hat if kind == "eps" else v_from_x_eps(x_hat, eps_hat, logsnr)


@pytest.mark.parametrize("sched", list(SCHEDULES_ENDS))
def test_every_prediction_is_exact_at_every_noise_level(sched):
  """JiT's grid (Li and He 2025): the network predicts x, eps or v, the loss is measured in
  x, eps or v space (or SiD2's sigmoid). A perfect output of each kind converts back to x and
  eps and costs zero under every loss, at every t including both ends of the schedule."""
  from core.diffusion.process import PREDICTIONS, get_prediction
  schedule = SCHEDULES_ENDS[sched]
  x, eps, _ = _batch(shape=(len(T_ENDS), 4, 4, 3))
  x = jnp.clip(x, -0.9, 0.9)
  logsnr = schedule(T_ENDS)
  z = q_sample(x, eps, logsnr)
  assert sorted(PREDICTIONS.names()) == ["eps", "v", "x"]
  for kind in PREDICTIONS.names():
    p = get_prediction(kind)
    out = p.target(x, eps, logsnr)
    x_tol = 2e-3 if kind == "eps" else 2e-5   # eps -> x divides by alpha ~ 1e-4 at t = 1
    np.testing.assert_allclose(p.to_x(out, z, logsnr), x, atol=x_tol, err_msg=kind)
    eps_tol = 2e-3 if kind == "x" else 2e-5   # x -> eps divides by sigma ~ 1e-4 at t = 0
    np.testing.assert_allclose(p.to_eps(out, z, logsnr), eps, atol=eps_tol, err_msg=kind)
    for loss in LOSS_NAMES:
      oracle = lambda zz, l, k=kind: get_prediction(k).target(x, eps, l)
      val, _ = loss_at(oracle, x, eps, T_ENDS, schedule, LossConfig(name=loss), kind)
      assert float(val) == 0.0, (kind, loss)


@pytest.mark.parametrize("sched", list(SCHEDULES_ENDS))
def test_a_loss_is_the_same_weight_on_the_x_error_whatever_the_prediction(sched):
  """An output whose x_hat is off by d costs w(logsnr) d^2, w the loss's weight on the x error
  (eps_mse: SNR, v_mse: 1 + SNR, x_mse: 1; Kingma and Gao 2023), for every prediction: the
  prediction changes how the gradient is conditioned, never the objective."""
  schedule = SCHEDULES_ENDS[sched]
  x, eps, _ = _batch(shape=(len(T_ENDS), 4, 4, 3))
  logsnr = schedule(T_ENDS)
  z = q_sample(x, eps, logsnr)
  snr = np.exp(np.asarray(logsnr, np.float64))
  d = 0.01
  for loss, w in (("x_mse", np.ones_like(snr)), ("eps_mse", snr), ("v_mse", 1 + snr)):
    for kind in ("x", "eps", "v"):
      out = _pred_output(kind, x + d, z, logsnr)
      _, aux = loss_at(lambda zz, l: out, x, eps, T_ENDS, schedule, LossConfig(name=loss), kind)
      # relative to float32 rounding of z: eps and v outputs carry the x error through sigma
      # (d sigma / alpha at the low-noise end), so only where that is above rounding
      got = np.asarray(aux["loss_per_example"], np.float64)
      a, s = np.sqrt(1 / (1 + np.exp(-np.asarray(logsnr, np.float64)))), None
      s = np.sqrt(1 - a ** 2)
      ok = np.ones_like(got, bool) if kind == "x" else (s / np.maximum(a, 1e-12) * d > 1e-3) | (
          kind == "v") & (s * d > 1e-6)
      np.testing.assert_allclose(got[ok], (w * d * d)[ok], rtol=2e-2, err_msg=f"{kind} {loss}")
      assert ok.sum() >= 5, (kind, loss)


def test_the_output_weight_is_what_conditions_the_gradient():
  """aux['out_weight'] is d loss / d out (per element, over 2 err): 1 for x with x_mse at every
  t, alpha^2 for v with eps_mse (the paper's), SNR for x with eps_mse, which hands the gradient
  to the low-noise end; weight_cap bounds it (Min-SNR-gamma)."""
  from core.diffusion.process import get_prediction
  x, eps, _ = _batch(shape=(len(T_ENDS), 4, 4, 3))
  logsnr = logsnr_cosine(T_ENDS)
  snr = np.exp(np.asarray(logsnr, np.float64))
  cases = {("x", "x_mse", 0.0): np.ones_like(snr), ("v", "eps_mse", 0.0): snr / (1 + snr),
           ("x", "eps_mse", 0.0): snr, ("x", "eps_mse", 5.0): np.minimum(snr, 5.0),
           ("eps", "eps_mse", 0.0): np.ones_like(snr), ("x", "v_mse", 0.0): 1 + snr}
  for (kind, loss, cap), want in cases.items():
    cfg = LossConfig(name=loss, weight_cap=cap)
    target = get_prediction(kind).target(x, eps, logsnr_cosine(T_ENDS))
    out0 = target + 0.1 * jax.random.normal(jax.random.key(9), x.shape)
    f = lambda o: loss_at(lambda zz, l: o, x, eps, T_ENDS, logsnr_cosine, cfg, kind)
    def total(o):
      val, aux = f(o)
      return val * len(T_ENDS), aux
    (_, aux), g = jax.value_and_grad(total, has_aux=True)(out0)
    np.testing.assert_allclose(aux["out_weight"], want, rtol=1e-4, err_msg=f"{kind} {loss}")
    n_el = np.prod(x.shape[1:])
    np.testing.assert_allclose(g, 2 * aux["out_weight"][:, None, None, None] *
                               (out0 - target) / n_el, rtol=1e-3, atol=1e-12)


def test_weight_cap_is_min_snr():
  x, eps, _ = _batch()
  t = jnp.linspace(0.01, 0.99, x.shape[0])
  f = lambda z, l: jnp.zeros_like(z)
  _, plain = loss_at(f, x, eps, t, logsnr_cosine, LossConfig(name="eps_mse"), "x")
  _, capped = loss_at(f, x, eps, t, logsnr_cosine, LossConfig(name="eps_mse", weight_cap=5.0),
                      "x")
  ratio = np.asarray(capped["loss_per_example"] / plain["loss_per_example"])
  snr = np.exp(np.asarray(logsnr_cosine(t)))
  np.testing.assert_allclose(ratio, np.minimum(snr, 5.0) / snr, rtol=1e-4)


def test_a_model_outputs_what_its_prediction_names():
  from core.models import build_model, init_params, param_shapes, preset
  import dataclasses
  cfg = preset("unet_tiny")
  c = dataclasses.replace(cfg, prediction="x")
  m = build_model(c, 16)
  p = init_params(c, 16, jax.random.key(0))
  # one parameter tree for every prediction: the architecture's own
  assert jax.tree.structure(p) == jax.tree.structure(param_shapes(cfg, 16))
  z = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  out = m.apply({"params": p}, z, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32), train=False)
  assert out.shape == z.shape and bool(jnp.isfinite(out).all())


def _median(lam, dens):
  c = np.cumsum(dens * np.gradient(lam))
  return float(np.interp(0.5 * c[-1], c, lam))


def test_objective_weighting_is_the_loss_weight_times_the_schedule_density():
  """Kingma and Gao's view: with eps-MSE (eps-space weight 1) the weighting is the schedule's
  own density of logSNR, whose median for the clipped cosine is logSNR(t = 1/2) = 0 and moves by
  exactly the shift 2 ln(noise_d / res); any loss under a shift is its cosine weighting moved
  by the shift (x-MSE's e^-logsnr weight only rescales). Fails with the density read per unit
  of t, or without the e^-logsnr of the x error's weight."""
  from core.config import LossConfig, ScheduleConfig
  from core.diffusion.process import objective_weighting
  from core.diffusion.schedules import make_schedule
  cos, sh = make_schedule(ScheduleConfig("cosine"), 64), make_schedule(
      ScheduleConfig("shifted", noise_d=16), 64)
  eps, x = LossConfig("eps_mse"), LossConfig("x_mse")
  lam, d = objective_weighting(eps, cos, num=20001)
  assert abs(float(np.sum(d * np.gradient(lam))) - 1) < 1e-3
  assert abs(_median(lam, d)) < 0.01
  assert abs(_median(*objective_weighting(eps, sh, num=20001)) + 2 * np.log(4)) < 0.01
  mx = _median(*objective_weighting(x, cos, num=20001))
  assert mx < -12   # x-MSE: almost all of it at the clipped noisy end (median -13.6)
  assert abs(_median(*objective_weighting(x, sh, num=20001)) - (mx - 2 * np.log(4))) < 0.05
