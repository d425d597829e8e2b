"""The variational bound on -log p(x) in bits per dimension (VDM: Kingma, Salimans, Poole, Ho
2021, "Variational diffusion models", sections 3-5), a likelihood yardstick for any trained
model whatever its schedule, loss or prediction.

    -log p(x) <= L_prior + L_diffusion + L_recon,   bits/dim = that / (D ln 2)

  L_prior     = KL(q(z_min | x) || N(0, I)) at logsnr_min                    (VDM eq. 8)
  L_diffusion = 1/2 int_{logsnr_min}^{logsnr_max} e^l E||x - x_hat(z_l, l)||^2 dl  (eq. 17,
                written over l = logSNR: SNR'(t) dt = e^l dl)
  L_recon     = -log p(x | z_max), a decoder over the data's 256 values    (appendix C)

In continuous time L_diffusion depends on the schedule only through its end points (VDM
section 5.1), so every model is scored under one fixed evaluation schedule t -> l(t) between
them (EVAL_SCHEDULES) whatever schedule it was trained with; l(t) only places the Monte-Carlo
points, each weighted by -dl/dt. Pure functions; core.evaluate runs them on a trained model.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from core.diffusion.process import q_sample
from core.registry import Registry
from core.diffusion.schedules import Schedule, logsnr_cosine

EVAL_SCHEDULES: Registry[Callable[[float, float], Schedule]] = Registry("eval.bound_schedule")


@EVAL_SCHEDULES.register("cosine")
def _cosine(logsnr_min: float, logsnr_max: float) -> Schedule:
  """The paper's clipped cosine between the end points: l(0) = max, l(1) = min."""
  return lambda t: logsnr_cosine(t, logsnr_min, logsnr_max)


@EVAL_SCHEDULES.register("linear")
def _linear(logsnr_min: float, logsnr_max: float) -> Schedule:
  """logSNR linear in t: every noise level equally often."""
  return lambda t: logsnr_max + (logsnr_min - logsnr_max) * jnp.asarray(t, jnp.float32)


def eval_schedule(name: str, logsnr_min: float, logsnr_max: float) -> Schedule:
  return EVAL_SCHEDULES.get(name)(logsnr_min, logsnr_max)


def _sum(a):
  return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _sigmoid(v: float) -> float:
  return 1.0 / (1.0 + math.exp(-v))


def prior_kl(x, logsnr_min: float):
  """KL(N(alpha x, sigma^2 I) || N(0, I)) per example, in nats."""
  a2, s2 = _sigmoid(logsnr_min), _sigmoid(-logsnr_min)
  return _sum(0.5 * (s2 + a2 * jnp.square(x) - 1.0 - math.log(s2)))


def gaussian_nll(x, z, logsnr_max: float):
  """-log N(x; z / alpha, (sigma / alpha)^2 I) per example: the decoder of continuous data."""
  var = math.exp(-logsnr_max)          # (sigma / alpha)^2
  alpha = math.sqrt(_sigmoid(logsnr_max))
  return _sum(0.5 * math.log(2 * math.pi * var) + jnp.square(x - z / alpha) / (2 * var))


def discretized_nll(x, z, logsnr_max: float, levels: int = 256):
  """-log p(x | z) per example for data on `levels` values in [-1, 1]: per dimension
  p(x = v_k) proportional to N(z; alpha v_k, sigma^2) over the levels v_k (VDM appendix C).
  The normaliser is a running logsumexp over the levels, so memory stays that of x."""
  alpha, sigma = math.sqrt(_sigmoid(logsnr_max)), math.sqrt(_sigmoid(-logsnr_max))
  logit = lambda v: -0.5 * jnp.square((z - alpha * v) / sigma)

  def body(k, carry):
    m, s = carry
    lk = logit(-1.0 + 2.0 * k / (levels - 1))
    new_m = jnp.maximum(m, lk)
    return new_m, s * jnp.exp(m - new_m) + jnp.exp(lk - new_m)
  m0 = jnp.full(z.shape, -jnp.inf, z.dtype)
  m, s = jax.lax.fori_loop(0, levels, body, (m0, jnp.zeros_like(z)))
  return _sum(m + jnp.log(s) - logit(x))


DECODERS = {"discretized": discretized_nll, "gaussian": gaussian_nll}


def diffusion_integrand(x, x_hat, logsnr, dlogsnr_dt):
  """1/2 (-dl/dt) e^l ||x - x_hat||^2 per example: with t ~ U(0, 1), an unbiased estimate of
  L_diffusion (the -dl/dt is the importance weight of sampling l through the schedule)."""
  return 0.5 * -dlogsnr_dt * jnp.exp(logsnr) * _sum(jnp.square(x - x_hat))


def lattice_times(u, k: int):
  """(B, k) times: each example's k evenly spaced points shifted by its own u ~ U(0, 1) (a
  randomly shifted lattice: unbiased, and examples stay independent)."""
  return jnp.mod(u[:, None] + jnp.arange(k, dtype=jnp.float32) / k, 1.0)


def bound_terms(x_hat_fn, x, keys, schedule: Schedule, logsnr_min: float, logsnr_max: float,
                times: int, decoder: str = "discretized") -> dict:
  """Per-example terms of the bound in nats: {"prior", "diffusion", "recon"}.

  x_hat_fn(z, logsnr) -> x_hat; x: (B, ...) data in [-1, 1]; keys: (B,) keys, one per example,
  so an example's estimate does not depend on the batch it is in. L_diffusion averages
  `times` lattice points of `schedule`, which must run from logsnr_max at t = 0 to logsnr_min
  at t = 1."""
  u = jax.vmap(lambda k: jax.random.uniform(k))(keys)
  ts = lattice_times(u, times)

  def one(total, j):
    t = ts[:, j]
    logsnr, dl = jax.jvp(schedule, (t,), (jnp.ones_like(t),))
    eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, j), x.shape[1:]))(keys)
    z = q_sample(x, eps, logsnr)
    return total + diffusion_integrand(x, x_hat_fn(z, logsnr), logsnr, dl), None
  diffusion, _ = jax.lax.scan(one, jnp.zeros(x.shape[0]), jnp.arange(times))
  eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, times), x.shape[1:]))(keys)
  z_max = q_sample(x, eps, jnp.full((x.shape[0],), logsnr_max, jnp.float32))
  return {"prior": prior_kl(x, logsnr_min), "diffusion": diffusion / times,
          "recon": DECODERS[decoder](x, z_max, logsnr_max)}


def bits_per_dim(nats, dims: int):
  return nats / (dims * math.log(2.0))
