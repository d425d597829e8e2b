"""Measured cost of training: parameters, FLOPs, memory and speed per arm of a sweep.

    python -m analysis.cost ablations/X.yaml [tier=gpu] [key=value ...] [--batch B]
        [--measure-steps N] [--warmup N] [--compile-only | --measure] [--max-measure-s S]
    python -m analysis.cost --preset unet128 --resolution 128 --batch 1
    python -m analysis.cost --table1

Per arm (arms that share a trained model, i.e. a train_key, are one row):
  - params: parameters of the model (sum over the stages of a cascade);
  - FLOPs/img: XLA's HLO cost analysis of the whole training step (forward, backward, Adam,
    EMA) divided by the global batch. It is read from the lowered, unoptimised module (global,
    before SPMD partitioning; no backend loop unrolling), and the body of every `scan` (the
    U-ViT's transformer stack) counted `length` times: XLA counts a while loop's body once;
  - memory: of the compiled step, per device, as XLA's memory analysis gives it:
    arguments + outputs + temporaries - aliased (the donated TrainState is aliased to the new
    one). Inputs are jax.ShapeDtypeStruct with the trainer's shardings, so compiling
    allocates nothing;
  - step time and img/s: measured over --measure-steps steps after --warmup steps, on a
    synthetic batch, when the compiled step's memory fits the device (an estimate from the
    memory analysis against the device's free memory; --measure / --compile-only force it).
    Rows say `measured` or `compiled` (and why);
  - speed: img/s relative to the sweep's reference arm (its `reference:` field, else the first
    arm of each group), in percent, as the paper's speed columns (tables 4 and 5); `FLOP
    speed` is the reference's FLOPs/img over the arm's, the compute-bound expectation,
    available without measuring; `paper` is the paper's speed where it gives one.

Writes results/cost/<sweep>_<tier>.json and .csv (analysis.cost_report; analysis.make_tables
takes its speed column from there when present). --table1 recomputes the paper's table 1
(analysis.table1; docs/paper.md table 1). XLA's figures themselves are analysis.xla_cost's.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

from analysis.cost_report import fmt_bytes, format_report, write_report
from analysis.speed import percent_of, speed_references
from analysis.xla_cost import MEMORY_FORMULA, free_memory, memory_figures, traced_flops

SAFETY = 0.8  # measure only if the step's memory is below this fraction of the free memory


@dataclasses.dataclass(frozen=True)
class CostOptions:
  batch: Optional[int] = None          # global batch of the step; None: the config's
  measure: Optional[bool] = None       # None: when it fits; True / False: forced
  measure_steps: int = 3
  warmup: int = 1
  max_measure_s: float = 300.0         # fewer timed steps if the warm-up says they'd take longer
  memory_limit: Optional[float] = None  # bytes free for the step; None: asked of the device


# --- one training step ---------------------------------------------------------------------

def abstract_step_args(trainer, batch_size: int):
  """(state, batch, key, schedule args) of Trainer.jit_step as ShapeDtypeStructs carrying
  their shardings."""
  import jax
  import jax.numpy as jnp
  sds = jax.ShapeDtypeStruct
  state = jax.tree.map(lambda x, s: sds(x.shape, x.dtype, sharding=s), trainer.abstract_state,
                       trainer.state_sharding)
  cfg = trainer.cfg
  r, c = cfg.resolution, cfg.model.in_channels
  # What core.data.pipeline batches hold: float32 images in [-1, 1] and int32 labels.
  batch = {"image": sds((batch_size, r, r, c), jnp.float32, sharding=trainer.batch_sharding),
           "label": sds((batch_size,), jnp.int32, sharding=trainer.batch_sharding)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  sched = trainer.schedule_args
  return (state, batch, sds(key.shape, key.dtype, sharding=trainer.replicated),
          sds(sched.shape, sched.dtype, sharding=trainer.replicated))


def synthetic_batch(trainer, batch_size: int):
  cfg = trainer.cfg
  rng = np.random.default_rng(0)
  r, c = cfg.resolution, cfg.model.in_channels
  nc = max(cfg.model.num_classes, cfg.data.num_classes, 1)
  local = {"image": rng.uniform(-1, 1, (batch_size, r, r, c)).astype(np.float32),
           "label": (np.arange(batch_size) % nc).astype(np.int32)}
  return trainer.global_batch(local)


def measure_step(trainer, compiled, batch_size: int, opts: CostOptions) -> dict:
  """Seconds per step of the compiled step, after warm-up; allocates the TrainState."""
  import jax
  state = trainer.init(jax.random.key(0))
  batch = synthetic_batch(trainer, batch_size)
  key = jax.device_put(jax.random.key(1), trainer.replicated)
  t = time.perf_counter()
  for _ in range(max(opts.warmup, 1)):
    state, m = compiled(state, batch, key, trainer.schedule_args)
  jax.block_until_ready((state, m))
  warm_s = (time.perf_counter() - t) / max(opts.warmup, 1)
  steps = max(1, min(opts.measure_steps, int(opts.max_measure_s // max(warm_s, 1e-9))))
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch, key, trainer.schedule_args)
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t) / steps
  loss = float(m["loss"])
  del state, batch
  return {"step_s": step_s, "img_per_s": batch_size / step_s, "steps_timed": steps,
          "warmup_step_s": warm_s, "loss_finite": math.isfinite(loss)}


def step_cost(cfg, opts: CostOptions = CostOptions(), mesh=None,
              log: Callable[[str], None] = lambda s: None) -> dict:
  """Cost figures of one experiment config's training step (see the module docstring)."""
  import jax
  from core.config import replace
  from core.models import param_count
  from core.train import Trainer
  batch = opts.batch or cfg.train.batch_size
  if batch != cfg.train.batch_size:
    cfg = replace(cfg, **{"train.batch_size": batch})
  trainer = Trainer(cfg, mesh)
  n_dev = trainer.mesh.devices.size
  if batch % n_dev:
    raise ValueError(f"batch {batch} is not divisible by the {n_dev} devices of the mesh")
  row: dict[str, Any] = {"resolution": cfg.resolution, "arch": cfg.model.arch,
                         "preset": cfg.model.preset, "batch": batch, "devices": n_dev,
                         "params": param_count(cfg.model, cfg.resolution)}
  t = time.perf_counter()
  traced = trainer.jit_step.trace(*abstract_step_args(trainer, batch))
  flops = traced_flops(traced)
  compiled = traced.lower().compile()
  row["compile_s"] = time.perf_counter() - t
  row["flops_step"] = flops
  row["flops_per_image"] = flops / batch
  row["memory"] = memory_figures(compiled)
  devices = list(trainer.mesh.devices.flat)
  free, source = (opts.memory_limit, "--memory-limit") if opts.memory_limit is not None \
      else free_memory(devices)
  per_dev = row["memory"]["peak"]
  # Host-backed devices share one memory; accelerators each have their own.
  need = per_dev * (n_dev if devices[0].platform == "cpu" else 1)
  fits = math.isfinite(need) and need <= SAFETY * free
  row["memory_needed"], row["memory_free"], row["memory_source"] = need, free, source
  measure = fits if opts.measure is None else opts.measure
  if measure:
    log(f"  measuring {opts.measure_steps} steps at batch {batch} ...")
    row.update(measure_step(trainer, compiled, batch, opts))
    row["measured"], row["mode"] = True, "measured" + ("" if fits else " (forced)")
  else:
    row.update(step_s=math.nan, img_per_s=math.nan, steps_timed=0)
    why = "--compile-only" if opts.measure is False else (
        f"needs {fmt_bytes(need)} > {SAFETY:.0%} of {fmt_bytes(free)} free ({source})")
    row["measured"], row["mode"] = False, f"compiled ({why})"
  return row


