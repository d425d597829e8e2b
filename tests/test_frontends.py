import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.models.frontends import (depth_to_space, dwt53, frontend_factor, idwt53, parse_frontend,
                                   space_to_depth)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_dwt_round_trip_float32(levels):
  x = jax.random.uniform(jax.random.key(levels), (2, 64, 32, 3), minval=-1, maxval=1)
  y = dwt53(x, levels)
  assert y.shape == (2, 64 >> levels, 32 >> levels, 3 * 4 ** levels)
  assert float(jnp.abs(idwt53(y, levels) - x).max()) < 1e-5


def test_dwt_layout_512_two_levels():
  x = jax.random.uniform(jax.random.key(0), (1, 512, 512, 3))
  y = dwt53(x, 2)
  assert y.shape == (1, 128, 128, 48)
  # First 3 channels are the coarsest low-pass band: a smoothed, downsampled image.
  ll = y[..., :3]
  box = x.reshape(1, 128, 4, 128, 4, 3).mean(axis=(2, 4))
  assert float(jnp.abs(ll - box).mean()) < 0.1
  # A constant image has a constant LL band and zero detail bands.
  c = dwt53(jnp.full((1, 512, 512, 3), 0.7), 2)
  np.testing.assert_allclose(c[..., :3], 0.7, atol=1e-6)
  np.testing.assert_allclose(c[..., 3:], 0.0, atol=1e-6)


def test_dwt_is_linear_and_details_vanish_on_linear_ramps():
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (1, 32, 32, 3))
  b = jax.random.normal(k2, (1, 32, 32, 3))
  np.testing.assert_allclose(dwt53(2 * a - b, 2), 2 * dwt53(a, 2) - dwt53(b, 2), atol=1e-4)
  # 5/3 predicts linear signals exactly: interior detail coefficients are zero on a ramp.
  ramp = jnp.broadcast_to(jnp.arange(32.0)[None, :, None, None], (1, 32, 32, 1))
  det = dwt53(ramp, 1)[..., 1:]
  np.testing.assert_allclose(det[:, :-1], 0.0, atol=1e-4)


def test_space_to_depth_round_trip():
  x = jnp.arange(2 * 8 * 8 * 3.0).reshape(2, 8, 8, 3)
  np.testing.assert_array_equal(depth_to_space(space_to_depth(x, 4), 4), x)


def test_parse_frontend():
  assert parse_frontend("none") == ("none", 1)
  assert parse_frontend("dwt:2") == ("dwt", 2)
  assert frontend_factor("dwt:2") == 4 and frontend_factor("patch:2") == 2
  with pytest.raises(ValueError, match="model.frontend"):
    parse_frontend("fft:2")
