"""The device check: how close the toolkit's programs come to the accelerator's
measured peak. One run prints, each beside the peak measured by the same run's matmul:

  - the training step of the paper's U-ViT transformer (16x16 tokens, width 2048, bfloat16;
    as many blocks as --blocks) and of unet128 at 128x128: model FLOP utilisation (XLA's FLOPs
    of the step over its measured time, as a share of the matmul peak);
  - DDPM sampling of that U-ViT: images/s at --sample-steps, and its utilisation;
  - Inception (the FID network, random weights: speed only): images/s and utilisation.

    python -m scripts.gpu_check [--out results/reference/gpu_check.json]   # a GPU or TPU
    python -m scripts.gpu_check --tiny                                     # here, on the CPU

--tiny runs the same code at sizes a CPU finishes in a minute (tests/test_gpu_check.py runs it),
so the script is known to work before a device is ever lent. Budget on one H100/H200: about
8 minutes, mostly compilation. Goal there: at least 45% MFU for the U-ViT step.
"""
from __future__ import annotations

import argparse
import sys
import time


def _timed(fn, reps: int) -> float:
  import jax
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(reps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / reps


def train_row(name: str, cfg, reps: int, peak: float) -> dict:
  from analysis.cost import CostOptions, step_cost
  r = step_cost(cfg, CostOptions(measure=True, measure_steps=reps, warmup=1, max_measure_s=120))
  fl = r["flops_step"] / r["step_s"]
  return {"what": name, "batch": cfg.train.batch_size, "params": r["params"],
          "flop_per_s": fl, "share_of_peak": fl / peak, "img_per_s": r["img_per_s"],
          "compile_s": r["compile_s"]}


def sampling_row(cfg, steps: int, batch: int, reps: int, peak: float) -> dict:
  import jax
  import numpy as np
  from analysis.cost import forward_flops
  from core.config import replace
  from core.runtime.generate import make_sampler
  from core.train import Trainer
  cfg = replace(cfg, **{"sampler.steps": steps})
  tr = Trainer(cfg)
  params = tr.init(jax.random.key(0)).ema_params
  draw = make_sampler(tr, params, cfg, batch)
  labels = (np.arange(batch) % max(cfg.model.num_classes, 1)).astype(np.int32)
  t = time.perf_counter()
  jax.block_until_ready(draw(jax.random.key(1), labels))
  compile_s = time.perf_counter() - t
  dt = _timed(lambda: draw(jax.random.key(1), labels), reps)
  fl = batch * steps * forward_flops(cfg) / dt
  return {"what": f"DDPM sampling, {steps} steps", "batch": batch, "flop_per_s": fl,
          "share_of_peak": fl / peak, "img_per_s": batch / dt, "compile_s": compile_s}


def inception_row(batch: int, reps: int, peak: float) -> dict:
  import jax
  import numpy as np
  from core.metrics.features import InceptionExtractor
  from core.metrics.inception import InceptionV3
  net = InceptionV3(with_logits=False)
  x = np.zeros((1, 299, 299, 3), np.float32)
  params = jax.jit(lambda k: net.init(k, x))(jax.random.key(0))["params"]
  ext = InceptionExtractor(params=params, batch_size=batch)
  imgs = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3)).astype(np.uint8)
  t = time.perf_counter()
  ext(imgs)
  compile_s = time.perf_counter() - t
  dt = _timed(lambda: ext(imgs)["pool"], reps)
  from analysis.xla_cost import traced_flops
  pre = jax.numpy.zeros((batch, 299, 299, 3))
  fl = traced_flops(jax.jit(lambda p, v: net.apply({"params": p}, v)).trace(params, pre)) / dt
  return {"what": "Inception pool_3 (FID features)", "batch": batch, "flop_per_s": fl,
          "share_of_peak": fl / peak, "img_per_s": batch / dt, "compile_s": compile_s}


def main(argv=None) -> int:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tiny", action="store_true", help="CPU-sized models (a test of the script)")
  ap.add_argument("--blocks", type=int, default=12,
                  help="transformer blocks of the U-ViT (the paper's 2B model has 36)")
  ap.add_argument("--batch", type=int, default=64, help="U-ViT training batch")
  ap.add_argument("--unet-batch", type=int, default=16, help="unet128 training batch")
  ap.add_argument("--sample-steps", type=int, default=16)
  ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each program")
  ap.add_argument("--out", default="", help="write the figures as JSON here")
  a = ap.parse_args(argv)
  import jax
  from analysis.xla_cost import matmul_peak
  from core.experiment import resolve
  gpu = jax.default_backend() != "cpu"
  dtype = "bfloat16" if gpu and not a.tiny else "float32"
  peak = matmul_peak(1024 if a.tiny else 8192, dtype, reps=5 if a.tiny else 10)
  p = peak["flops_per_s"]
  if a.tiny:
    uvit = resolve({"resolution": 16, "model": {"preset": "uvit_tiny"}, "train": {"batch_size": 8}})
    unet = resolve({"resolution": 16, "model": {"preset": "unet_tiny"}, "train": {"batch_size": 8}})
    sample_batch, inc_batch = 8, len(jax.devices())
  else:
    # The paper's transformer: 16x16 tokens at width 2048 (uvit128's lowest level).
    uvit = resolve({"resolution": 128, "model": {"preset": "uvit128", "dtype": "bfloat16",
                                                 "num_transformer_blocks": a.blocks},
                    "train": {"batch_size": a.batch}})
    unet = resolve({"resolution": 128, "model": {"preset": "unet128", "dtype": "bfloat16"},
                    "train": {"batch_size": a.unet_batch}})
    sample_batch, inc_batch = a.batch, 200
  rows = [train_row(f"U-ViT step ({uvit.model.num_transformer_blocks} blocks, "
                    f"{uvit.resolution}px)", uvit, a.reps, p),
          train_row(f"{unet.model.preset} step ({unet.resolution}px)", unet, a.reps, p),
          sampling_row(uvit, 2 if a.tiny else a.sample_steps, sample_batch, a.reps, p),
          inception_row(inc_batch, a.reps, p)]
  print(f"device: {peak['device']} x {len(jax.devices())}; peak ({peak['dtype']} matmul "
        f"{peak['n']}^2, measured): {p / 1e12:.3g} TFLOP/s")
  print(f"{'program':40s} {'batch':>5s} {'TFLOP/s':>8s} {'of peak':>7s} {'img/s':>9s} {'compile s':>9s}")
  for r in rows:
    print(f"{r['what']:40s} {r['batch']:5d} {r['flop_per_s'] / 1e12:8.3g} "
          f"{r['share_of_peak']:7.1%} {r['img_per_s']:9.3g} {r['compile_s']:9.1f}")
  if a.out:
    from core.runio import write_json_atomic
    write_json_atomic(a.out, {"peak": peak, "rows": rows, "devices": len(jax.devices()),
                              "backend": jax.default_backend(), "time": time.time(),
                              "argv": argv if argv is not None else sys.argv[1:]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
