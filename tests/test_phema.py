"""Post-hoc EMA (core.runtime.phema, EDM2): the tracked profiles' per-step decays give power-function
weights that sum to one; a reconstruction from snapshots reproduces a constant trajectory
exactly, returns a tracked profile itself, and approximates an untracked length; training
tracks the profiles, keeps the snapshots and evaluation reconstructs from them."""
from __future__ import annotations

import numpy as np
import pytest

from core.runtime import phema
from core.config import ConfigError, OptimConfig, replace

SIGMAS = (0.05, 0.10)


def _weights(sigma_rel: float, steps: int) -> np.ndarray:
  """The weights on steps 0..T of the profile tracked with power_beta."""
  g = float(phema.std_to_exp(sigma_rel))
  return phema.ema_weights([phema.power_beta(g, t) for t in range(1, steps + 1)])


def test_sigma_rel_and_gamma_are_inverse():
  for s in (0.01, 0.05, 0.1, 0.2):
    np.testing.assert_allclose(phema.exp_to_std(phema.std_to_exp(s)), s, rtol=1e-10)


@pytest.mark.parametrize("sigma_rel", SIGMAS)
def test_a_tracked_profile_weights_steps_as_its_power_function_and_sums_to_one(sigma_rel):
  """(1 - 1/t)^(gamma + 1) per step puts (t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1) on step
  t: the power function integrated over each step, nothing on the initialisation, total one;
  its std over time is the sigma_rel it was asked for."""
  T = 1000
  w = _weights(sigma_rel, T)
  g = float(phema.std_to_exp(sigma_rel))
  t = np.arange(1, T + 1, dtype=np.float64)
  exact = (t ** (g + 1) - (t - 1) ** (g + 1)) / T ** (g + 1)
  assert w[0] == 0.0 and abs(w.sum() - 1.0) < 1e-12
  np.testing.assert_allclose(w[1:], exact, rtol=1e-9, atol=1e-15)
  np.testing.assert_allclose(phema.profile_sigma_rel(w), sigma_rel, rtol=5e-3)


def test_a_constant_decay_ema_has_the_length_edm2_gives_it():
  """A plain EMA of decay beta, long after its start: its weights are geometric, of std
  sqrt(beta) / (1 - beta) steps (EDM2's 1 / ((1 - beta) T) to first order)."""
  from core.runtime.state import ema_sigma_rel
  np.testing.assert_allclose(ema_sigma_rel(OptimConfig(ema_decay=0.99), 10_000),
                             np.sqrt(0.99) / 0.01 / 10_000, rtol=1e-3)
  np.testing.assert_allclose(phema.ema_weights([0.5, 0.9, 0.0]), [0, 0, 0, 1.0])
  assert abs(phema.ema_weights(np.full(50, 0.9)).sum() - 1) < 1e-12


def _trajectory(T: int) -> np.ndarray:
  """Parameters of steps 0..T: a few smooth, unlike curves."""
  t = np.arange(T + 1, dtype=np.float64) / T
  return np.stack([np.sin(6 * t), t ** 2, np.exp(-3 * t), np.cos(20 * t) * t], axis=1)


def _write_snapshots(d, theta: np.ndarray, every: int) -> None:
  T = len(theta) - 1
  for step in range(every, T + 1, every):
    profiles = [{"w": (_weights(s, step)[:, None] * theta[:step + 1]).sum(0).astype(np.float32)}
                for s in SIGMAS]
    phema.save_snapshot(str(d), step, profiles, SIGMAS)


def test_any_reconstruction_of_a_constant_trajectory_is_that_constant(tmp_path):
  theta = np.tile(np.asarray([[1.5, -2.0, 0.25, 3.0]]), (201, 1))
  _write_snapshots(tmp_path, theta, every=20)
  like = {"w": np.zeros(4, np.float32)}
  for s in (0.02, 0.05, 0.08, 0.15, 0.25):
    np.testing.assert_allclose(phema.reconstruct(str(tmp_path), like, s, 200)["w"], theta[0],
                               rtol=1e-6)


