"""The cascade baseline (docs/paper.md §4): super-resolution model, conditioning augmentation,
cascade sampler, stage configs and the cascade sweep end to end."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core.diffusion import cdm
from core.diffusion.conditioning import make_task
from core.config import ConfigError, LossConfig, to_dict
from core.diffusion.process import loss_at
from core.runtime.generate import make_cascade_sampler
from core.experiment import resolve
from core.models import build_model, init_params
from core.diffusion.samplers import sample
from core.diffusion.schedules import make_schedule
from core.train import Trainer
from sweeps.spec import expand, train_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASCADE = os.path.join(ROOT, "ablations", "cascade.yaml")
RES, LOW = 16, 8


def _cfg(**cond):
  """A tiny class-conditional super-resolution config, LOW -> RES."""
  return resolve({
      "resolution": RES, "model": {"preset": "unet_tiny", "dropout": 0.0, "cond_channels": 3,
                                   "cond_noise_embedding": True},
      "schedule": {"name": "shifted", "noise_d": 8},
      "cond": {"task": "super_res", "low_resolution": LOW, **cond},
      "sampler": {"steps": 3}})


def _batch(n=4):
  k = jax.random.split(jax.random.key(0), 2)
  return {"image": jax.random.uniform(k[0], (n, RES, RES, 3), minval=-1, maxval=1),
          "label": jnp.arange(n) % 10}


@pytest.fixture(scope="module")
def sr():
  """Model, initial parameters, and the same with a random output layer: zero-initialised, it
  makes a fresh model's output 0 whatever its input."""
  cfg = _cfg()
  params = init_params(cfg.model, RES, jax.random.key(1))
  k = params["head"]["conv_out"]["kernel"]
  head = {**params["head"], "conv_out": {**params["head"]["conv_out"],
                                         "kernel": 0.1 * jax.random.normal(jax.random.key(2),
                                                                           k.shape)}}
  return cfg, build_model(cfg.model, RES), params, {**params, "head": head}


def test_pure_functions():
  x = _batch()["image"]
  low = cdm.downsample(x, LOW)
  assert low.shape == (4, LOW, LOW, 3)
  np.testing.assert_allclose(low[0, 0, 0], x[0, :2, :2].mean(axis=(0, 1)), atol=1e-6)
  assert cdm.upsample(low, RES, "bicubic").shape == x.shape
  np.testing.assert_array_equal(cdm.upsample(low, RES, "nearest")[:, ::2, ::2], low)
  # Blur: a weighted average (constants stay), per-example sigma, smoother than its input.
  flat = jnp.full((2, 6, 6, 3), 0.3)
  np.testing.assert_allclose(cdm.gaussian_blur(flat, jnp.array([0.4, 0.6])), flat, atol=1e-6)
  b = cdm.gaussian_blur(low, 0.6)
  assert b.shape == low.shape and float(jnp.var(b)) < float(jnp.var(low))
  np.testing.assert_allclose(cdm.gaussian_blur(low, 1e-3), low, atol=1e-6)
  # Noise: s = 0 exactly clean; s > 0 is q(z_s | x) of the schedule.
  sched = make_schedule(_cfg().schedule, LOW)
  eps = jnp.ones_like(low)
  s = jnp.array([0.0, 0.3, 0.0, 0.6])
  z = cdm.noise_augment(low, eps, s, sched)
  np.testing.assert_array_equal(z[0], low[0])
  a = jnp.sqrt(jax.nn.sigmoid(sched(0.3)))
  np.testing.assert_allclose(z[1], a * low[1] + jnp.sqrt(1 - a ** 2) * eps[1], atol=1e-5)


