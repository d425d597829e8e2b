"""Noise schedules as logSNR(t), t in [0, 1] (docs/paper.md §1.2; paper section 3.1 and appendix).

Each is a pure jnp function; `make_schedule(cfg, image_d)` closes over the configuration and
returns a function of t alone, chosen by name from SCHEDULES.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from core.config import ScheduleConfig
from core.registry import Registry

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
SCHEDULES: Registry[Callable[[ScheduleConfig, int], Schedule]] = Registry("schedule")


def logsnr_cosine(t, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
  """Clipped cosine schedule (appendix): -2 log tan(t_min + t (t_max - t_min))."""
  t_min = math.atan(math.exp(-0.5 * logsnr_max))
  t_max = math.atan(math.exp(-0.5 * logsnr_min))
  return -2.0 * jnp.log(jnp.tan(t_min + jnp.asarray(t, jnp.float32) * (t_max - t_min)))


def logsnr_shifted(t, image_d: int, noise_d: int, logsnr_min: float = -15.0,
                   logsnr_max: float = 15.0):
  """Eq. 5: cosine + 2 log(noise_d / image_d); the clip applies before the shift."""
  return logsnr_cosine(t, logsnr_min, logsnr_max) + 2.0 * math.log(noise_d / image_d)


def logsnr_interpolated(t, image_d: int, noise_d_low: int, noise_d_high: int,
                        logsnr_min: float = -15.0, logsnr_max: float = 15.0):
  """Eq. 6: t * shifted(low) + (1 - t) * shifted(high).

  [?] Some transcriptions swap t and 1 - t; this form puts the noisier low-resolution shift at
  t = 1 (pure noise end), as the paper's reasoning asks.
  """
  t = jnp.asarray(t, jnp.float32)
  lo = logsnr_shifted(t, image_d, noise_d_low, logsnr_min, logsnr_max)
  hi = logsnr_shifted(t, image_d, noise_d_high, logsnr_min, logsnr_max)
  return t * lo + (1.0 - t) * hi


def alpha_sigma(logsnr):
  """Variance preserving: alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


@SCHEDULES.register("cosine")
def _cosine(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return lambda t: logsnr_cosine(t, cfg.logsnr_min, cfg.logsnr_max)


@SCHEDULES.register("shifted")
def _shifted(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return lambda t: logsnr_shifted(t, image_d, cfg.noise_d, cfg.logsnr_min, cfg.logsnr_max)


@SCHEDULES.register("interpolated")
def _interpolated(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return lambda t: logsnr_interpolated(t, image_d, cfg.noise_d_low, cfg.noise_d_high,
                                       cfg.logsnr_min, cfg.logsnr_max)


def make_schedule(cfg: ScheduleConfig, image_d: int) -> Schedule:
  """The configured schedule as a function of t alone."""
  return SCHEDULES.get(cfg.name)(cfg, image_d)
