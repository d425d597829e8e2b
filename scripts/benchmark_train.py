"""Images per second of a training step, measured side by side in one process.

    python -m scripts.benchmark_train [--steps 10] [--paper unet128] [--skip-paper | --skip-small]

Small presets run the full step of core.train (loss, gradient, Adam, EMA). A paper preset at
batch 1 runs the loss and gradient only: its Adam moments and EMA (4 more copies of 1-2B
float32 parameters) do not fit a 24 GB machine beside the gradient; the row says so.
Ratios against the first row are printed because shared machines are noisy.
"""
from __future__ import annotations

import argparse
import time

import jax


def _time(fn, steps: int) -> tuple[float, float]:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t) / steps


def bench_full_step(preset: str, res: int, batch: int, steps: int) -> dict:
  from analysis.cost import CostOptions, step_cost
  from core.experiment import resolve
  cfg = resolve({"resolution": res, "model": {"preset": preset}, "train": {"batch_size": batch}})
  out = step_cost(cfg, CostOptions(measure=True, measure_steps=steps, warmup=1,
                                   max_measure_s=1e9))
  return {"what": f"{preset} @{res} batch {batch}, full step", "compile_s": out["compile_s"],
          "step_s": out["step_s"], "img_s": out["img_per_s"],
          "flop_s": out["flops_step"] / out["step_s"]}


def bench_grad_only(preset: str, res: int, batch: int, steps: int) -> dict:
  from core.config import LossConfig, ScheduleConfig
  from core.diffusion.process import diffusion_loss
  from core.models import build_model, init_params, preset as get_preset
  from core.diffusion.schedules import make_schedule
  cfg = get_preset(preset)
  model = build_model(cfg, res)
  params = init_params(cfg, res, jax.random.key(0))
  sched = make_schedule(ScheduleConfig(name="shifted"), res)
  x = jax.numpy.zeros((batch, res, res, 3))
  y = jax.numpy.zeros((batch,), jax.numpy.int32)

  @jax.jit
  def grad(p, key):
    return jax.grad(lambda p: diffusion_loss(
        lambda z, l: model.apply({"params": p}, z, l, y, train=True, rngs={"dropout": key}),
        x, key, sched, LossConfig())[0])(p)
  c, dt = _time(lambda: grad(params, jax.random.key(1)), steps)
  return {"what": f"{preset} @{res} batch {batch}, loss+gradient only", "compile_s": c,
          "step_s": dt, "img_s": batch / dt}


def main() -> None:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--paper", default="unet128")
  ap.add_argument("--skip-paper", action="store_true")
  ap.add_argument("--skip-small", action="store_true", help="the paper preset's row only")
  a = ap.parse_args()
  from analysis.xla_cost import matmul_peak
  print(f"devices: {jax.devices()}")
  peak = matmul_peak(2048, "float32")["flops_per_s"]   # the ceiling, measured in this run
  print(f"ceiling: float32 matmul 2048^2, {peak / 1e9:.0f} GFLOP/s")
  rows = [] if a.skip_small else [
      bench_full_step(p, 32, 32, a.steps) for p in ("unet_tiny", "uvit_tiny", "unet_small", "uvit_small")]
  if not a.skip_paper:
    from core.models import PAPER_RESOLUTIONS
    rows.append(bench_grad_only(a.paper, PAPER_RESOLUTIONS[a.paper], 1, max(2, a.steps // 5)))
  ref = rows[0]["img_s"]
  print(f"{'configuration':48s} {'compile s':>9s} {'step s':>8s} {'img/s':>9s} {'vs first':>8s} "
        f"{'GFLOP/s':>8s} {'of ceiling':>10s}")
  for r in rows:
    fl = r.get("flop_s")
    share = f"{fl / 1e9:8.1f} {fl / peak:10.1%}" if fl else f"{'':8s} {'':10s}"
    print(f"{r['what']:48s} {r['compile_s']:9.1f} {r['step_s']:8.4f} {r['img_s']:9.2f} "
          f"{r['img_s'] / ref:8.3f} {share}")


if __name__ == "__main__":
  main()
