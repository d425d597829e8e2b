"""core.metrics.memorisation: the nearest-neighbour distances are the brute-force ones; copies of
training images read as copies, fresh images of the same data as new ones."""
import numpy as np
import pytest

from core.metrics import memorisation
from core.metrics.oracle import render_set


def test_nearest_two_is_brute_force():
  rng = np.random.default_rng(0)
  a, b = rng.random((37, 12), np.float32), rng.random((50, 12), np.float32)
  d1, d2 = memorisation.nearest_two(a, b, batch=8)
  full = np.sqrt(((a[:, None, :].astype(np.float64) - b[None]) ** 2).sum(-1))
  full.sort(axis=1)
  assert np.allclose(d1, full[:, 0], atol=1e-5) and np.allclose(d2, full[:, 1], atol=1e-5)


def test_copies_read_as_copies_and_fresh_images_as_new():
  train, _, _ = render_set("shapes_simple", 16, "train", 300)
  fresh, _, _ = render_set("shapes_simple", 16, "test", 200)
  copies = memorisation.scores(train[:60], train, fresh[:60])
  assert copies["copy_fraction"] == 1.0 and copies["nn_ratio"] < 1e-6
  new = memorisation.scores(fresh[100:160], train, fresh[:60])
  assert new["copy_fraction"] <= 0.1
  assert 0.7 < new["nn_ratio"] < 1.4      # as far from the training set as held-out images
  assert new["held_out_copy_fraction"] == copies["held_out_copy_fraction"]
  with pytest.raises(ValueError):
    memorisation.nearest_two(train[:2], train[:1])
