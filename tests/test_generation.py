"""End to end: a tiny model memorises 4 images, and the real sampler must give them back.

Training runs the engine's own step (random t and noise, label dropout off, EMA), sampling the
evaluation's sharded sampler with the same schedule, so the test fails on any mistake that
breaks the chain from the loss to the samples: a wrong sign in a v/eps conversion, a schedule
at sampling that is not the training one, a sampler time grid that is off by one step.

Two checks, each with its reason:
- Copies. A sample counts as a copy of its nearest training image when its RMSE to it is
  below half the smallest RMSE between two training images (0.22 in [-1, 1] units for these
  4): no sample can then be near two images, and a blur of several is far from all of them.
  The memorised model's samples land at 0.06-0.14.
- Forward marginals. A memorised denoiser snaps to its image at any noise level, so copies
  alone do not see a wrong schedule or time grid (measured: both mutations below still give
  copies). But the reverse process must also pass through the training schedule's noise
  levels: for an exact sampler, z_s given the final sample x is N(alpha_s x, sigma_s^2 I), the
  forward process. So RMS(z_s - alpha_s x) / sigma_s must be 1 after every step, with alpha,
  sigma from the training schedule and s from a grid written here independently of the
  sampler. Measured: 0.86-1.04 (|log| <= 0.13) with this model; a cosine schedule at sampling
  gives 0.44, a grid off by one step 1.93. Tolerance |log ratio| < 0.3. The last step (s = 0,
  sigma ~ 1e-3, where z_0 is not the output) is left out.

4 images, not more, so that memorising them takes 800 steps (about a minute on one core); 8
needed over 2,000. The mutation tests below break the code on purpose and expect the checks to
fail, so that the test cannot pass vacuously.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.devices import make_mesh
from core.runtime.generate import make_sampler
from core.experiment import resolve
from core.diffusion.schedules import alpha_sigma, make_schedule
from core.data.shapes import ShapesSource
from core.train import Trainer

RES, NUM_IMAGES, BATCH, STEPS, SAMPLER_STEPS = 16, 4, 8, 800, 32


def _config(**sampler):
  return resolve({
      "resolution": RES, "model": {"preset": "unet_tiny", "dropout": 0.0},
      # the paper's shifted schedule (eq. 5), so that a sampler that drops the shift is caught
      "schedule": {"name": "shifted", "noise_d": RES // 2},
      "optim": {"lr": 3e-3, "warmup_steps": 50, "ema_decay": 0.98},
      "train": {"batch_size": BATCH, "steps": STEPS, "label_dropout": 0.0},
      "sampler": {"name": "ddpm", "steps": SAMPLER_STEPS, **sampler}})


def training_images():
  src = ShapesSource(NUM_IMAGES, RES, "train")
  imgs = np.stack([src[i]["image"] for i in range(NUM_IMAGES)]).astype(np.float32) / 127.5 - 1
  return imgs, np.array([src[i]["label"] for i in range(NUM_IMAGES)], np.int32)


def memorise(cfg, imgs, labels):
  """The engine's training step on the images (each twice a batch); returns trainer, state."""
  tr = Trainer(cfg, make_mesh(jax.devices()[:2]))
  # The suite lowers XLA's optimisation level to compile faster; this loop runs 800 steps, so
  # it is compiled at the default level (3x faster per step here).
  step = jax.jit(tr._step, in_shardings=(tr.state_sharding, tr.batch_sharding, tr.replicated,
                                         tr.replicated),
                 out_shardings=(tr.state_sharding, tr.replicated), donate_argnums=(0,),
                 compiler_options={"xla_backend_optimization_level": 3})
  idx = np.arange(BATCH) % NUM_IMAGES
  batch = tr.global_batch({"image": imgs[idx], "label": labels[idx]})
  state, key = tr.init(jax.random.key(0)), jax.random.key(1)
  for _ in range(cfg.train.steps):
    state, _ = step(state, batch, key, tr.schedule_args)
  return tr, state


def draw(tr, state, cfg, labels, seed=5):
  """Samples from the EMA parameters, conditioned on the images' labels twice over, and the
  sampler's z after each step, (steps, n, R, R, 3)."""
  n = 2 * NUM_IMAGES
  sampler = make_sampler(tr, state.ema_params, cfg, n, trajectory=True)
  x, traj = sampler(jax.random.key(seed), labels[np.arange(n) % NUM_IMAGES])
  return np.asarray(x), np.asarray(traj["z"])


def rmse_to_nearest(samples, imgs):
  d = np.sqrt(((samples[:, None] - imgs[None]) ** 2).mean(axis=(2, 3, 4)))
  return d.min(1), d.argmin(1)


def threshold(imgs):
  d = np.sqrt(((imgs[:, None] - imgs[None]) ** 2).mean(axis=(2, 3, 4)))
  return 0.5 * d[~np.eye(len(imgs), dtype=bool)].min()


def check_memorised(samples, imgs, labels):
  """The assertion of the test, as a function so that the mutation checks can expect it to
  fail: every sample near a training image of its own class."""
  dist, idx = rmse_to_nearest(samples, imgs)
  cond = labels[np.arange(len(samples)) % NUM_IMAGES]
  assert dist.max() < threshold(imgs), (
      f"samples are not copies of the training images: RMSE to the nearest {np.round(dist, 3)}"
      f", threshold {threshold(imgs):.3f}")
  assert (labels[idx] == cond).all(), (
      f"samples copy images of another class: nearest {idx}, labels {labels[idx]} vs {cond}")
  assert len(set(idx.tolist())) >= NUM_IMAGES // 2, f"samples collapse onto {set(idx.tolist())}"


