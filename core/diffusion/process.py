"""The forward process, prediction conversions and the training losses (docs/paper.md §1).

The network predicts v = alpha eps - sigma x (paper appendix), or x or eps (model.prediction,
PREDICTIONS). Losses are chosen by name from LOSSES, each a weight on the x error; the error is
measured in the prediction's own space, so that the multiscale loss of section 3.2 applies to
any of them and no conversion divides by alpha or sigma.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from core.config import LossConfig
from core.registry import Registry
from core.diffusion.schedules import Schedule, alpha_sigma

# denoise_fn(z, logsnr) -> the network's output (model.prediction); labels, conditioning and
# dropout keys are bound by the caller.
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


def eps_from_x(z, x, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return (z - _bcast(alpha, z) * x) / _bcast(sigma, z)


def v_from_eps(z, eps, logsnr):
  return v_from_x_eps(x_from_eps(z, eps, logsnr), eps, logsnr)


# What the network outputs (JiT, Li and He 2025: x, eps or v), chosen by model.prediction apart
# from the loss (loss.name). Each kind maps its output to x_hat and eps_hat exactly, with no
# floor: the clipped schedules keep alpha and sigma above about 1e-4, and a floor inside a
# conversion makes the target unreachable (for sigma below it the loss asked for a v that the
# sampler, converting back with the true sigma, turned into mostly z).
@dataclasses.dataclass(frozen=True)
class Prediction:
  name: str
  target: Callable      # (x, eps, logsnr) -> what a perfect network outputs
  to_x: Callable        # (out, z, logsnr) -> x_hat
  to_eps: Callable      # (out, z, logsnr) -> eps_hat
  # log of (d x_hat / d out)^2: an output error e is the x error sqrt of this times e, so a
  # loss's weight on the x error reaches the network's output multiplied by it.
  log_dx_dout2: Callable


PREDICTIONS: Registry[Prediction] = Registry("model.prediction")


def _register_prediction(p: Prediction) -> None:
  PREDICTIONS.register(p.name)(p)


_register_prediction(Prediction(
    "v", target=lambda x, eps, l: v_from_x_eps(x, eps, l),
    to_x=lambda out, z, l: x_from_v(z, out, l), to_eps=lambda out, z, l: eps_from_v(z, out, l),
    log_dx_dout2=lambda l: jax.nn.log_sigmoid(-l)))          # x_hat = alpha z - sigma out
_register_prediction(Prediction(
    "eps", target=lambda x, eps, l: eps, to_x=lambda out, z, l: x_from_eps(z, out, l),
    to_eps=lambda out, z, l: out,
    log_dx_dout2=lambda l: -l))                               # x_hat = (z - sigma out) / alpha
_register_prediction(Prediction(
    "x", target=lambda x, eps, l: x, to_x=lambda out, z, l: out,
    to_eps=lambda out, z, l: eps_from_x(z, out, l),
    log_dx_dout2=jnp.zeros_like))                             # x_hat = out


def get_prediction(kind: str) -> Prediction:
  return PREDICTIONS.get(kind)


def sample_t(key, batch: int, stratified: bool = False):
  """t ~ U(0, 1); stratified: one uniform offset, evenly spaced across the batch (VDM)."""
  if stratified:
    u0 = jax.random.uniform(key, ())
    return jnp.mod(u0 + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
  return jax.random.uniform(key, (batch,))


# Every loss is a weight on the x error, w(logsnr) ||x - x_hat||^2 (Kingma and Gao 2023,
# section 2): eps-MSE is w = SNR, v-MSE w = 1 + SNR, x-MSE w = 1. A loss returns log w from
# (logsnr, dlogsnr/dt); `loss_at` measures the error in the prediction's own space and moves w
# there with Prediction.log_dx_dout2, so no target or conversion divides by alpha or sigma.
LogWeightFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
LOSSES: Registry[Callable[[LossConfig], LogWeightFn]] = Registry("loss")


@LOSSES.register("eps_mse")
def _eps_mse(cfg: LossConfig) -> LogWeightFn:
  """The paper's loss: eps-MSE with the ELBO weight replaced by 1; on the x error, w = SNR."""
  return lambda logsnr, dlogsnr_dt: logsnr


@LOSSES.register("v_mse")
def _v_mse(cfg: LossConfig) -> LogWeightFn:
  """[?] The U-ViT config's v-MSE: ||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2."""
  return lambda logsnr, dlogsnr_dt: jax.nn.softplus(logsnr)