def arm_cost(cfg, opts: CostOptions = CostOptions(), mesh=None, log=lambda s: None) -> dict:
  """step_cost of a run's config; a cascade (cascade.stages) sums its stages per image
  (every stage trains on the same number of images at the same batch)."""
  from core.diffusion.cdm import stage_configs
  configs = stage_configs(cfg)
  if len(configs) == 1:
    return step_cost(cfg, opts, mesh, log)
  stages = [step_cost(c, opts, mesh, log) for c in configs]
  row = dict(stages[-1])
  for k in ("params", "flops_per_image", "flops_step", "compile_s", "step_s"):
    row[k] = sum(s[k] for s in stages)
  row["memory"] = max((s["memory"] for s in stages), key=lambda m: m["peak"])
  row["img_per_s"] = 1.0 / sum(1.0 / s["img_per_s"] for s in stages) \
      if all(s["measured"] for s in stages) else math.nan
  row["measured"] = all(s["measured"] for s in stages)
  row["mode"] = "; ".join(f"stage {c.resolution}px: {s['mode']}" for c, s in zip(configs, stages))
  row["stages"] = stages
  return row


# --- evaluation ----------------------------------------------------------------------------

def forward_flops(cfg) -> float:
  """FLOPs of one network evaluation on one image (eval mode, lowered only)."""
  import jax
  import jax.numpy as jnp
  from core.models import build_model, param_shapes
  from core.models import _dummy_inputs
  model = build_model(cfg.model, cfg.resolution)
  inputs = _dummy_inputs(cfg.model, cfg.resolution)
  fn = jax.jit(lambda p, kw: model.apply({"params": p}, **kw, train=False))
  return traced_flops(fn.trace(param_shapes(cfg.model, cfg.resolution), inputs))


