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

Writes results/cost/<sweep>_<tier>.json and .csv (analysis.make_tables takes its speed column
from there when present). --table1 recomputes the paper's table 1 (SPEC section 3).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

from core.runio import write_json_atomic, write_text_atomic

MEMORY_FORMULA = "arguments + outputs + temporaries - aliased (XLA memory analysis, per device)"
SAFETY = 0.8  # measure only if the step's memory is below this fraction of the free memory


@dataclasses.dataclass(frozen=True)
class CostOptions:
  batch: Optional[int] = None          # global batch of the step; None: the config's
  measure: Optional[bool] = None       # None: when it fits; True / False: forced
  measure_steps: int = 3
  warmup: int = 1
  max_measure_s: float = 300.0         # fewer timed steps if the warm-up says they'd take longer
  memory_limit: Optional[float] = None  # bytes free for the step; None: asked of the device


# --- FLOPs: XLA's cost analysis, loops counted whole ------------------------------------

def _cost_value(analysis, key: str = "flops") -> float:
  # cost_analysis() is best effort: a dict, a list of one dict (older jax), or None.
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or key not in analysis:
    return math.nan
  return float(analysis[key])


def _lowered_flops(closed_jaxpr) -> float:
  import jax
  from jax.extend.core import jaxpr_as_fun
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed_jaxpr.in_avals]
  return _cost_value(jax.jit(jaxpr_as_fun(closed_jaxpr)).lower(*avals).cost_analysis())


def loop_extra_flops(jaxpr) -> float:
  """FLOPs that XLA's cost analysis leaves out of `jaxpr`: it counts a while loop's body
  once, a scan runs it `length` times. Nested scans are handled by recursion."""
  from jax.extend.core import jaxprs_in_params
  extra = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      body = eqn.params["jaxpr"]
      n = int(eqn.params["length"])
      unroll = eqn.params.get("unroll", 1)
      unroll = n if unroll is True else max(int(unroll), 1)
      # An unrolled scan holds `unroll` copies in its loop body, plus the remainder.
      counted = n if unroll >= n else unroll + n % unroll
      inner = loop_extra_flops(body.jaxpr)
      extra += (n - counted) * _lowered_flops(body) + n * inner
    else:
      for sub in jaxprs_in_params(eqn.params):
        extra += loop_extra_flops(sub)
  return extra


def traced_flops(traced) -> float:
  """FLOPs of a jax.stages.Traced function, every loop iteration counted (global, not per
  device: the module is read before SPMD partitioning)."""
  return _cost_value(traced.lower().cost_analysis()) + loop_extra_flops(traced.jaxpr.jaxpr)


def matmul_peak(n: int = 2048, dtype: str = "float32", reps: int = 10) -> dict:
  """The device's measured ceiling: FLOP/s of a jitted n x n matmul (2 n^3 FLOPs), the median
  of `reps` timed calls after a warm-up, on the first device. Shares of it are what speed
  figures are reported as (one run, one machine, side by side)."""
  import jax
  import jax.numpy as jnp
  dev = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype) * 0.01, dev)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(a))
    times.append(time.perf_counter() - t)
  dt = float(np.median(times))
  return {"n": n, "dtype": dtype, "seconds": dt, "flops_per_s": 2.0 * n ** 3 / dt,
          "device": dev.device_kind}


# --- memory --------------------------------------------------------------------------------

def memory_figures(compiled) -> dict[str, float]:
  """Per-device bytes of a compiled executable; `peak` is MEMORY_FORMULA."""
  m = compiled.memory_analysis()
  if m is None:
    return {k: math.nan for k in ("arguments", "outputs", "temps", "aliased", "peak", "xla_peak")}
  out = {"arguments": float(m.argument_size_in_bytes), "outputs": float(m.output_size_in_bytes),
         "temps": float(m.temp_size_in_bytes), "aliased": float(m.alias_size_in_bytes)}
  out["peak"] = out["arguments"] + out["outputs"] + out["temps"] - out["aliased"]
  out["xla_peak"] = float(getattr(m, "peak_memory_in_bytes", 0) or math.nan)  # newer XLA only
  return out