def test_s0_without_blur_is_plain_conditioning(sr):
  cfg0, model, _, params = sr
  cfg = _cfg(noise_s_min=0.0, noise_s_max=0.0, blur_prob=0.0)
  batch = _batch()
  clean = cdm.upsample(cdm.downsample(batch["image"], LOW), RES, cfg.cond.upsample)
  aug_logsnr = make_schedule(cfg.schedule, LOW)(0.0)
  kw = make_task(cfg).train(batch, jax.random.key(5))
  np.testing.assert_array_equal(kw["cond"], clean)
  np.testing.assert_array_equal(kw["cond_logsnr"], jnp.full((4,), aug_logsnr))
  # Sampling at s = 0 (non-truncated) likewise hands over the clean low-res image.
  low = cdm.downsample(batch["image"], LOW)
  np.testing.assert_array_equal(make_task(cfg).sample(low, jax.random.key(6))["cond"], clean)

  apply = jax.jit(lambda c, cl: model.apply({"params": params}, batch["image"],
                                            jnp.full((4,), 1.0), batch["label"], cond=c,
                                            cond_logsnr=cl))
  out = apply(kw["cond"], kw["cond_logsnr"])
  np.testing.assert_array_equal(out, apply(clean, jnp.full((4,), aug_logsnr)))
  # ... and the conditioning is really used: augmented at s > 0 it changes the output.
  kw2 = make_task(cfg0).train(batch, jax.random.key(5))
  assert float(jnp.max(jnp.abs(apply(kw2["cond"], kw2["cond_logsnr"]) - out))) > 1e-3


def test_super_resolution_model_overfits_one_batch(sr):
  cfg, model, params, _ = sr
  batch = _batch()
  kw = make_task(cfg).train(batch, jax.random.key(3))   # noise, blur and s held fixed
  assert float(jnp.min(kw["cond_logsnr"])) < float(jnp.max(kw["cond_logsnr"]))
  k = jax.random.split(jax.random.key(4), 2)
  eps = jax.random.normal(k[0], batch["image"].shape)
  t = jnp.array([0.2, 0.4, 0.6, 0.8])
  sched = make_schedule(cfg.schedule, RES)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p):
    f = lambda z, l: model.apply({"params": p}, z, l, batch["label"], **kw)
    return loss_at(f, batch["image"], eps, t, sched, LossConfig())[0]

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  losses = []
  for _ in range(200):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


def test_cascade_sampler_gives_target_shape_and_range(sr):
  _, _, _, sr_params = sr
  base_cfg, sr_cfg = cdm.stage_configs(dataclasses.replace(_cfg(), cascade=dataclasses.replace(
      _cfg().cascade, stages=(LOW,))))
  base = Trainer(base_cfg)
  base_params = init_params(base_cfg.model, LOW, jax.random.key(7))
  labels = jnp.arange(4) % 10
  # Guidance doubles the batch inside the sampler: the conditioning must follow. (The
  # truncated variant runs in the sweep test below.)
  c = dataclasses.replace(sr_cfg, sampler=dataclasses.replace(sr_cfg.sampler, cond_s=0.2,
                                                              guidance_scale=1.5))
  draw = make_cascade_sampler([(base, base_params, base_cfg), (Trainer(c), sr_params, c)], 4)
  x = np.asarray(draw(jax.random.key(8), labels))
  assert x.shape == (4, RES, RES, 3) and np.isfinite(x).all()
  assert x.min() >= -1 and x.max() <= 1 and x.std() > 0


def test_truncated_sampling_stops_at_s_and_returns_z():
  """With t_end, the scan covers [t_end, 1] and returns z_{t_end}, not the clipped x_hat."""
  cfg = _cfg().sampler
  seen = []
  model_fn = lambda z, l, lab: (seen.append(None), jnp.zeros_like(z))[1]
  sched = make_schedule(_cfg().schedule, LOW)
  plain = sample(model_fn, (2, 4, 4, 3), jax.random.key(0), sched, cfg)
  z = sample(model_fn, (2, 4, 4, 3), jax.random.key(0), sched, cfg, t_end=0.5)
  # v = 0 predicts x_hat = alpha z: plain output is clipped x_hat, truncated is noisier z_s.
  assert float(jnp.abs(plain).max()) <= 1 and float(jnp.abs(z).max()) > 1


