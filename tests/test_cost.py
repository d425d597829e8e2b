"""analysis.cost: XLA FLOPs against analytic counts, the per-arm report, compile-only mode."""
import gc
import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

from analysis import cost, cost_report, make_tables, table1, xla_cost
from analysis.results import load_sweep
from core.runio import write_json_atomic
from sweeps.spec import expand

SDS = jax.ShapeDtypeStruct

TINY_SWEEP = """
name: tinycost
table: "4"
title: tiny cost sweep
reference: "4+5"
base:
  resolution: 16
  model: {preset: unet_tiny}
  data: {source: shapes, num_classes: 10, size: 64}
  train: {batch_size: 8, steps: 1}
arms:
  - {label: "2+3", group: "128", paper: "4/{group}/{label}", set: {model.num_res_blocks: [1, 1]}}
  - {label: "4+5", group: "128", paper: "4/{group}/{label}", set: {model.num_res_blocks: [1, 2]}}
  - {label: "2+3 s7", group: "128", set: {model.num_res_blocks: [1, 1], sampler.steps: 7}}
tiers:
  smoke: {scale: 1}
"""


def test_conv_flops_from_xla_equal_the_analytic_count():
  n, h, c = 2, 64, 8
  r = table1.conv_layer_cost(batch=n, res=h, channels=c, dtype="float32")
  assert r["flops_analytic"] == 2 * h * h * c * c * 3 * 3 * n
  assert r["flops_xla"] == pytest.approx(r["flops_analytic"], rel=0.03)
  # Exactly: XLA skips the taps on SAME padding, (3 H - 2)^2 instead of 9 H^2 per channel pair.
  assert r["flops_xla"] == 2 * n * c * c * (3 * h - 2) ** 2
  assert r["xla_memory"]["outputs"] == r["feature_map_bytes"] == n * h * h * c * 4


def test_scan_bodies_are_counted_once_per_iteration():
  m, k = 16, 32
  mm = 2 * m * k * k
  one = lambda h, w: (h @ w, None)
  f = lambda x, ws: jax.lax.scan(one, x, ws)[0]
  tr = jax.jit(f).trace(SDS((m, k), jnp.float32), SDS((6, k, k), jnp.float32))
  assert xla_cost.cost_value(tr.lower().cost_analysis()) == pytest.approx(mm, rel=0.01)  # XLA alone
  assert xla_cost.traced_flops(tr) == pytest.approx(6 * mm, rel=0.01)
  nested = lambda x, ws: jax.lax.scan(lambda h, w: (f(h, w), None), x, ws)[0]
  tr = jax.jit(nested).trace(SDS((m, k), jnp.float32), SDS((3, 4, k, k), jnp.float32))
  assert xla_cost.traced_flops(tr) == pytest.approx(12 * mm, rel=0.01)


def test_table1_recomputed_and_printed(capsys):
  rows = table1.table1()
  big, small = rows
  assert big["feature_map_bytes"] == 16 * 2 ** 30 and small["feature_map_bytes"] == 2 ** 29
  assert big["macs"] / 2 ** 40 == pytest.approx(9.0) and small["macs"] / 2 ** 40 == pytest.approx(2.25)
  assert big["kernel_bytes"] == 3 * 3 * 128 * 128 * 2   # not table 1's 2.8 MB (docs/paper.md §6)
  assert big["flops_xla"] == pytest.approx(big["flops_analytic"], rel=0.01)
  assert cost.main(["--table1"]) == 0
  out = capsys.readouterr().out
  assert "9.00 Ti" in out and "2.8 MB" in out and "decimal slip" in out


def test_relative_speed_against_the_first_arm_of_each_group():
  rows = [{"group": g, "arm": a, "measured": m, "img_per_s": v, "flops_per_image": f}
          for g, a, m, v, f in [("1", "a", True, 10.0, 4.0), ("1", "b", True, 5.0, 8.0),
                                ("2", "c", True, 2.0, 2.0), ("2", "d", False, math.nan, 1.0)]]
  cost.relative_speeds(rows, None)
  assert [r["speed_pct"] for r in rows[:3]] == [100.0, 50.0, 100.0]
  assert math.isnan(rows[3]["speed_pct"])              # only compiled: no measured speed
  assert [r["flops_speed_pct"] for r in rows] == [100.0, 50.0, 100.0, 200.0]
  cost.relative_speeds(rows, 1)                        # a sweep's `reference:` arm
  assert [r["speed_pct"] for r in rows[:3]] == [200.0, 100.0, 40.0]


