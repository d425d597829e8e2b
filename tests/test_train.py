"""The training engine: sharding parity, exact resume, NaN stop, optimiser settings."""
import json
import os

import jax
import numpy as np
import pytest

from core import train as train_lib
from core.experiment import resolve
from core.runtime import checkpoint as ckpt_lib, state as state_lib
from core.devices import make_mesh
from core.runtime.state import make_optimizer
from core.train import NonFiniteLossError, Trainer, train

BASE = {"resolution": 16, "model": {"preset": "unet_tiny"},
        "data": {"source": "shapes", "size": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9},
        "train": {"batch_size": 8, "steps": 4, "log_every": 1, "ckpt_every": 2,
                  "progress": False}}


def _cfg(**over):
  d = json.loads(json.dumps(BASE))
  for k, v in over.items():
    sec, key = k.split("__")
    d.setdefault(sec, {})[key] = v
  return resolve(d)


def _batch():
  rng = np.random.RandomState(0)
  return {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
          "label": (np.arange(8) % 10).astype(np.int32)}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# fsdp=False is slow (34 s): the FSDP case shards the batch over the same 8 devices and the
# parameters on top, so the default run keeps the data-parallel path's parity too.
@pytest.mark.parametrize("fsdp", [pytest.param(False, marks=pytest.mark.slow), True])
def test_same_global_batch_on_8_devices_equals_1_device(fsdp):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  cfg = _cfg(train__fsdp=fsdp)
  out = {}
  for n in (1, 8):
    tr = Trainer(cfg, make_mesh(jax.devices()[:n]))
    state = tr.init(jax.random.key(0))
    if fsdp and n == 8:  # the large kernels really are split over the devices
      shards = {len(x.sharding.device_set) for x in jax.tree.leaves(state.params)}
      assert 8 in shards
    state, m = tr.step(state, tr.global_batch(_batch()), jax.random.key(1))
    out[n] = (float(m["loss"]), _leaves(state.params))
  assert abs(out[1][0] - out[8][0]) < 1e-5
  for a, b in zip(out[1][1], out[8][1]):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path):
  cfg = _cfg()
  full = train(cfg, str(tmp_path / "full"))
  part = train(cfg, str(tmp_path / "part"), stop_after=2)
  assert int(part.state.step) == 2
  resumed = train(cfg, str(tmp_path / "part"))
  assert resumed.steps_run == 2 and int(resumed.state.step) == 4
  for a, b in zip(_leaves(full.state.params), _leaves(resumed.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  for a, b in zip(_leaves(full.state.ema_params), _leaves(resumed.state.ema_params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  rows = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert {"loss", "loss_q0", "loss_q3", "grad_norm", "lr", "img_per_s"} <= set(rows[0])
  assert os.path.exists(tmp_path / "full" / "config.yaml")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  cfg = _cfg(train__steps=6)
  train(cfg, str(tmp_path), stop_after=2)  # a good checkpoint at step 2
  real = train_lib.diffusion_loss

  def poisoned(*a, **k):
    loss, aux = real(*a, **k)
    return loss * np.nan, aux
  monkeypatch.setattr(train_lib, "diffusion_loss", poisoned)
  with pytest.raises(NonFiniteLossError, match="last good checkpoint \\(step 2\\)"):
    train(cfg, str(tmp_path))
  monkeypatch.setattr(train_lib, "diffusion_loss", real)
  tr = Trainer(cfg)
  state, _ = ckpt_lib.restore_latest(ckpt_lib.checkpoint_manager(str(tmp_path), cfg), tr)
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in _leaves(state.params))
  # No checkpoint yet: the message must not promise one.
  monkeypatch.setattr(train_lib, "diffusion_loss", poisoned)
  with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
    train(cfg, str(tmp_path / "fresh"))


def test_train_time_counts_every_segment_of_a_resumed_run(tmp_path):
  cfg = _cfg()
  first = train(cfg, str(tmp_path), stop_after=2)
  second = train(cfg, str(tmp_path))
  assert second.steps_run == 2 and second.train_time_s > first.train_time_s
  # Nothing left to train (a kill during evaluation): the time is still the whole run's.
  again = train(cfg, str(tmp_path))
  # (what the last checkpoint recorded: all but its own save)
  assert again.steps_run == 0 and first.train_time_s < again.train_time_s <= second.train_time_s


def test_unreadable_newest_checkpoint_falls_back(tmp_path):
  cfg = _cfg()
  train(cfg, str(tmp_path))  # checkpoints at 2 and 4
  ckpt = tmp_path / "ckpt" / "4"
  for root, _, files in os.walk(ckpt):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  msgs = []
  state, _ = ckpt_lib.restore_latest(ckpt_lib.checkpoint_manager(str(tmp_path), cfg),
                                      Trainer(cfg), log=msgs.append)
  assert int(state.step) == 2
  assert any("step 4 is unreadable" in m for m in msgs)
  # The bad step is kept aside, not in the way: the rerun trains steps 3-4 and saves step 4.
  kept = [n for n in os.listdir(tmp_path / "ckpt") if n.startswith("4.unreadable-")]
  assert len(kept) == 1 and open(next(
      os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "ckpt" / kept[0]) for f in fs),
      "rb").read() == b"garbage"
  assert int(train(cfg, str(tmp_path)).state.step) == 4
  state, _ = ckpt_lib.restore_latest(ckpt_lib.checkpoint_manager(str(tmp_path), cfg),
                                      Trainer(cfg))
  assert int(state.step) == 4


def test_optimizer_warmup_and_clipping():
  import jax.numpy as jnp
  cfg = _cfg(optim__grad_clip=1.0, optim__warmup_steps=10, optim__lr=1.0).optim
  opt = make_optimizer(cfg)
  p = {"w": jnp.zeros(3)}
  s = opt.init(p)
  u, s = opt.update({"w": jnp.array([100.0, 0.0, 0.0])}, s, p)
  assert float(jnp.abs(u["w"]).max()) == 0.0  # step 0 of the warm-up has lr 0
  u, s = opt.update({"w": jnp.array([100.0, 0.0, 0.0])}, s, p)
  np.testing.assert_allclose(float(-u["w"][0]), 0.1, rtol=1e-3)  # lr 1/10, Adam step of 1
  assert state_lib.learning_rate(cfg, 5) == 0.5 and state_lib.learning_rate(cfg, 50) == 1.0


def test_ema_decay_warmup():
  cfg = _cfg(optim__ema_decay=0.999).optim
  assert state_lib.ema_decay(cfg, 0) == 0.999               # off: the constant, as the paper
  warm = _cfg(optim__ema_decay=0.999, optim__ema_warmup=True).optim
  np.testing.assert_allclose(float(state_lib.ema_decay(warm, 0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(state_lib.ema_decay(warm, 90)), 91 / 100, rtol=1e-6)
  np.testing.assert_allclose(float(state_lib.ema_decay(warm, 10**6)), 0.999, rtol=1e-6)


# Slow (48 s): the default run keeps jax.distributed through test_eval_sharding's two-process
# evaluation and the sharded step's parity through test_same_global_batch_on_8_devices_*.
@pytest.mark.slow
def test_two_processes_joined_by_jax_distributed_equal_one_device(tmp_path):
  """Two processes of 4 devices each on localhost (the multi-host path of TPU VMs and SLURM)."""
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  worker = os.path.join(os.path.dirname(__file__), "dist_worker.py")
  procs = [subprocess.Popen([sys.executable, worker, port, str(i), str(tmp_path / f"p{i}.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
  tr = Trainer(_cfg(), make_mesh(jax.devices()[:1]))
  state, m = tr.step(tr.init(jax.random.key(0)), tr.global_batch(_batch()), jax.random.key(1))
  ref = _leaves(state.params)
  for i in range(2):
    got = np.load(tmp_path / f"p{i}.npz")
    assert abs(float(got["loss"]) - float(m["loss"])) < 1e-5
    for j, a in enumerate(ref):
      np.testing.assert_allclose(got[f"p{j}"], a, atol=1e-5)


_COMPILE = """
import functools, os, time
import core.devices, jax, jax.numpy as jnp
core.devices.setup()   # what every entry point calls first
f = jax.jit(lambda x: functools.reduce(lambda a, i: jnp.tanh(a @ a.T) + i, range(80), x))
t = time.perf_counter(); f(jnp.ones((64, 64))).block_until_ready()
print(time.perf_counter() - t)
"""


def test_compiled_programs_persist_in_the_cache_folder(tmp_path):
  """The second process loads what the first compiled; SIMPLEDIFF_COMPILE_CACHE=0 writes none."""
  import subprocess
  import sys
  env = {**os.environ, "SIMPLEDIFF_CACHE": str(tmp_path / "c")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)   # the suite's own cache and threshold
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  run = lambda e: float(subprocess.run([sys.executable, "-c", _COMPILE], env=e, check=True,
                                       capture_output=True, text=True).stdout.split()[-1])
  cold = run(env)
  entries = os.listdir(tmp_path / "c" / "jax")
  # every program, the smallest too (jnp.ones' compiles in ~10 ms): none is left to the warm run
  assert any(e.startswith("jit_broadcast_in_dim") for e in entries), entries
  warm = run(env)
  assert sorted(os.listdir(tmp_path / "c" / "jax")) == sorted(entries)  # a hit adds nothing
  assert warm < cold
  run({**env, "SIMPLEDIFF_CACHE": str(tmp_path / "off"), "SIMPLEDIFF_COMPILE_CACHE": "0"})
  assert not os.path.exists(tmp_path / "off" / "jax")


def test_a_stop_asked_for_by_a_signal_is_not_lost(tmp_path):
  """The SIGTERM handler's KeyboardInterrupt can land inside a callback, where Python drops it
  (seen: XLA's gc callback); the flag it sets stops training at the next step all the same."""
  from core.runio import STOP
  STOP.set()
  try:
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
      train(_cfg(), str(tmp_path / "w"), log=lambda s: None)
  finally:
    STOP.clear()
  assert train(_cfg(), str(tmp_path / "w2"), log=lambda s: None).steps_run == 4


def test_arms_that_differ_only_in_the_schedule_are_one_program():
  # The schedule's numbers are inputs of the train step and of the sampler, so table 2's arms
  # at one resolution lower to one program (the compilation cache then serves every arm after
  # the first); another model is another program.
  from analysis.cost import abstract_step_args
  from core.runtime.generate import make_sampler
  mesh = make_mesh(jax.devices()[:1])
  cfgs = [_cfg(sampler__steps=2, schedule__name="cosine"),
          _cfg(sampler__steps=2, schedule__name="interpolated", schedule__noise_d_low=4,
               schedule__noise_d_high=32),
          _cfg(sampler__steps=2, schedule__name="shifted", schedule__noise_d=4,
               model__base_channels=16)]
  steps, samplers = [], []
  for cfg in cfgs:
    tr = Trainer(cfg, mesh)
    steps.append(tr.jit_step.trace(*abstract_step_args(tr, 8)).lower().as_text())
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tr.abstract_state.params)
    draw = make_sampler(tr, params, cfg, 8, mesh=mesh)
    samplers.append(draw.lower(jax.random.key(0), np.zeros(8, np.int32)).as_text())
  assert steps[0] == steps[1] != steps[2]
  assert samplers[0] == samplers[1] != samplers[2]