def sampling_passes(cfg) -> int:
  """Network evaluations per sampler step and image: guidance batches a conditional and an
  unconditional pass at every step (core.diffusion.samplers.guided_output)."""
  guided = cfg.sampler.guidance_scale != 1.0 and cfg.model.num_classes > 0
  return 2 if guided else 1


def eval_cost(cfg, forward: Optional[dict] = None) -> dict:
  """FLOPs of one run's evaluation: samples x sampler steps x passes x forward FLOPs, each
  stage of a cascade with its own sampler (Inception, about 11 GFLOP an image, left out: it
  is below 1% of sampling for every model here). `forward` caches forward_flops per config."""
  from core.diffusion.cdm import stage_configs
  forward = {} if forward is None else forward
  n = cfg.eval.num_samples if cfg.eval.fid else cfg.eval.grid_size
  total = 0.0
  for c in stage_configs(cfg):
    sig = (repr(c.model), c.resolution)
    if sig not in forward:
      forward[sig] = forward_flops(c)
    total += n * c.sampler.steps * sampling_passes(c) * forward[sig]
  return {"num_samples": n, "sampler_steps": cfg.sampler.steps, "passes": sampling_passes(cfg),
          "eval_flops": total}


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What predicted times assume: `chips` of `tflops` peak each at `utilisation`."""
  chips: int = 256
  tflops: float = 459.0        # a TPU v5p chip, bf16
  utilisation: float = 0.4

  def seconds(self, flops: float) -> float:
    return flops / (self.chips * self.tflops * 1e12 * self.utilisation)


def add_predictions(rows: list[dict], hw: Hardware) -> None:
  for r in rows:
    r["train_time_h"] = hw.seconds(r["train_flops"]) / 3600
    r["eval_time_h"] = hw.seconds(r["eval_flops"]) / 3600


def train_flops(row: dict, cfg) -> float:
  """Training FLOPs of the whole run: each stage's step FLOPs times its steps."""
  stages = _stages(cfg)
  if "stages" in row:
    return sum(s["flops_step"] * c.train.steps for s, c in zip(row["stages"], stages))
  return row["flops_step"] * cfg.train.steps


# --- a sweep -------------------------------------------------------------------------------

def relative_speeds(rows: list[dict], reference: Optional[int]) -> None:
  """Adds speed_pct (measured) and flops_speed_pct to each row, against its reference
  (analysis.speed: rows[reference], or the first row of the row's group)."""
  for r, j in zip(rows, speed_references([r["group"] for r in rows], reference)):
    ref = rows[j]
    r["reference"] = ref["arm"]
    r["speed_pct"] = percent_of(r["img_per_s"], ref["img_per_s"]) \
        if r["measured"] and ref["measured"] else math.nan
    r["flops_speed_pct"] = percent_of(ref["flops_per_image"], r["flops_per_image"])