def test_sweep_report_rows_reference_files_and_tables(tmp_path):
  path = tmp_path / "tinycost.yaml"
  path.write_text(TINY_SWEEP)
  opts = cost.CostOptions(measure_steps=1, warmup=1)
  rep = cost.sweep_cost(str(path), "smoke", opts=opts, log=lambda s: None)
  rows = rep["rows"]
  # "2+3 s7" differs only in sampling: it shares the trained model and row of "2+3".
  assert [[a["arm"] for a in r["arms"]] for r in rows] == [["2+3", "2+3 s7"], ["4+5"]]
  assert rep["reference"] == "4+5" and rep["devices"] == len(jax.devices())
  for r in rows:
    assert r["params"] > 0 and r["flops_per_image"] > 0 and r["memory"]["peak"] > 0
    assert r["measured"] and r["img_per_s"] > 0 and r["steps_timed"] == 1
  assert rows[1]["speed_pct"] == 100.0 and rows[1]["flops_speed_pct"] == 100.0
  assert rows[0]["params"] < rows[1]["params"] and rows[0]["flops_speed_pct"] > 100.0
  assert [r["paper_speed_pct"] for r in rows] == [114.0, 100.0]   # table 4's labels
  text = cost_report.format_report(rep)
  assert "2+3 / 2+3 s7" in text and "measured" in text

  results = tmp_path / "results"
  paths = cost_report.write_report(rep, str(results / "cost"))
  assert [os.path.basename(p) for p in paths] == ["tinycost_smoke.json", "tinycost_smoke.csv"]
  back = json.loads(open(paths[0]).read())   # strict JSON: no NaN
  assert back["rows"][1]["speed_pct"] == 100.0
  assert open(paths[1]).read().splitlines()[0].startswith("group,arm,run_ids")
  # make_tables takes its speed column from the cost file, for arms not trained yet too.
  meta, _ = expand(str(path), "smoke", seeds=1)
  write_json_atomic(str(results / "tinycost_smoke" / "sweep.json"), meta)
  t = make_tables.build_table(load_sweep(str(results / "tinycost_smoke")))
  speeds = dict(zip(t.display["arm"], t.display["speed"]))
  assert speeds["4+5"] == "100%" and speeds["2+3"] == speeds["2+3 s7"] != ""
  assert any("analysis.cost" in n for n in t.notes)


def _live_bytes():
  gc.collect()
  return {id(a): a.nbytes for a in jax.live_arrays()}


def test_compile_only_allocates_nothing_and_says_so():
  before = _live_bytes()
  # No measuring where the step would not fit (1 KiB free), and never with --compile-only.
  fit = cost.preset_cost("uvit_tiny", 16, cost.CostOptions(batch=8, memory_limit=1024.0),
                         log=lambda s: None)
  new = {k: v for k, v in _live_bytes().items() if k not in before}
  assert sum(new.values()) < 1024, "compile-only allocated arrays"
  (r,) = fit["rows"]
  assert not r["measured"] and r["mode"].startswith("compiled (needs")
  assert r["flops_per_image"] > 0 and r["memory"]["peak"] > r["memory"]["arguments"] > 0
  assert math.isnan(r["img_per_s"]) and math.isnan(r["speed_pct"])
  assert "compiled (needs" in cost_report.format_report(fit)


def test_evaluation_cost_counts_samples_steps_and_guidance_passes(tmp_path):
  """Per model, the FLOPs of its runs' evaluations and predicted hours."""
  from core.config import replace
  _, runs = expand(os.path.join(os.path.dirname(__file__), "..", "ablations", "guidance.yaml"),
                   "smoke")
  plain, guided = runs[0].config, runs[1].config
  assert plain.sampler.guidance_scale == 1.0 and guided.sampler.guidance_scale != 1.0
  fwd = cost.forward_flops(plain)
  assert fwd > 0
  n, steps = plain.eval.num_samples, plain.sampler.steps
  assert cost.eval_cost(plain)["eval_flops"] == pytest.approx(n * steps * fwd, rel=1e-9)
  assert cost.eval_cost(guided)["eval_flops"] == pytest.approx(2 * n * steps * fwd, rel=1e-9)
  more = replace(plain, **{"eval.num_samples": 3 * n, "sampler.steps": 2 * steps})
  assert cost.eval_cost(more)["eval_flops"] == pytest.approx(6 * n * steps * fwd, rel=1e-9)
  hw = cost.Hardware(chips=4, tflops=100.0, utilisation=0.5)
  assert hw.seconds(2e14) == pytest.approx(1.0)
  # A sweep's rows: a model whose runs sample at two scales pays for both evaluations.
  path = tmp_path / "g.yaml"
  path.write_text(TINY_SWEEP)
  rep = cost.sweep_cost(str(path), "smoke", opts=cost.CostOptions(measure=False),
                        log=lambda s: None, hardware=hw)
  r = rep["rows"][0]
  assert len(r["evals"]) == 2 and r["eval_flops"] == sum(e["eval_flops"] for e in r["evals"])
  assert r["train_flops"] == pytest.approx(r["flops_step"] * 1)   # the file trains 1 step
  assert r["eval_time_h"] == pytest.approx(hw.seconds(r["eval_flops"]) / 3600)
  assert "eval h" in cost_report.format_report(rep)
