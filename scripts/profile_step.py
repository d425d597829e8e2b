"""Where a training step's or the sampler's time goes: device op time by kind, from a profile.

    python -m scripts.profile_step [--preset unet_tiny] [--resolution 16] [--batch 32]
        [--frontend none] [--base-channels N] [--sample-batch 256] [--sample-steps 64]
        [--calls 10] [--skip-sample]

Profiles (jax.profiler) the full training step of core.train and one call of the sampler
(core.runtime.generate.make_sampler, DDPM at the given steps), and sums each XLA op's time, over all
devices, into kinds read from the op's HLO name and op_name: convolutions (forward, and their
gradients), GroupNorm, swish, attention, dense layers, random numbers, the cross-device
all-reduce with its waits, copies, and the rest (Adam, EMA, loss, schedules). Defaults are the
cpu tier's 16-pixel model. The profiler itself costs time per op (the wall time with and
without it is printed): read the shares as where the ops' time goes, not as wall time. The cost
of the gradient all-reduce is also measured without the profiler: the step on all devices
against the same devices each running half the batch with no collective, side by side.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Host-side events of the profile (dispatch, Python, waits for completion), not device ops.
_HOST = ("ThunkExecutor", "PjitFunction", "CommonPjRt", "Wait for", "$", "cpp_", "shard",
         "DevicePut", "batched", "end:", "Slinky", "PythonRef", "ParseArguments", "Handle ",
         "[", "CopyToMemorySpace", "while", "conditional")


def kind(name: str, op_name: str) -> str:
  """The kind of one XLA op, from its HLO name and its op_name metadata."""
  if name.startswith(("all-reduce", "Rendezvous", "all-gather", "reduce-scatter")):
    return "all-reduce and its waits"
  if "conv_general_dilated" in op_name:
    return "convolution, gradient" if "transpose(" in op_name else "convolution, forward"
  if "/attn/" in op_name:
    return "attention"
  if re.search(r"/norm\w*/", op_name):
    return "GroupNorm"
  if "silu" in op_name:
    return "swish"
  if "dot_general" in op_name or "class_embed" in op_name:
    return "dense, embedding"
  if re.search(r"_normal|_uniform|_bernoulli|threefry|random", op_name):
    return "random numbers"
  if "copy" in name or "transpose" in name:
    return "copies, transposes"
  if re.search(r"UNet|UViT", op_name):
    return "other model elementwise"
  return "Adam, EMA, loss, other"


def op_names(hlo_text: str) -> dict[str, str]:
  return {m.group(1): m.group(2) for m in re.finditer(
      r'\n  (?:ROOT )?%([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo_text)}


def profile(fn, calls: int, hlo_text: str) -> dict:
  """Device op time per call by kind (microseconds), and wall time with and without profiling."""
  import jax
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  wall = (time.perf_counter() - t) / calls
  tmp = tempfile.mkdtemp(prefix="profile_step_")
  try:
    t = time.perf_counter()
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(calls):
        out = fn()
      jax.block_until_ready(out)
    wall_prof = (time.perf_counter() - t) / calls
    path = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  names = op_names(hlo_text)
  by_kind, count = collections.Counter(), collections.Counter()
  for e in events:
    n = e["name"]
    if n.startswith(_HOST):
      continue
    k = kind(n, names.get(n, ""))
    by_kind[k] += e["dur"] / calls
    count[k] += 1 / calls
  return {"wall_s": wall, "wall_profiled_s": wall_prof, "us": by_kind, "ops": count}


def print_profile(title: str, p: dict) -> None:
  total = sum(p["us"].values())
  print(f"\n{title}")
  print(f"  wall {p['wall_s'] * 1e3:.1f} ms a call; {p['wall_profiled_s'] * 1e3:.1f} ms while "
        f"profiled; device op time {total / 1e3:.1f} ms a call, summed over devices")
  print(f"  {'kind':28s} {'ms/call':>8s} {'share':>7s} {'ops/call':>9s}")
  for k, v in p["us"].most_common():
    print(f"  {k:28s} {v / 1e3:8.2f} {v / total:7.1%} {p['ops'][k]:9.0f}")


def train_setup(cfg, batch: int, devices):
  import jax
  from analysis.cost import abstract_step_args, synthetic_batch
  from core.config import replace
  from core.devices import make_mesh
  from core.train import Trainer
  cfg = replace(cfg, **{"train.batch_size": batch})
  tr = Trainer(cfg, make_mesh(devices))
  compiled = tr.jit_step.trace(*abstract_step_args(tr, batch)).lower().compile()
  state = [tr.init(jax.random.key(0))]
  data = synthetic_batch(tr, batch)
  key = jax.device_put(jax.random.key(1), tr.replicated)

  def step():
    state[0], m = compiled(state[0], data, key, tr.schedule_args)
    return m["loss"]
  return step, compiled.as_text(), tr


def collective_cost(cfg, batch: int, rounds: int = 5, calls: int = 10) -> tuple[float, float]:
  """Seconds a step of `batch` on all devices (one program, gradient all-reduce) and on each
  device running its share alone (no collective), alternating; medians."""
  import jax
  import numpy as np
  devs = jax.devices()
  spmd, _, _ = train_setup(cfg, batch, devs)
  alone = [train_setup(cfg, batch // len(devs), [d])[0] for d in devs]
  times = {"spmd": [], "alone": []}
  for _ in range(rounds):
    for name, fns in (("spmd", [spmd]), ("alone", alone)):
      jax.block_until_ready([f() for f in fns])
      t = time.perf_counter()
      for _ in range(calls):
        out = [f() for f in fns]   # dispatched asynchronously: the devices run side by side
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t) / calls)
  return float(np.median(times["spmd"])), float(np.median(times["alone"]))


def main() -> None:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--preset", default="unet_tiny")
  ap.add_argument("--resolution", type=int, default=16)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--frontend", default="none")
  ap.add_argument("--base-channels", type=int, default=0, help="0: the preset's")
  ap.add_argument("--sample-batch", type=int, default=256)
  ap.add_argument("--sample-steps", type=int, default=64)
  ap.add_argument("--calls", type=int, default=10)
  ap.add_argument("--skip-sample", action="store_true")
  a = ap.parse_args()
  import jax
  import numpy as np
  from core.experiment import resolve
  model = {"preset": a.preset, "dropout": 0.0, "frontend": a.frontend}
  if a.base_channels:
    model["base_channels"] = a.base_channels
  cfg = resolve({"resolution": a.resolution, "model": model, "train": {"batch_size": a.batch},
                 "sampler": {"steps": a.sample_steps}, "data": {"num_classes": 10}})
  what = f"{a.preset} @{a.resolution} px, frontend {a.frontend}, base {cfg.model.base_channels}"
  n_dev = len(jax.devices())
  print(f"{what}; {n_dev} {jax.devices()[0].platform} devices")
  step, hlo, trainer = train_setup(cfg, a.batch, jax.devices())
  print_profile(f"training step, batch {a.batch}:", profile(step, a.calls, hlo))
  if n_dev > 1 and a.batch % n_dev == 0:
    spmd, alone = collective_cost(cfg, a.batch)
    print(f"  without the profiler: {spmd * 1e3:.1f} ms a step on {n_dev} devices as one program; "
          f"{alone * 1e3:.1f} ms with each device running its {a.batch // n_dev} images alone "
          f"(no all-reduce): the collective and its waits cost {1 - alone / spmd:.1%} of the step")
  if not a.skip_sample:
    from core.runtime.generate import make_sampler
    params = trainer.init(jax.random.key(0)).params
    draw = make_sampler(trainer, params, cfg, a.sample_batch)
    labels = np.arange(a.sample_batch) % 10
    key = jax.random.key(0)
    jax.block_until_ready(draw(key, labels))
    p = profile(lambda: draw(key, labels), max(1, a.calls // 5), draw.hlo_text(key, labels))
    print_profile(f"sampler, batch {a.sample_batch}, {a.sample_steps} DDPM steps "
                  f"({a.sample_batch / p['wall_s']:.1f} img/s unprofiled):", p)


if __name__ == "__main__":
  main()