@LOSSES.register("x_mse")
def _x_mse(cfg: LossConfig) -> LogWeightFn:
  """MSE in x space, weight 1 (JiT's axis: the loss's space apart from the prediction's)."""
  return lambda logsnr, dlogsnr_dt: jnp.zeros_like(logsnr)


@LOSSES.register("sigmoid")
def _sigmoid(cfg: LossConfig) -> LogWeightFn:
  """SiD2's weighting as Kingma and Gao (2023, eq. 6) define it: the weighted ELBO integrand
  (1/2) w(logsnr) (-dlogsnr/dt) ||eps - eps_hat||^2 with w = sigmoid(b - logsnr), t ~ U(0, 1).
  The factor -dlogsnr/dt makes the loss a function of the weighting alone, whatever the schedule
  (their section 4); without it the schedule would weight the noise levels a second time."""
  def fn(logsnr, dlogsnr_dt):
    return (logsnr + jax.nn.log_sigmoid(cfg.sigmoid_bias - logsnr)
            + jnp.log(0.5 * -dlogsnr_dt))
  return fn


def loss_log_weight(cfg: LossConfig, logsnr, dlogsnr_dt):
  """log of the loss's weight on the x error, with loss.weight_cap applied: capping eps-MSE's
  SNR at gamma is Min-SNR-gamma (Hang et al. 2023)."""
  log_w = LOSSES.get(cfg.name)(cfg)(logsnr, dlogsnr_dt)
  if cfg.weight_cap > 0:
    log_w = jnp.minimum(log_w, math.log(cfg.weight_cap))
  return log_w


def objective_weighting(loss: LossConfig, schedule: Schedule, num: int = 4001):
  """Where a training objective puts its weight over noise levels (Kingma and Gao 2023): any
  loss here is w_x(logsnr) ||x - x_hat||^2 at t ~ U(0, 1), i.e. the eps-space weighting
  w(logsnr) = w_x(logsnr) e^-logsnr times the schedule's density of logsnr, 1 / |dlogsnr/dt|.
  Returns (logsnr ascending, that weighting as a density over logsnr integrating to 1), as
  numpy arrays; the multiscale loss's extra terms (section 3.2) are not included."""
  import numpy as np
  t = jnp.linspace(0.5 / num, 1.0 - 0.5 / num, num)
  lam, dlam = jax.vmap(jax.value_and_grad(lambda u: schedule(u)))(t)
  per_t = jnp.exp(loss_log_weight(loss, lam, dlam) - lam)     # weight per unit of t
  lam, dlam, per_t = (np.asarray(a, np.float64) for a in (lam, dlam, per_t))
  dens = per_t / np.abs(dlam)                                 # per unit of logsnr
  total = float(np.sum(per_t) / num)                          # its integral over t (midpoints)
  order = np.argsort(lam)
  return lam[order], dens[order] / total


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


def diffusion_loss(denoise_fn: DenoiseFn, x, key, schedule: Schedule, cfg: LossConfig,
                   prediction: str = "v"):
  """Monte-Carlo training loss for a batch x in [-1, 1]; returns (mean loss, aux)."""
  k_t, k_eps = jax.random.split(key)
  t = sample_t(k_t, x.shape[0], cfg.stratified_t)
  eps = jax.random.normal(k_eps, x.shape, x.dtype)
  return loss_at(denoise_fn, x, eps, t, schedule, cfg, prediction)


def loss_at(denoise_fn: DenoiseFn, x, eps, t, schedule: Schedule, cfg: LossConfig,
            prediction: str = "v"):
  """The loss with noise and t given (what diffusion_loss samples); used to overfit tests.

  aux["out_weight"] is the weight each example's output error carries (the loss's weight on
  the x error times (d x_hat / d out)^2): how evenly the noise levels share the gradient.
  """
  # The schedule acts elementwise, so a forward-mode derivative along ones is dlogsnr/dt per
  # example (unused, and removed by XLA, except by the sigmoid loss).
  logsnr, dlogsnr_dt = jax.jvp(schedule, (t,), (jnp.ones_like(t),))
  z = q_sample(x, eps, logsnr)
  pred = get_prediction(prediction)
  out = denoise_fn(z, logsnr).astype(jnp.float32)
  weight = jnp.exp(loss_log_weight(cfg, logsnr, dlogsnr_dt) + pred.log_dx_dout2(logsnr))
  per_example = weight * pixel_mse(out - pred.target(x, eps, logsnr), cfg)
  return jnp.mean(per_example), {"loss_per_example": per_example, "t": t,
                                 "out_weight": weight}