def sweep_cost(path: str, tier: str = "paper", overrides: Optional[dict] = None,
               opts: CostOptions = CostOptions(), mesh=None, log=print,
               hardware: Hardware = Hardware()) -> dict:
  """The cost report of a sweep file at a tier: one row per trained model, with the cost of
  its runs' evaluations (several for a model that only samples differently, e.g. guidance)."""
  from analysis import paper_numbers
  from sweeps.spec import expand
  meta, runs = expand(path, tier, overrides or {}, seeds=1)
  models: dict[str, dict] = {}
  for r in runs:
    m = models.setdefault(r.train_key, {"config": r.config, "arms": [], "evals": []})
    m["arms"].append({"group": r.group, "arm": r.arm, "run_id": r.run_id})
    m["evals"].append(r.config)
  rows, ref_index, forward = [], None, {}
  for i, (key, m) in enumerate(models.items()):
    arms = m["arms"]
    label = " / ".join(a["arm"] for a in arms)
    log(f"[{i + 1}/{len(models)}] {label} ({m['config'].resolution}px, model {key})")
    evals = [eval_cost(c, forward) for c in m["evals"]]
    row = {"group": arms[0]["group"], "arm": label, "arms": arms, "train_key": key,
           **arm_cost(m["config"], opts, mesh, log),
           "eval_flops": sum(e["eval_flops"] for e in evals), "evals": evals}
    row["train_flops"] = train_flops(row, m["config"])
    first = next(r for r in meta["runs"] if r["run_id"] == arms[0]["run_id"])
    paper = paper_numbers.for_run(meta["table"], arms[0]["group"], arms[0]["arm"],
                                  first.get("paper")) or {}
    row["paper_speed_pct"] = float(paper.get("speed", math.nan))
    if meta["reference"] in (a["run_id"] for a in arms):
      ref_index = i
    rows.append(row)
  relative_speeds(rows, ref_index)
  add_predictions(rows, hardware)
  return {"kind": "sweep", "sweep": meta["sweep"], "tier": tier, "file": path,
          "table": meta["table"], "title": meta["title"],
          "reference": rows[ref_index]["arm"] if ref_index is not None else None,
          "hardware": dataclasses.asdict(hardware), "rows": rows, **_environment(mesh)}


def _stages(cfg):
  from core.diffusion.cdm import stage_configs
  return stage_configs(cfg)


def preset_cost(preset: str, resolution: int, opts: CostOptions = CostOptions(), mesh=None,
                log=print) -> dict:
  from core.experiment import resolve
  batch = opts.batch or 1
  cfg = resolve({"resolution": resolution, "model": {"preset": preset},
                 "train": {"batch_size": batch}})
  log(f"{preset} at {resolution}px, batch {batch}")
  row = {"group": str(resolution), "arm": preset,
         "arms": [{"group": str(resolution), "arm": preset, "run_id": preset}],
         "paper_speed_pct": math.nan, **arm_cost(cfg, dataclasses.replace(opts, batch=batch),
                                                  mesh, log)}
  relative_speeds([row], 0)
  return {"kind": "preset", "sweep": f"preset_{preset}_{resolution}", "tier": "",
          "file": "", "table": "", "title": f"{preset} at {resolution}px",
          "reference": preset, "rows": [row], **_environment(mesh)}