def test_stage_configs_validation_and_model_sharing():
  cfg = dataclasses.replace(_cfg(), resolution=32, cascade=dataclasses.replace(
      _cfg().cascade, stages=(4, 8), base_preset="unet_small", base_steps=7))
  cfg = dataclasses.replace(cfg, cond=dataclasses.replace(cfg.cond, low_resolution=8))
  cdm.validate(cfg)
  s0, s1, s2 = cdm.stage_configs(cfg)
  assert (s0.resolution, s0.cond.task, s0.model.preset, s0.model.cond_channels,
          s0.train.steps) == (4, "none", "unet_small", 0, 7)
  assert (s1.resolution, s1.cond.low_resolution, s1.model.cond_channels) == (8, 4, 3)
  assert (s2.resolution, s2.cond.low_resolution, s2.train.steps) == (32, 8, cfg.train.steps)
  assert all(s.cascade.stages == () for s in (s0, s1, s2))
  bad = [{"cond": {"task": "super_res", "low_resolution": 5}},
         {"cond": {"task": "sr", "low_resolution": 8}},
         {"model": {"cond_channels": 0}},
         {"model": {"cond_noise_embedding": False}},
         {"cascade": {"stages": [4]}},
         {"cascade": {"stages": [8], "base_preset": "nope"}}]
  base = to_dict(_cfg())
  for b in bad:
    d = json.loads(json.dumps(base))
    for sec, v in b.items():
      d[sec].update(v)
    with pytest.raises((ConfigError, KeyError)):
      resolve(d)
  # A plain config's model key does not depend on the cond/cascade sections it leaves unset.
  from core.experiment import train_settings
  _, runs = expand(CASCADE, "smoke")
  assert not any(k.startswith(("cond.", "cascade.")) for k in train_settings(runs[0].config))


def test_cascade_sweep_paper_tier_settings():
  meta, runs = expand(CASCADE, "paper")
  assert meta["table"] == "7" and [r.arm for r in runs][:2] == ["U-Net", "CDM"]
  single, cascades = runs[0].config, runs[1:]
  assert (single.resolution, single.model.preset, single.train.steps) == (256, "unet256", 2000000)
  assert len({r.train_key for r in cascades}) == 1   # the s rows only sample
  # CDM's ImageNet 256 pipeline, 32 -> 64 -> 256: noise at 64, blur at 256 (CDM section 4.2).
  base, mid, top = cdm.stage_configs(cascades[0].config)
  assert (base.resolution, base.model.preset, mid.resolution, mid.cond.low_resolution,
          top.resolution, top.cond.low_resolution) == (32, "unet128", 64, 32, 256, 64)
  assert (mid.cond.noise_s_max, mid.cond.blur_prob, mid.model.cond_noise_embedding) == (0.5, 0.0, True)
  assert (top.cond.noise_s_max, top.cond.blur_prob, top.model.cond_noise_embedding) == (0.0, 0.5, False)
  # Equal training images: the three stages split the single-stage budget.
  assert base.train.steps + mid.train.steps + top.train.steps == single.train.steps
  assert base.train.batch_size == mid.train.batch_size == top.train.batch_size == single.train.batch_size
  # The s rows search the noise of the 64 stage; the 256 stage samples unaugmented.
  assert {cdm.stage_configs(r.config)[1].sampler.cond_s for r in cascades} == {0.0, 0.1, 0.2, 0.4}
  assert {cdm.stage_configs(r.config)[2].sampler.cond_s for r in cascades} == {0.0}


def _three_stage(augment=("noise", "blur"), cond_s=0.2, truncated=True):
  """A tiny 4 -> 8 -> 16 cascade with per-stage augmentation."""
  cfg = _cfg(low_resolution=LOW)
  return dataclasses.replace(
      cfg, cascade=dataclasses.replace(cfg.cascade, stages=(4, LOW), augment=tuple(augment)),
      sampler=dataclasses.replace(cfg.sampler, cond_s=cond_s, cond_truncated=truncated))