def test_a_tracked_length_reconstructs_to_its_own_snapshot(tmp_path):
  theta = _trajectory(200)
  _write_snapshots(tmp_path, theta, every=20)
  like = {"w": np.zeros(4, np.float32)}
  last = np.load(phema.snapshot_path(str(tmp_path), 200))
  for j, s in enumerate(SIGMAS):
    np.testing.assert_allclose(phema.reconstruct(str(tmp_path), like, s, 200)["w"],
                               last[f"{j}/w"], rtol=1e-5, atol=1e-6)
  # ... and at an earlier snapshot's step, from the snapshots up to it
  mid = np.load(phema.snapshot_path(str(tmp_path), 100))
  np.testing.assert_allclose(phema.reconstruct(str(tmp_path), like, 0.10, 100)["w"],
                             mid["1/w"], rtol=1e-5, atol=1e-6)


def test_an_untracked_length_is_close_to_its_exact_average(tmp_path):
  """The least-squares combination of 20 snapshots of each profile against the average of
  the trajectory with the exact profile: within 1% of the trajectory's range."""
  theta = _trajectory(400)
  _write_snapshots(tmp_path, theta, every=20)
  like = {"w": np.zeros(4, np.float32)}
  for s in (0.03, 0.075, 0.15):
    exact = (_weights(s, 400)[:, None] * theta).sum(0)
    got = phema.reconstruct(str(tmp_path), like, s, 400)["w"]
    assert np.abs(got - exact).max() < 0.01 * np.ptp(theta, axis=0).max(), (s, got, exact)


def test_reconstruction_without_snapshots_says_how_to_get_them(tmp_path):
  with pytest.raises(ConfigError, match=r"ema.sigma_rel=0.08: .* no post-hoc EMA snapshots.*"
                                        r"optim.phema=true"):
    phema.reconstruct(str(tmp_path), {"w": np.zeros(1)}, 0.08, 10)
  _write_snapshots(tmp_path, _trajectory(40), every=20)
  with pytest.raises(ConfigError, match="no snapshot at the checkpoint's step 30"):
    phema.reconstruct(str(tmp_path), {"w": np.zeros(4)}, 0.08, 30)


# unet_tiny cut to one level: half its compile time, which is most of this test's
MINI = {"resolution": 16, "model": {"preset": "unet_tiny", "channel_multiplier": [1],
                                    "num_res_blocks": [1], "attn_resolutions": [],
                                    "dropout": 0.0},
        "data": {"source": "shapes", "size": 32},
        "train": {"batch_size": 8, "steps": 4, "log_every": 2, "ckpt_every": 4,
                  "progress": False},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9, "phema": True,
                  "phema_every": 1}}


def test_training_tracks_the_profiles_and_evaluation_reconstructs_from_them(tmp_path):
  """Training keeps a snapshot at each step here; from step 3 to 4 each profile moves by its
  power-function decay, (3/4)^(gamma + 1), towards the parameters of step 4. restore_ema with
  a tracked ema.sigma_rel gives that profile, and with 0 the run's own EMA, unchanged."""
  import jax
  from core.experiment import resolve
  from core.runtime.checkpoint import restore_ema
  from core.train import train
  cfg = resolve(MINI)
  res = train(cfg, str(tmp_path))
  assert phema.snapshot_steps(str(tmp_path)) == [1, 2, 3, 4]
  s3, s4 = (np.load(phema.snapshot_path(str(tmp_path), k)) for k in (3, 4))
  names = phema._leaf_names(res.state.params)
  for j, s in enumerate(SIGMAS):
    beta = (3 / 4) ** (float(phema.std_to_exp(s)) + 1)
    for name, p in zip(names, jax.tree.leaves(res.state.params)):
      np.testing.assert_allclose(s4[f"{j}/{name}"], beta * s3[f"{j}/{name}"] +
                                 (1 - beta) * np.asarray(p), rtol=1e-4, atol=1e-6)
  own = restore_ema(cfg, str(tmp_path))
  for a, b in zip(jax.tree.leaves(own.params), jax.tree.leaves(res.state.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tracked = restore_ema(replace(cfg, **{"ema.sigma_rel": 0.10}), str(tmp_path))
  for name, a in zip(names, jax.tree.leaves(tracked.params)):
    np.testing.assert_allclose(np.asarray(a), s4[f"1/{name}"], rtol=1e-5, atol=1e-7)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(own.params),
                                                    jax.tree.leaves(tracked.params)))