def free_memory(devices) -> tuple[float, str]:
  """Bytes the step may use and where that figure comes from. CPU devices (also XLA's fake
  ones) share the host's memory, so the caller multiplies a per-device figure by their
  number."""
  d = devices[0]
  stats = d.memory_stats() if hasattr(d, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{d.platform} bytes_limit"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return float(line.split()[1]) * 1024, "host MemAvailable"
  except OSError:
    pass
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"


# --- one training step ---------------------------------------------------------------------

def abstract_step_args(trainer, batch_size: int):
  """(state, batch, key) of Trainer.step as ShapeDtypeStructs carrying their shardings."""
  import jax
  import jax.numpy as jnp
  sds = jax.ShapeDtypeStruct
  state = jax.tree.map(lambda x, s: sds(x.shape, x.dtype, sharding=s), trainer.abstract_state,
                       trainer.state_sharding)
  cfg = trainer.cfg
  r, c = cfg.resolution, cfg.model.in_channels
  # What core.data batches hold: float32 images in [-1, 1] and int32 labels.
  batch = {"image": sds((batch_size, r, r, c), jnp.float32, sharding=trainer.batch_sharding),
           "label": sds((batch_size,), jnp.int32, sharding=trainer.batch_sharding)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  return state, batch, sds(key.shape, key.dtype, sharding=trainer.replicated)


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
    state, m = compiled(state, batch, key)
  jax.block_until_ready((state, m))
  warm_s = (time.perf_counter() - t) / max(opts.warmup, 1)
  steps = max(1, min(opts.measure_steps, int(opts.max_measure_s // max(warm_s, 1e-9))))
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch, key)
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
  traced = trainer.step.trace(*abstract_step_args(trainer, batch))
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
        f"needs {_bytes(need)} > {SAFETY:.0%} of {_bytes(free)} free ({source})")
    row["measured"], row["mode"] = False, f"compiled ({why})"
  return row


def arm_cost(cfg, opts: CostOptions = CostOptions(), mesh=None, log=lambda s: None) -> dict:
  """step_cost of a run's config; a cascade (cascade.stages) sums its stages per image
  (every stage trains on the same number of images at the same batch)."""
  from core.cdm import stage_configs
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
  unconditional pass at every step (core.samplers.guided_output)."""
  guided = cfg.sampler.guidance_scale != 1.0 and cfg.model.num_classes > 0
  return 2 if guided else 1


def eval_cost(cfg, forward: Optional[dict] = None) -> dict:
  """FLOPs of one run's evaluation: samples x sampler steps x passes x forward FLOPs, each
  stage of a cascade with its own sampler (Inception, about 11 GFLOP an image, left out: it
  is below 1% of sampling for every model here). `forward` caches forward_flops per config."""
  from core.cdm import stage_configs
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
  """Adds speed_pct (measured) and flops_speed_pct to each row, against rows[reference] or,
  without one, the first row of the row's group."""
  first: dict[str, int] = {}
  for i, r in enumerate(rows):
    first.setdefault(r["group"], i)
  for i, r in enumerate(rows):
    ref = rows[reference if reference is not None else first[r["group"]]]
    r["reference"] = ref["arm"]
    # ratio first: the reference row is then exactly 100 (100 * x / x can miss it by an ulp)
    r["speed_pct"] = 100.0 * (r["img_per_s"] / ref["img_per_s"]) \
        if r["measured"] and ref["measured"] else math.nan
    r["flops_speed_pct"] = 100.0 * (ref["flops_per_image"] / r["flops_per_image"])


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
  from core.cdm import stage_configs
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


# --- output --------------------------------------------------------------------------------

def _bytes(n) -> str:
  if n is None or not math.isfinite(n):
    return ""
  for div, unit in ((2 ** 40, "TiB"), (2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
    if abs(n) >= div:
      return f"{n / div:.3g} {unit}"
  return f"{n:.0f} B"


def _si(n, unit: str = "") -> str:
  if n is None or not math.isfinite(n):
    return ""
  for div, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= div:
      return f"{n / div:.3g} {p}{unit}"
  return f"{n:.3g} {unit}".rstrip()


def _pct(x) -> str:
  return f"{x:.0f}%" if x is not None and math.isfinite(x) else ""


def _num(x, fmt: str) -> str:
  return format(x, fmt) if x is not None and math.isfinite(x) else ""


TABLE_COLUMNS = ("group", "arm", "params", "FLOPs/img", "memory/dev", "step s", "img/s",
                 "speed", "FLOP speed", "paper", "train FLOPs", "train h", "eval FLOPs",
                 "eval h", "mode")


def table_rows(report: dict) -> list[dict[str, str]]:
  return [{"group": r["group"], "arm": r["arm"], "params": _si(r["params"]),
           "FLOPs/img": _si(r["flops_per_image"]), "memory/dev": _bytes(r["memory"]["peak"]),
           "step s": _num(r["step_s"], ".3g"), "img/s": _num(r["img_per_s"], ".3g"),
           "speed": _pct(r["speed_pct"]), "FLOP speed": _pct(r["flops_speed_pct"]),
           "paper": _pct(r["paper_speed_pct"]), "train FLOPs": _si(r.get("train_flops")),
           "train h": _num(r.get("train_time_h"), ".3g"), "eval FLOPs": _si(r.get("eval_flops")),
           "eval h": _num(r.get("eval_time_h"), ".3g"), "mode": r["mode"]}
          for r in report["rows"]]


def format_report(report: dict) -> str:
  rows = table_rows(report)
  widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in TABLE_COLUMNS}
  right = set(TABLE_COLUMNS) - {"group", "arm", "mode"}
  fmt = lambda vals: "  ".join(v.rjust(widths[c]) if c in right else v.ljust(widths[c])
                               for c, v in zip(TABLE_COLUMNS, vals)).rstrip()
  tier = f", tier {report['tier']}" if report["tier"] else ""
  b = report["rows"][0]["batch"] if report["rows"] else 0
  lines = [f"{report['title']}{tier} — {report['backend']} ({report['device_kind']}) x "
           f"{report['devices']}, batch {b}", "",
           fmt(TABLE_COLUMNS), fmt(["-" * widths[c] for c in TABLE_COLUMNS])]
  lines += [fmt([r[c] for c in TABLE_COLUMNS]) for r in rows]
  lines += ["", f"- FLOPs/img: XLA cost analysis of one training step (forward, backward, Adam, "
            f"EMA) / batch; scan bodies counted per iteration.",
            f"- memory/dev: {MEMORY_FORMULA}.",
            f"- speed: measured img/s relative to {report['reference'] or 'the first arm of each group'}"
            "; FLOP speed: the reference's FLOPs/img over the arm's; paper: the paper's speed column."]
  hw = report.get("hardware")
  if hw:
    tot = lambda k: sum(r.get(k) or 0.0 for r in report["rows"])
    lines += [f"- train / eval FLOPs: the whole training (step FLOPs x steps) / every evaluation "
              "of the model's runs (samples x sampler steps x 2 with guidance x one forward);"
              f" h: predicted hours on {hw['chips']} chips of {hw['tflops']:g} TFLOP/s at "
              f"{hw['utilisation']:.0%} utilisation (--chips, --chip-tflops, --utilisation).",
              f"- in all: training {_si(tot('train_flops'))}FLOP, {tot('train_time_h'):.3g} h; "
              f"evaluation {_si(tot('eval_flops'))}FLOP, {tot('eval_time_h'):.3g} h."]
  return "\n".join(lines) + "\n"


CSV_COLUMNS = ("group", "arm", "run_ids", "train_key", "resolution", "arch", "batch",
               "devices", "params", "flops_per_image", "memory_peak", "memory_arguments",
               "memory_outputs", "memory_temps", "memory_aliased", "measured", "step_s",
               "img_per_s", "steps_timed", "speed_pct", "flops_speed_pct", "paper_speed_pct",
               "train_flops", "train_time_h", "eval_flops", "eval_time_h", "compile_s", "mode")


def to_csv(report: dict) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
  w.writeheader()
  for r in report["rows"]:
    w.writerow({**r, "run_ids": ";".join(a["run_id"] for a in r["arms"]),
                **{f"memory_{k}": v for k, v in r["memory"].items()}})
  return buf.getvalue()


def _json_safe(x):
  # NaN is not JSON: figures that were not taken are null.
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def write_report(report: dict, out_dir: str) -> list[str]:
  """<out_dir>/<sweep>_<tier>.json and .csv (the name make_tables looks for)."""
  name = f"{report['sweep']}_{report['tier']}" if report["tier"] else report["sweep"]
  paths = [os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.csv")]
  write_json_atomic(paths[0], _json_safe(report))
  write_text_atomic(paths[1], to_csv(report))
  return paths


# --- table 1 -------------------------------------------------------------------------------

def conv_layer_cost(batch: int, res: int, channels: int, k: int = 3,
                    dtype: str = "bfloat16") -> dict:
  """A k x k, `channels` -> `channels` convolution (SAME padding) on (batch, res, res,
  channels), compile-only: XLA's FLOPs and memory beside the analytic counts."""
  import jax
  import jax.numpy as jnp
  dt = jnp.dtype(dtype)
  x = jax.ShapeDtypeStruct((batch, res, res, channels), dt)
  w = jax.ShapeDtypeStruct((k, k, channels, channels), dt)
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  lowered = jax.jit(conv).lower(x, w)
  mem = memory_figures(lowered.compile())
  macs = batch * res * res * channels * channels * k * k
  return {"batch": batch, "resolution": res, "channels": channels, "k": k, "dtype": dtype,
          "kernel_bytes": k * k * channels * channels * dt.itemsize,
          "kernel_bytes_f32": k * k * channels * channels * 4,
          "feature_map_bytes": batch * res * res * channels * dt.itemsize,
          "flops_analytic": 2.0 * macs, "macs": float(macs),
          "flops_xla": _cost_value(lowered.cost_analysis()), "xla_memory": mem}


def table1(batch: Optional[int] = None) -> list[dict]:
  """SPEC table 1's two layers, recomputed (compile-only)."""
  from analysis.paper_numbers import TABLE1, TABLE1_BATCH
  return [{**p, **conv_layer_cost(batch or TABLE1_BATCH, p["resolution"], p["channels"])}
          for p in TABLE1]


def format_table1(rows: list[dict]) -> str:
  cols = ("layer", "kernel", "feature map", "FLOPs (XLA)", "2·N·H·W·C²·k²", "MACs",
          "XLA args / output", "paper: kernel, map, TFLOPs")
  body = [(r["layer"].replace("B,", f"{r['batch']},"),
           f"{_bytes(r['kernel_bytes'])} ({_bytes(r['kernel_bytes_f32'])} f32)",
           _bytes(r["feature_map_bytes"]), _si(r["flops_xla"]), _si(r["flops_analytic"]),
           f"{_si(r['macs'])} = {r['macs'] / 2 ** 40:.2f} Ti",
           f"{_bytes(r['xla_memory']['arguments'])} / {_bytes(r['xla_memory']['outputs'])}",
           f"{r['kernel_mb']:g} MB, {r['feature_map_gb']:g} GB, {r['tflops']:g}") for r in rows]
  widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
  r0 = rows[0]
  ratio = rows[1]["kernel_bytes"] / rows[0]["kernel_bytes"]
  bpw = r0["kernel_mb"] * 1e6 / (r0["kernel_bytes"] / 2)
  out = [f"Table 1 recomputed: one {r0['k']}x{r0['k']} convolution (SAME padding), batch "
         f"{r0['batch']}, {r0['dtype']}, compile-only (nothing allocated)", "",
         line(cols), line(["-" * w for w in widths]), *(line(b) for b in body), "",
         "- feature map: the layer's output in bfloat16, binary units: the paper's 16 GB and "
         "0.5 GB are these GiB.",
         "- FLOPs: XLA counts 2 per multiply-add and skips the taps that fall on SAME padding "
         "(hence a little under 2·N·H·W·C²·k², more so at 16x16). The paper's '9' and '2.3' "
         "TFLOPs are multiply-adds in units of 2^40 (9.0 Ti, 2.25 Ti), i.e. half the FLOPs.",
         f"- kernel: {r0['k']}x{r0['k']}x{r0['channels']}x{r0['channels']} = "
         f"{r0['kernel_bytes'] // 2:,} weights = {_bytes(r0['kernel_bytes'])} in bfloat16. "
         f"SPEC's {r0['kernel_mb']:g} MB (and {rows[1]['kernel_mb']:g} MB) is 10x that (the "
         f"ratio between the rows, {ratio:.0f}x, is right); it would take {bpw:.0f} bytes a "
         "weight. A decimal slip in the paper or its transcription: 0.28 MiB and 18 MiB.",
         "- XLA args / output: XLA's memory analysis of the compiled layer (input + kernel / "
         "output), per device."]
  return "\n".join(out) + "\n"


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
