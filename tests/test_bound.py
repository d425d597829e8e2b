"""The variational bound (core.diffusion.bound) against closed forms: for Gaussian data x ~ N(0, S) the
optimal denoiser is linear, x_hat = alpha S (alpha^2 S + sigma^2 I)^-1 z, and every term of the
bound is known exactly, so the Monte-Carlo estimator with that oracle must land within its
standard error of them; and scored under two evaluation schedules with the same end points,
one model gets the same bound (the invariance that makes it a yardstick across schedules)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.diffusion import bound as B
from core.diffusion.schedules import alpha_sigma

LMIN, LMAX = -12.0, 10.0
EIG = np.logspace(-3, 0, 6)          # spread like an image's: some directions nearly constant
N = 4000                             # examples; the estimates' standard errors are over them


def _gaussian_setup():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((len(EIG), len(EIG))))
  return q, q @ np.diag(EIG) @ q.T


def _oracle(q):
  """x_hat(z, l) = alpha S (alpha^2 S + sigma^2 I)^-1 z, in S's eigenbasis."""
  qj = jnp.asarray(q, jnp.float32)
  eig = jnp.asarray(EIG, jnp.float32)

  def x_hat(z, logsnr):
    a, s = alpha_sigma(logsnr)
    gain = a[:, None] * eig / (a[:, None] ** 2 * eig + s[:, None] ** 2)
    return ((z @ qj) * gain) @ qj.T
  return x_hat


def _estimate(schedule_name: str, times: int = 4, seed: int = 1, decoder: str = "gaussian"):
  q, cov = _gaussian_setup()
  x = np.random.default_rng(seed).multivariate_normal(np.zeros(len(EIG)), cov, N)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(N))
  sched = B.eval_schedule(schedule_name, LMIN, LMAX)
  terms = jax.jit(lambda x, k: B.bound_terms(_oracle(q), x, k, sched, LMIN, LMAX, times,
                                             decoder))(jnp.asarray(x, jnp.float32), keys)
  return {k: np.asarray(v, np.float64) for k, v in terms.items()}


def _mean_se(v):
  return float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v)))


def _mutual_info(logsnr):
  """I(x; z_l) = 1/2 sum log(1 + e^l s_i) for Gaussian x."""
  return 0.5 * float(np.sum(np.log1p(math.exp(logsnr) * EIG)))


def test_diffusion_term_and_whole_bound_match_the_closed_form():
  t = _estimate("cosine")
  # E[L_diffusion] = 1/2 int e^l mmse(l) dl = I(x; z_max) - I(x; z_min) (I-MMSE, Guo et al.)
  m, se = _mean_se(t["diffusion"])
  exact = _mutual_info(LMAX) - _mutual_info(LMIN)
  assert abs(m - exact) < 4 * se, (m, exact, se)
  assert se < 0.05 * exact                # precise enough that a wrong factor cannot hide
  # The whole bound is -E log p(x) = H(x) plus the end points' exact slack:
  # KL(q(z_min) || N(0, I)) and the decoder's cross-entropy minus H(x | z_max).
  a2, s2 = 1 / (1 + math.exp(-LMIN)), 1 / (1 + math.exp(LMIN))
  c = a2 * EIG + s2
  kl_marginal = 0.5 * float(np.sum(c - 1 - np.log(c)))
  v = math.exp(-LMAX)                     # (sigma / alpha)^2 at the decoder
  recon_ce = 0.5 * len(EIG) * (math.log(2 * math.pi * v) + 1)
  h_x_given_z = 0.5 * float(np.sum(np.log(2 * math.pi * math.e * EIG / (1 + EIG / v))))
  entropy = 0.5 * float(np.sum(np.log(2 * math.pi * math.e * EIG)))
  exact_total = entropy + kl_marginal + recon_ce - h_x_given_z
  m, se = _mean_se(t["prior"] + t["diffusion"] + t["recon"])
  assert abs(m - exact_total) < 4 * se, (m, exact_total, se)
  # ... and each end term alone (their expectations are closed-form too)
  m, se = _mean_se(t["prior"])
  assert abs(m - (_mutual_info(LMIN) + kl_marginal)) < 4 * se + 1e-6
  m, se = _mean_se(t["recon"])
  assert abs(m - recon_ce) < 4 * se


def test_two_schedules_with_the_same_end_points_agree_within_the_standard_error():
  cos, lin = _estimate("cosine", seed=1), _estimate("linear", seed=2)
  (m1, se1), (m2, se2) = _mean_se(cos["diffusion"]), _mean_se(lin["diffusion"])
  assert abs(m1 - m2) < 4 * math.hypot(se1, se2), (m1, m2, se1, se2)


def test_discretized_decoder_is_a_distribution_over_the_levels():
  """Summed over the 256 values, p(x | z) is 1; at a high logSNR the value z came from is
  nearly certain, at a low one the decoder is nearly uniform (8 bits a dimension)."""
  levels = -1.0 + 2.0 * jnp.arange(256) / 255
  z = jnp.asarray([[0.3], [-0.97]], jnp.float32)
  for lmax in (2.0, 10.0):
    nll = jax.vmap(lambda v: B.discretized_nll(jnp.full_like(z, v), z, lmax))(levels)  # (256, 2)
    np.testing.assert_allclose(np.exp(-np.asarray(nll)).sum(0), 1.0, rtol=1e-4)
  x = jnp.asarray([[0.0], [1.0]])
  a, s = alpha_sigma(jnp.float32(14.0))
  assert float(B.discretized_nll(x, a * x, 14.0).max()) < 1e-3
  assert abs(float(B.discretized_nll(x, a * x, -14.0)[0]) - math.log(256)) < 1e-2


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_evaluation_schedules_run_from_the_top_end_point_to_the_bottom(name):
  s = B.eval_schedule(name, LMIN, LMAX)
  np.testing.assert_allclose([float(s(0.0)), float(s(1.0))], [LMAX, LMIN], atol=1e-3)
