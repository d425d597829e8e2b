"""Noise schedules as logSNR(t), t in [0, 1] (docs/paper.md §1.2; paper section 3.1 and appendix).

Each is a pure jnp function; `make_schedule(cfg, image_d)` returns a Schedule, chosen by name
from SCHEDULES: a function of t alone (call it) that is also a program and its numbers
(`fn(t, params)`, `params`). The clipped cosine, the shifted (eq. 5) and the interpolated (eq. 6)
schedules are one program, `logsnr_family`, with four numbers, so that jitted code given the
numbers as an input (core.train's step, core.runtime.generate's sampler) compiles once for every
schedule arm at a resolution, and the persistent compilation cache serves the rest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from core.config import ScheduleConfig
from core.registry import Registry



@dataclasses.dataclass(frozen=True)
class Schedule:
  """logSNR(t) as a program and its numbers: schedule(t) = fn(t, params). Jitted code that
  takes `params` as an input and calls `at(params)` compiles one program for every schedule
  that shares `fn`."""
  fn: Callable   # (t, params float32[k]) -> logSNR; static: part of a compiled program
  params: tuple[float, ...] = ()   # data: an input of the program

  def __call__(self, t):
    return self.fn(t, jnp.asarray(self.params, jnp.float32))

  def at(self, params) -> Callable:
    """The schedule as a function of t with `params` (e.g. traced) in place of its own."""
    return lambda t: self.fn(t, params)

  def args(self):
    """Its numbers as the float32 array that `at` takes."""
    return jnp.asarray(self.params, jnp.float32)


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


def family_params(image_d: int, noise_d_low: int, noise_d_high: int,
                  logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> tuple[float, ...]:
  """The numbers of logsnr_family for the interpolated schedule between two shifts (the
  shifted schedule: both shifts equal; the cosine: noise_d = image_d)."""
  t_min = math.atan(math.exp(-0.5 * logsnr_max))
  t_max = math.atan(math.exp(-0.5 * logsnr_min))
  s_lo = 2.0 * math.log(noise_d_low / image_d)
  s_hi = 2.0 * math.log(noise_d_high / image_d)
  return (t_min, t_max - t_min, s_hi, s_lo - s_hi)


def logsnr_family(t, params):
  """cosine(t) + s_hi + t (s_lo - s_hi), params = (t_min, t_max - t_min, s_hi, s_lo - s_hi):
  eq. 6 written so that equal shifts (eq. 5, and the cosine with no shift) compute exactly
  what logsnr_shifted and logsnr_cosine do (x + 0 and t * 0 are exact); eq. 6 itself agrees
  with logsnr_interpolated to float32 rounding."""
  t = jnp.asarray(t, jnp.float32)
  cos = -2.0 * jnp.log(jnp.tan(params[0] + t * params[1]))
  return cos + params[2] + t * params[3]


def alpha_sigma(logsnr):
  """Variance preserving: alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


@SCHEDULES.register("cosine")
def _cosine(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return Schedule(logsnr_family, family_params(image_d, image_d, image_d, cfg.logsnr_min,
                                               cfg.logsnr_max))


@SCHEDULES.register("shifted")
def _shifted(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return Schedule(logsnr_family, family_params(image_d, cfg.noise_d, cfg.noise_d,
                                               cfg.logsnr_min, cfg.logsnr_max))


@SCHEDULES.register("interpolated")
def _interpolated(cfg: ScheduleConfig, image_d: int) -> Schedule:
  return Schedule(logsnr_family, family_params(image_d, cfg.noise_d_low, cfg.noise_d_high,
                                               cfg.logsnr_min, cfg.logsnr_max))


def as_schedule(fn: Callable) -> Schedule:
  """A plain function of t as a Schedule (its numbers are constants of its program)."""
  return fn if isinstance(fn, Schedule) else Schedule(lambda t, _: fn(t))


def make_schedule(cfg: ScheduleConfig, image_d: int) -> Schedule:
  """The configured schedule: a function of t that is also a program and its numbers."""
  return SCHEDULES.get(cfg.name)(cfg, image_d)
