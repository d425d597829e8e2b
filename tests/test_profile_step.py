"""scripts/profile_step.py names XLA ops by kind from the compiled program's op_names; if a JAX
upgrade changed how op_names read, its profile would silently call everything 'other'."""


def test_every_model_kind_is_found_in_a_real_training_step():
  import collections
  from scripts import profile_step
  from core.experiment import resolve
  cfg = resolve({"resolution": 16, "model": {"preset": "unet_tiny"}, "train": {"batch_size": 2}})
  import jax
  _, hlo, _ = profile_step.train_setup(cfg, 2, jax.devices()[:1])
  kinds = collections.Counter(profile_step.kind(n, o) for n, o in profile_step.op_names(hlo).items())
  for k in ("convolution, forward", "convolution, gradient", "GroupNorm", "swish", "attention",
            "dense, embedding", "random numbers", "Adam, EMA, loss, other"):
    assert kinds[k] > 0, (k, kinds)
  assert profile_step.kind("all-reduce.1", "") == "all-reduce and its waits"
  assert profile_step.kind("Rendezvous", "") == "all-reduce and its waits"