def check_forward_marginals(samples, zs, schedule, tol=0.3):
  """RMS(z_s - alpha_s x) / sigma_s = 1 after every step but the last (see the docstring)."""
  steps = len(zs)
  s = 1.0 - np.arange(1, steps + 1) / steps          # the grid, written out afresh
  alpha, sigma = (np.asarray(v) for v in alpha_sigma(schedule(jnp.asarray(s, jnp.float32))))
  resid = zs - alpha[:, None, None, None, None] * samples[None]
  ratio = np.sqrt((resid ** 2).mean(axis=(2, 3, 4))) / sigma[:, None]   # (steps, samples)
  worst = np.abs(np.log(ratio[:-1])).max(axis=1)
  assert worst.max() < tol, (
      f"the sampler leaves the training schedule's noise levels: RMS(z_s - alpha_s x) / "
      f"sigma_s per step (median over samples) {np.round(np.median(ratio, 1), 2)}")


def check(tr, state, cfg, imgs, labels):
  samples, zs = draw(tr, state, cfg, labels)
  check_memorised(samples, imgs, labels)
  # the schedule training used, made afresh from the config (not the model function's)
  check_forward_marginals(samples, zs, make_schedule(cfg.schedule, cfg.resolution))


@functools.lru_cache(maxsize=1)
def _trained():
  imgs, labels = training_images()
  cfg = _config()
  tr, state = memorise(cfg, imgs, labels)
  return imgs, labels, cfg, tr, state


def test_memorised_images_are_sampled_back():
  imgs, labels, cfg, tr, state = _trained()
  check(tr, state, cfg, imgs, labels)


# --- mutations: each must make the check fail ------------------------------------------------

def _eps_sign_error(monkeypatch):
  """v = alpha eps + sigma x instead of - (the training target): the sampler, converting with
  the right signs, gets a network that learnt the wrong quantity."""
  import core.diffusion.process as D
  def wrong(x, eps, logsnr):
    alpha, sigma = D.alpha_sigma(logsnr)
    return D._bcast(alpha, x) * eps + D._bcast(sigma, x) * x
  monkeypatch.setattr(D, "v_from_x_eps", wrong)


def _x_sign_error(monkeypatch, tr=None):
  """x_hat = alpha z + sigma v_hat instead of - (sampling only: training compares outputs)."""
  import core.diffusion.process as D
  def wrong(z, v, logsnr):
    alpha, sigma = D.alpha_sigma(logsnr)
    return D._bcast(alpha, z) * z + D._bcast(sigma, z) * v
  monkeypatch.setattr(D, "x_from_v", wrong)


def _cosine_at_sampling(monkeypatch, tr):
  """The model function samples with the unshifted cosine schedule while training used the
  shifted one."""
  from core.config import ScheduleConfig
  monkeypatch.setattr(tr, "schedule", make_schedule(ScheduleConfig(), tr.cfg.resolution))


def _grid_off_by_one(monkeypatch, tr=None):
  """Each step from t to s is labelled one grid point too high: the network is told the noise
  level of the step before (t + 1/steps, clipped at 1) and steps to t."""
  import core.diffusion.samplers as S
  real = S.time_grid
  def wrong(steps, t_end=0.0):
    t, s = real(steps, t_end)
    return jax.numpy.minimum(t + (1 - t_end) / steps, 1.0), t
  monkeypatch.setattr(S, "time_grid", wrong)


@pytest.mark.parametrize("mutation", [_x_sign_error, _cosine_at_sampling, _grid_off_by_one],
                         ids=lambda f: f.__name__.strip("_"))
def test_sampling_mutations_are_caught(mutation, monkeypatch):
  imgs, labels, cfg, tr, state = _trained()
  mutation(monkeypatch, tr)
  with pytest.raises(AssertionError):
    check(tr, state, cfg, imgs, labels)


@pytest.mark.slow
def test_training_mutation_is_caught(monkeypatch):
  """A sign error in the eps/v conversion, in training and sampling alike (retrains)."""
  _eps_sign_error(monkeypatch)
  imgs, labels = training_images()
  cfg = _config()
  tr, state = memorise(cfg, imgs, labels)
  with pytest.raises(AssertionError):
    check(tr, state, cfg, imgs, labels)


def test_sampling_under_another_schedule_is_that_schedule():
  """sampler.schedule samples a model trained under one schedule with another's levels: the
  same as a model trained under the named schedule with the same parameters, and naming the
  training schedule itself changes nothing (bit for bit)."""
  from core.config import replace
  base = _config()                       # trained: shifted, noise_d RES // 2
  trainer = Trainer(replace(base, **{"train.batch_size": 4}))
  params = jax.jit(trainer._init)(jax.random.key(0)).ema_params
  key, labels = jax.random.key(3), np.arange(4, dtype=np.int32)

  def draw(cfg):
    t = Trainer(replace(cfg, **{"train.batch_size": 4}))
    return np.asarray(make_sampler(t, params, cfg, 4)(key, labels))
  own = draw(base)
  same = draw(replace(base, **{"sampler.schedule": "shifted",
                               "sampler.schedule_noise_d": RES // 2}))
  assert np.array_equal(own, same)
  cos_sampled = draw(replace(base, **{"sampler.schedule": "cosine"}))
  cos_trained = draw(replace(base, **{"schedule.name": "cosine"}))
  assert np.array_equal(cos_sampled, cos_trained)
  assert np.abs(cos_sampled - own).max() > 1e-2
