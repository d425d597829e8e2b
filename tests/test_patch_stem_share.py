"""scripts/patch_stem_share.py's measure: share of a k x k kernel's energy on the block mean."""
import numpy as np

from scripts.patch_stem_share import block_mean_share


def test_block_mean_share_bounds():
  rng = np.random.default_rng(0)
  averaging = np.ones((4, 4, 3, 8)) * rng.normal(size=(1, 1, 3, 8))   # constant over the window
  assert abs(block_mean_share(averaging) - 1.0) < 1e-12
  zero_mean = rng.normal(size=(4, 4, 3, 8))
  zero_mean -= zero_mean.mean(axis=(0, 1), keepdims=True)
  assert block_mean_share(zero_mean) < 1e-12
  # a random kernel puts 1/k^2 of its energy on the mean, in expectation
  shares = [block_mean_share(rng.normal(size=(k, k, 3, 64))) for k in (2, 4) for _ in range(20)]
  assert abs(np.mean(shares[:20]) - 1 / 4) < 0.03 and abs(np.mean(shares[20:]) - 1 / 16) < 0.01