def test_each_stage_trains_and_samples_with_its_own_augmentation():
  from core.diffusion.conditioning import truncated_at
  cfg = _three_stage()
  cdm.validate(cfg)
  s0, s1, s2 = cdm.stage_configs(cfg)
  assert (s1.cond.blur_prob, s1.cond.noise_s_max, s1.model.cond_noise_embedding) == (0.0, 0.5, True)
  assert (s2.cond.blur_prob, s2.cond.noise_s_max, s2.model.cond_noise_embedding) == (0.5, 0.0, False)
  assert (s1.sampler.cond_s, s1.sampler.cond_truncated) == (0.2, True)
  assert (s2.sampler.cond_s, s2.sampler.cond_truncated) == (0.0, False)
  # Training: the blur stage's input has no noise (s = 0, not told s), the noise stage's no blur.
  batch = _batch()
  kw2 = make_task(s2).train(batch, jax.random.key(0))
  assert "cond_logsnr" not in kw2
  low = cdm.downsample(batch["image"], LOW)
  sched = make_schedule(s2.schedule, LOW)
  x, s = cdm.augment_for_training(low, jax.random.key(0), s2.cond, sched)
  assert float(jnp.max(s)) == 0.0                  # never noised: each example clean or blurred
  sig = np.linspace(0.4, 0.6, 201)   # blur_sigma_min..max, every example at every sigma
  blurs = cdm.gaussian_blur(jnp.tile(low, (len(sig), 1, 1, 1)), np.repeat(sig, len(low)))
  blurs = jnp.concatenate([low[None], blurs.reshape((len(sig),) + low.shape)])
  err = np.min(np.max(np.abs(np.asarray(x[None] - blurs)), axis=(2, 3, 4)), axis=0)
  assert err.max() < 1e-3, err
  low4 = cdm.downsample(batch["image"], 4)
  _, s = cdm.augment_for_training(low4, jax.random.key(0), s1.cond, make_schedule(s1.schedule, 4))
  assert 0 < float(jnp.max(s)) <= 0.5              # the noise stage is noised
  # The run's own config (what the evaluation samples the last stage with) is its last stage:
  # the clean 8 px image, no s, though the run's sampler searches s = 0.2 for the 8 px stage.
  kw = make_task(cfg).sample(low, jax.random.key(1))
  assert "cond_logsnr" not in kw
  np.testing.assert_array_equal(kw["cond"], cdm.upsample(low, RES, "bicubic"))
  # Truncation: the base stops at the 8 px stage's s; that stage runs to 0 for the blur stage.
  assert [truncated_at(c) for c in (s1, cfg)] == [0.2, 0.0]
  assert truncated_at(_three_stage(augment=("noise", "noise+blur"))) == 0.2


def test_per_stage_augmentation_bad_input():
  for kw, msg in (({"augment": ("noise",)}, "one name per super-resolution stage"),
                  ({"augment": ("noise", "blurr")}, "unknown augmentation 'blurr'"),
                  ({"augment": ("blur", "blur")}, "no stage of cascade.augment")):
    with pytest.raises(ConfigError, match=msg):
      cdm.validate(_three_stage(**kw))
  with pytest.raises(ConfigError, match="set cascade.stages"):
    cdm.validate(dataclasses.replace(_cfg(), cascade=dataclasses.replace(
        _cfg().cascade, augment=("blur",))))


def test_cascade_sweep_end_to_end_at_smoke(tmp_path, monkeypatch):
  from analysis.make_tables import build_table
  from analysis.results import load_results, metrics_path
  from core.runio import read_json, read_jsonl
  from sweeps import run as runner
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  res = str(tmp_path / "r")
  # The single-stage run is a plain run (test_sweeps runs it). The cascade's rows share its
  # models and differ only in sampling; the truncated row runs every stage and the truncation
  # (the plain rows' sampling is the same path with t_end = 0; test_truncated_sampling_*
  # above checks both ends).
  only = ["256-CDM-truncated-s=0.2-s0"]
  assert runner.main([CASCADE, "tier=smoke", "--results", res, "--no-progress", "eval.fid=false"]
                     + sum([["--only", o] for o in only], [])) == 0
  sdir = os.path.join(res, "cascade_smoke")
  assert len(os.listdir(os.path.join(res, "_models"))) == 3   # base, 32 -> 64, 64 -> 256
  for rid in only:
    assert read_json(os.path.join(sdir, rid, "status.json"))["state"] == "done"
    assert os.path.getsize(os.path.join(sdir, rid, "samples.png")) > 100
    assert [r["step"] for r in read_jsonl(metrics_path(os.path.join(sdir, rid)))] == [1, 2]
  rd = os.path.join(sdir, only[0])
  ev = read_json(os.path.join(rd, "eval.json"))
  assert ev["stages"] == [2, 4, 16] and ev["cond_s"] == 0.2 and ev["params"] > 0
  # each stage's training rows stay in its model directory, which eval.json names
  assert len(ev["model_dirs"]) == 3 and len({os.path.normpath(d) for d in ev["model_dirs"]}) == 3
  for d in ev["model_dirs"]:
    assert [r["step"] for r in read_jsonl(os.path.join(rd, d, "metrics.jsonl"))] == [1, 2]
  (sweep,) = load_results(res)
  table = build_table(sweep, with_paper=True).numbers.set_index("arm")
  assert table.loc["CDM truncated s=0.2", "state"] == "done"
  assert table.loc["CDM", "paper_fid_train"] == 4.88   # its row, not run here
  assert table.loc["U-Net", "paper_fid_train"] == 3.76   # its row, not yet run
