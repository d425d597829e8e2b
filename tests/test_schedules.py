import math

import jax.numpy as jnp
import numpy as np
import pytest

from core.config import ScheduleConfig
from core.diffusion.schedules import (SCHEDULES, alpha_sigma, logsnr_cosine, logsnr_interpolated,
                                      logsnr_shifted, make_schedule)

T = np.linspace(0.0, 1.0, 101)


def np_cosine(t, lo=-15.0, hi=15.0):
  t_min, t_max = math.atan(math.exp(-hi / 2)), math.atan(math.exp(-lo / 2))
  return -2 * np.log(np.tan(t_min + t * (t_max - t_min)))


def test_cosine_matches_formula_and_clip_end_points():
  np.testing.assert_allclose(logsnr_cosine(T), np_cosine(T), rtol=1e-4, atol=1e-4)
  assert abs(float(logsnr_cosine(0.0)) - 15.0) < 1e-3
  assert abs(float(logsnr_cosine(1.0)) + 15.0) < 1e-3
  assert abs(float(logsnr_cosine(0.5))) < 1e-4  # symmetric clip: logSNR 0 at t = 1/2


@pytest.mark.parametrize("image_d,noise_d", [(128, 64), (128, 32), (256, 128), (512, 32)])
def test_shifted_is_cosine_plus_constant(image_d, noise_d):
  shift = 2 * math.log(noise_d / image_d)
  np.testing.assert_allclose(logsnr_shifted(T, image_d, noise_d), np_cosine(T) + shift,
                             rtol=1e-4, atol=1e-4)
  # Clip bounds apply before the shift, so the end points move with it.
  assert abs(float(logsnr_shifted(0.0, image_d, noise_d)) - (15 + shift)) < 1e-3
  assert abs(float(logsnr_shifted(1.0, image_d, noise_d)) - (-15 + shift)) < 1e-3


def test_interpolated_end_points_and_middle():
  d, lo, hi = 512, 32, 256
  f = lambda t: logsnr_interpolated(t, d, lo, hi)
  # t = 1 is the noisy shift-32 schedule, t = 0 the shift-256 one (docs/paper.md eq. 6, reading R1).
  assert abs(float(f(1.0)) - float(logsnr_shifted(1.0, d, lo))) < 1e-4
  assert abs(float(f(0.0)) - float(logsnr_shifted(0.0, d, hi))) < 1e-4
  t = 0.3
  want = t * float(logsnr_shifted(t, d, lo)) + (1 - t) * float(logsnr_shifted(t, d, hi))
  assert abs(float(f(t)) - want) < 1e-4
  # It lies between the two shifted schedules everywhere.
  a, b = np.asarray(logsnr_shifted(T, d, lo)), np.asarray(logsnr_shifted(T, d, hi))
  v = np.asarray(f(T))
  assert np.all(v <= b + 1e-4) and np.all(v >= a - 1e-4)


@pytest.mark.parametrize("name", ["cosine", "shifted", "interpolated"])
def test_every_schedule_monotone_and_variance_preserving(name):
  fn = make_schedule(ScheduleConfig(name=name, noise_d=32), image_d=256)
  l = np.asarray(fn(jnp.asarray(T)))
  assert np.all(np.diff(l) < 0), "logSNR must fall strictly with t"
  a, s = alpha_sigma(jnp.asarray(l))
  np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(s) ** 2, 1.0, atol=1e-6)
  np.testing.assert_allclose(np.log(np.asarray(a) ** 2 / np.asarray(s) ** 2)[10:-10],
                             l[10:-10], rtol=1e-3, atol=1e-3)


def test_shifted_at_reference_resolution_is_cosine():
  fn = make_schedule(ScheduleConfig(name="shifted", noise_d=64), image_d=64)
  np.testing.assert_allclose(fn(T), np_cosine(T), atol=1e-4)


def test_unknown_schedule_names_the_choices():
  with pytest.raises(KeyError, match="cosine, interpolated, shifted"):
    make_schedule(ScheduleConfig(name="linear"), 64)
  assert SCHEDULES.names() == ["cosine", "interpolated", "shifted"]


@pytest.mark.parametrize("image_d,name,noise_d", [(64, "cosine", 64), (64, "shifted", 16),
                                                  (32, "shifted", 128), (16, "shifted", 8)])
def test_made_schedules_compute_what_their_formulas_do_eagerly_and_jitted(image_d, name, noise_d):
  # make_schedule's one program with four numbers (core.diffusion.schedules.logsnr_family) must give the
  # committed studies' schedules bit for bit, as a constant and as a traced input.
  import jax
  # (XLA's fused tan and log differ from the eager ones by ~1e-4: compare jit with jit.)
  s = make_schedule(ScheduleConfig(name=name, noise_d=noise_d), image_d)
  formula = ((lambda t: logsnr_shifted(t, image_d, noise_d)) if name == "shifted"
             else logsnr_cosine)
  np.testing.assert_array_equal(np.asarray(s(T)), np.asarray(formula(T)))
  want = np.asarray(jax.jit(formula)(T))
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda a, t: s.at(a)(t))(s.args(), T)), want)
  np.testing.assert_array_equal(np.asarray(jax.jit(s)(T)), want)
  i = make_schedule(ScheduleConfig(name="interpolated", noise_d_low=32, noise_d_high=256), 512)
  np.testing.assert_allclose(np.asarray(i(T)), np.asarray(logsnr_interpolated(T, 512, 32, 256)),
                             rtol=1e-6, atol=1e-5)
