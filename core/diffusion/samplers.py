"""Samplers: the appendix's DDPM ancestral sampler and deterministic DDIM, with
classifier-free guidance (scale 1 + eta, optionally only on an interval of t as in SiD2).

Each sampler is a pure step function (z_t, x_hat, eps_hat, logsnr_t, logsnr_s, noise) -> z_s,
chosen by name from SAMPLERS; `sample` runs one `lax.scan` over the steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from core.config import SamplerConfig
from core.diffusion.process import _bcast, get_prediction
from core.registry import Registry
from core.diffusion.schedules import Schedule, alpha_sigma

# model_fn(z, logsnr, labels) -> the network's output (x, eps or v: the sampler's `prediction`);
# labels None means the null (unconditional) class.
ModelFn = Callable[[jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray]], jnp.ndarray]
StepFn = Callable[..., jnp.ndarray]
SAMPLERS: Registry[Callable[[SamplerConfig], StepFn]] = Registry("sampler")


def ddpm_step(z_t, x_hat, logsnr_t, logsnr_s, noise, noise_param: float):
  """Appendix ancestral step from t to s < t; noise_param interpolates the log-variance."""
  ratio = jnp.exp(logsnr_t - logsnr_s)
  alpha_t, _ = alpha_sigma(logsnr_t)
  alpha_s, _ = alpha_sigma(logsnr_s)
  mu = _bcast(ratio * alpha_s / alpha_t, z_t) * z_t + _bcast((1 - ratio) * alpha_s, z_t) * x_hat
  min_lvar = jnp.log1p(-ratio) + jax.nn.log_sigmoid(-logsnr_s)
  max_lvar = jnp.log1p(-ratio) + jax.nn.log_sigmoid(-logsnr_t)
  lvar = noise_param * max_lvar + (1 - noise_param) * min_lvar
  return mu + _bcast(jnp.exp(0.5 * lvar), z_t) * noise


def ddim_step(x_hat, eps_hat, logsnr_s):
  """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat."""
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  return _bcast(alpha_s, x_hat) * x_hat + _bcast(sigma_s, x_hat) * eps_hat


@SAMPLERS.register("ddpm")
def _ddpm(cfg: SamplerConfig) -> StepFn:
  def step(z_t, x_hat, eps_hat, logsnr_t, logsnr_s, noise):
    return ddpm_step(z_t, x_hat, logsnr_t, logsnr_s, noise, cfg.noise_param)
  return step


@SAMPLERS.register("ddim")
def _ddim(cfg: SamplerConfig) -> StepFn:
  def step(z_t, x_hat, eps_hat, logsnr_t, logsnr_s, noise):
    return ddim_step(x_hat, eps_hat, logsnr_s)
  return step


def guided_output(model_fn: ModelFn, z, logsnr, labels, t, cfg: SamplerConfig):
  """eps = (1 + eta) eps_cond - eta eps_uncond with eta = scale - 1. eps is affine in the
  network's output (x, eps or v) for a fixed z, and the weights sum to one, so the same
  combination of outputs gives exactly that eps."""
  eta = cfg.guidance_scale - 1.0
  if eta == 0.0 or labels is None:
    return model_fn(z, logsnr, labels)
  n = z.shape[0]
  null = jnp.full_like(labels, -1)  # -1 marks the null class; models map it to num_classes
  v = model_fn(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
               jnp.concatenate([labels, null]))
  v_c, v_u = v[:n], v[n:]
  on = (t >= cfg.guidance_t_min) & (t <= cfg.guidance_t_max)
  return jnp.where(on, (1.0 + eta) * v_c - eta * v_u, v_c)


def time_grid(steps: int, t_end: float = 0.0):
  """(t, s) of each of `steps` steps, s < t: t from 1 down to t_end in equal steps, step i
  going from t = t_end + (1 - t_end) (steps - i) / steps to the next point of the grid."""
  i = jnp.arange(steps, dtype=jnp.float32)
  t = t_end + (1.0 - t_end) * ((steps - i) / steps)
  s = t_end + (1.0 - t_end) * ((steps - i - 1) / steps)
  return t, s


def sample(model_fn: ModelFn, shape, key, schedule: Schedule, cfg: SamplerConfig,
           labels=None, return_trajectory: bool = False, t_end: float = 0.0, sharding=None,
           prediction: str = "v"):
  """Draws images from t = 1 to t = 0 in cfg.steps steps, as one scan (in [-1, 1] if clip_x).

  t_end > 0 stops at t_end and returns z_{t_end} instead (CDM's truncated conditioning
  augmentation, docs/paper.md §4.2). return_trajectory: also {'z', 'x_hat'}, each (steps, *shape):
  z after step i (at time s_i of time_grid) and the x_hat it was drawn from. sharding (a NamedSharding of the batch axis, under jit) keeps
  z and the noise split over the devices, so each draws its share of the batch; the numbers do
  not depend on it (JAX's partitionable threefry). prediction: what model_fn outputs
  (model.prediction), turned into x_hat and eps_hat by core.diffusion.process.PREDICTIONS.
  """
  pred = get_prediction(prediction)
  step_fn = SAMPLERS.get(cfg.name)(cfg)
  n = shape[0]
  constrain = ((lambda x: jax.lax.with_sharding_constraint(x, sharding)) if sharding is not None
               else (lambda x: x))
  k_init, k_steps = jax.random.split(key)
  z = constrain(jax.random.normal(k_init, shape))

  ts, ss = time_grid(cfg.steps, t_end)

  def body(carry, i):
    z_t, _ = carry
    t, s = ts[i], ss[i]
    logsnr_t = jnp.full((n,), schedule(t))
    logsnr_s = jnp.full((n,), schedule(s))
    out = guided_output(model_fn, z_t, logsnr_t, labels, t, cfg).astype(jnp.float32)
    x_hat = pred.to_x(out, z_t, logsnr_t)
    if cfg.clip_x:
      x_hat = jnp.clip(x_hat, -1.0, 1.0)
    eps_hat = pred.to_eps(out, z_t, logsnr_t)
    noise = constrain(jax.random.normal(jax.random.fold_in(k_steps, i), shape))
    z_s = constrain(step_fn(z_t, x_hat, eps_hat, logsnr_t, logsnr_s, noise))
    return (z_s, x_hat), ({"z": z_s, "x_hat": x_hat} if return_trajectory else None)

  # The output is the last step's x_hat: z_0 of a clipped schedule still holds sigma(0) noise.
  (z, x), traj = jax.lax.scan(body, (z, constrain(jnp.zeros(shape))), jnp.arange(cfg.steps))
  x = z if t_end > 0 else x
  return (x, traj) if return_trajectory else x
