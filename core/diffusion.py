"""The forward process, prediction conversions and the training losses (SPEC section 1).

The network predicts v = alpha eps - sigma x (paper appendix). Losses are chosen by name from
LOSSES; each maps (x, eps, z, v_hat, logsnr, dlogsnr_dt) to a per-pixel error map and a
per-example weight, so that the multiscale loss of section 3.2 applies to any of them.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from core.config import LossConfig
from core.registry import Registry
from core.schedules import Schedule, alpha_sigma

# denoise_fn(z, logsnr) -> v_hat; labels, conditioning and dropout keys are bound by the caller.
DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _bcast(a, x):
  return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(x, eps, logsnr):
  """z_t = alpha_t x + sigma_t eps."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * x + _bcast(sigma, x) * eps


def v_from_x_eps(x, eps, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * eps - _bcast(sigma, x) * x


def eps_from_v(z, v, logsnr):
  """eps_hat = sigma z + alpha v_hat."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(sigma, z) * z + _bcast(alpha, z) * v


def x_from_v(z, v, logsnr):
  """x_hat = alpha z - sigma v_hat."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, z) * z - _bcast(sigma, z) * v


def x_from_eps(z, eps, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return (z - _bcast(sigma, z) * eps) / _bcast(alpha, z)


def v_from_eps(z, eps, logsnr):
  return v_from_x_eps(x_from_eps(z, eps, logsnr), eps, logsnr)


# What the network outputs (JiT, Li and He 2025: x, eps or v), turned into the v the rest of
# the toolkit works in; the loss's space is chosen apart (loss.name: x_mse, eps_mse, v_mse).
# A division by alpha (eps) or sigma (x) is floored at PREDICTION_MIN_DIV, as JiT clips its
# 1 - t: at logsnr +-15 it would otherwise multiply the network's error by about 1,800.
PREDICTION_MIN_DIV = 0.05
PREDICTIONS: Registry[Callable] = Registry("model.prediction")


@PREDICTIONS.register("v")
def _pred_v(out, z, logsnr):
  return out


@PREDICTIONS.register("eps")
def _pred_eps(out, z, logsnr):
  """v = (eps_hat - sigma z) / alpha (from v = alpha eps - sigma x, z = alpha x + sigma eps)."""
  alpha, sigma = alpha_sigma(logsnr)
  return (out - _bcast(sigma, z) * z) / _bcast(jnp.maximum(alpha, PREDICTION_MIN_DIV), z)


@PREDICTIONS.register("x")
def _pred_x(out, z, logsnr):
  """v = (alpha z - x_hat) / sigma."""
  alpha, sigma = alpha_sigma(logsnr)
  return (_bcast(alpha, z) * z - out) / _bcast(jnp.maximum(sigma, PREDICTION_MIN_DIV), z)


def v_from_prediction(kind: str, out, z, logsnr):
  return PREDICTIONS.get(kind)(out, z, logsnr)


def sample_t(key, batch: int, stratified: bool = False):
  """t ~ U(0, 1); stratified: one uniform offset, evenly spaced across the batch (VDM)."""
  if stratified:
    u0 = jax.random.uniform(key, ())
    return jnp.mod(u0 + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
  return jax.random.uniform(key, (batch,))


# A loss returns (err, weight): err a per-pixel residual of the predicted quantity, squared and
# averaged by the caller (after downsampling for multiscale); weight a per-example factor.
LossFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray]]
LOSSES: Registry[Callable[[LossConfig], LossFn]] = Registry("loss")


@LOSSES.register("eps_mse")
def _eps_mse(cfg: LossConfig) -> LossFn:
  """The paper's loss: eps-MSE with the ELBO weight replaced by 1."""
  def fn(x, eps, z, v_hat, logsnr, dlogsnr_dt):
    return eps - eps_from_v(z, v_hat, logsnr), jnp.ones_like(logsnr)
  return fn


@LOSSES.register("v_mse")
def _v_mse(cfg: LossConfig) -> LossFn:
  """[?] The U-ViT config's v-MSE."""
  def fn(x, eps, z, v_hat, logsnr, dlogsnr_dt):
    return v_from_x_eps(x, eps, logsnr) - v_hat, jnp.ones_like(logsnr)
  return fn


@LOSSES.register("x_mse")
def _x_mse(cfg: LossConfig) -> LossFn:
  """MSE in x space, weight 1 (JiT's axis: the loss's space apart from the prediction's)."""
  def fn(x, eps, z, v_hat, logsnr, dlogsnr_dt):
    return x - x_from_v(z, v_hat, logsnr), jnp.ones_like(logsnr)
  return fn


@LOSSES.register("sigmoid")
def _sigmoid(cfg: LossConfig) -> LossFn:
  """SiD2's weighting as Kingma and Gao (2023, eq. 6) define it: the weighted ELBO integrand
  (1/2) w(logsnr) (-dlogsnr/dt) ||eps - eps_hat||^2 with w = sigmoid(b - logsnr), t ~ U(0, 1).
  The factor -dlogsnr/dt makes the loss a function of the weighting alone, whatever the schedule
  (their section 4); without it the schedule would weight the noise levels a second time."""
  def fn(x, eps, z, v_hat, logsnr, dlogsnr_dt):
    w = jax.nn.sigmoid(cfg.sigmoid_bias - logsnr)
    return eps - eps_from_v(z, v_hat, logsnr), 0.5 * w * -dlogsnr_dt
  return fn


def avg_pool_to(x, s: int):
  """D_s: linear downsampling of NHWC x to s x s by average pooling."""
  n, h, w, c = x.shape
  f = h // s
  return x.reshape(n, s, f, w // f, f, c).mean(axis=(2, 4))


def multiscale_resolutions(d: int, base: int) -> list[int]:
  """{base, 2 base, ..., d}, always including d (section 3.2)."""
  out, s = [], base
  while s < d:
    if d % s == 0:
      out.append(s)
    s *= 2
  return out + [d]


def pixel_mse(err, cfg: LossConfig):
  """Per-example mean squared error, plain or multiscale (section 3.2).

  Multiscale: sum over s of (d / s) * mean ||D_s[err]||^2. The paper writes 1/s; scaling every
  term by d keeps the full-resolution term equal to the plain loss, so the two arms share the
  learning rate and the gradient-clipping threshold.
  """
  if not cfg.multiscale:
    return jnp.mean(jnp.square(err), axis=tuple(range(1, err.ndim)))
  d = err.shape[1]
  total = 0.0
  for s in multiscale_resolutions(d, cfg.multiscale_base):
    e = avg_pool_to(err, s) if s < d else err
    total = total + (d / s) * jnp.mean(jnp.square(e), axis=(1, 2, 3))
  return total


def diffusion_loss(denoise_fn: DenoiseFn, x, key, schedule: Schedule, cfg: LossConfig):
  """Monte-Carlo training loss for a batch x in [-1, 1]; returns (mean loss, aux)."""
  k_t, k_eps = jax.random.split(key)
  t = sample_t(k_t, x.shape[0], cfg.stratified_t)
  eps = jax.random.normal(k_eps, x.shape, x.dtype)
  return loss_at(denoise_fn, x, eps, t, schedule, cfg)


def loss_at(denoise_fn: DenoiseFn, x, eps, t, schedule: Schedule, cfg: LossConfig):
  """The loss with noise and t given (what diffusion_loss samples); used to overfit tests."""
  # The schedule acts elementwise, so a forward-mode derivative along ones is dlogsnr/dt per
  # example (unused, and removed by XLA, except by the sigmoid loss).
  logsnr, dlogsnr_dt = jax.jvp(schedule, (t,), (jnp.ones_like(t),))
  z = q_sample(x, eps, logsnr)
  v_hat = denoise_fn(z, logsnr).astype(jnp.float32)
  err, weight = LOSSES.get(cfg.name)(cfg)(x, eps, z, v_hat, logsnr, dlogsnr_dt)
  per_example = weight * pixel_mse(err, cfg)
  return jnp.mean(per_example), {"loss_per_example": per_example, "t": t}