def _environment(mesh) -> dict:
  import jax
  devs = list(mesh.devices.flat) if mesh is not None else jax.devices()
  return {"backend": jax.default_backend(), "device_kind": devs[0].device_kind,
          "devices": len(devs), "host": platform.node(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, "memory_formula": MEMORY_FORMULA, "time": time.time()}


# --- command line --------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m analysis.cost",
                               description="Parameters, FLOPs, memory and measured speed of "
                                           "each arm's training step.")
  ap.add_argument("args", nargs="*", help="a sweep file, then tier=... and key=value overrides")
  ap.add_argument("--preset", help="cost of one model preset instead of a sweep")
  ap.add_argument("--resolution", type=int, help="with --preset (default: its paper resolution)")
  ap.add_argument("--batch", type=int, help="global batch of the step (default: the config's; "
                  "1 with --preset)")
  ap.add_argument("--measure-steps", type=int, default=3, help="timed steps (default 3)")
  ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
  g = ap.add_mutually_exclusive_group()
  g.add_argument("--compile-only", action="store_true", help="never measure; allocates nothing")
  g.add_argument("--measure", action="store_true", help="measure even where the memory "
                 "estimate says it does not fit")
  ap.add_argument("--max-measure-s", type=float, default=300.0,
                  help="time a row's steps may take; fewer steps if the warm-up says more")
  ap.add_argument("--memory-limit-gb", type=float,
                  help="free memory to assume (GiB) instead of asking the device")
  ap.add_argument("--chips", type=int, default=Hardware.chips,
                  help="predicted times: number of chips (default 256)")
  ap.add_argument("--chip-tflops", type=float, default=Hardware.tflops,
                  help="predicted times: peak TFLOP/s of a chip (default 459, TPU v5p bf16)")
  ap.add_argument("--utilisation", type=float, default=Hardware.utilisation,
                  help="predicted times: share of the peak reached (default 0.4)")
  ap.add_argument("--table1", action="store_true", help="recompute the paper's table 1")
  ap.add_argument("--results", default="results", help="results folder (default results/)")
  ap.add_argument("--out", help="output folder (default RESULTS/cost)")
  ap.add_argument("--no-write", action="store_true", help="print only")
  a = ap.parse_intermixed_args(argv)
  from core.devices import setup
  setup()
  from core.config import ConfigError
  for name, v, least in (("--batch", a.batch, 1), ("--resolution", a.resolution, 1),
                         ("--measure-steps", a.measure_steps, 1), ("--warmup", a.warmup, 0)):
    if v is not None and v < least:
      print(f"error: {name} {v} is impossible; pass {name} N with N >= {least}", file=sys.stderr)
      return 2
  if not 0 < a.utilisation <= 1:
    print(f"error: --utilisation {a.utilisation} must lie in (0, 1]", file=sys.stderr)
    return 2
  for name, v in (("--max-measure-s", a.max_measure_s), ("--memory-limit-gb", a.memory_limit_gb),
                  ("--chips", a.chips), ("--chip-tflops", a.chip_tflops)):
    if v is not None and not v > 0:
      print(f"error: {name} {v} must be positive", file=sys.stderr)
      return 2
  try:
    if a.table1:
      from analysis.table1 import format_table1, table1
      print(format_table1(table1()))
      if not a.args and not a.preset:
        return 0
    opts = CostOptions(batch=a.batch, measure=False if a.compile_only else (True if a.measure
                                                                             else None),
                       measure_steps=a.measure_steps, warmup=a.warmup,
                       max_measure_s=a.max_measure_s,
                       memory_limit=a.memory_limit_gb * 2 ** 30 if a.memory_limit_gb else None)
    if a.preset:
      from core.models import PAPER_RESOLUTIONS
      res = a.resolution or PAPER_RESOLUTIONS.get(a.preset)
      if not res:
        raise ConfigError(f"--preset {a.preset}: pass --resolution")
      report = preset_cost(a.preset, res, opts)
    else:
      files = [x for x in a.args if "=" not in x]
      if len(files) != 1:
        raise ConfigError("pass one sweep file (ablations/X.yaml), --preset NAME or --table1")
      from sweeps.spec import parse_overrides
      run_opts, over = parse_overrides([x for x in a.args if "=" in x])
      report = sweep_cost(files[0], run_opts.get("tier", "paper"), over, opts,
                          hardware=Hardware(a.chips, a.chip_tflops, a.utilisation))
  except (ConfigError, ValueError, KeyError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  print()
  print(format_report(report))
  if not a.no_write:
    paths = write_report(report, a.out or os.path.join(a.results, "cost"))
    print(f"wrote {', '.join(paths)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
