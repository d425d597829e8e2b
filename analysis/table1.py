"""The paper's table 1 recomputed: the cost of one 3x3 convolution layer at two resolutions
(docs/paper.md table 1), compile-only, XLA's FLOPs and memory beside the analytic counts.

    python -m analysis.cost --table1
"""
from __future__ import annotations

from typing import Optional

from analysis.cost_report import fmt_bytes, fmt_si
from analysis.xla_cost import cost_value, memory_figures


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
          "flops_xla": cost_value(lowered.cost_analysis()), "xla_memory": mem}


def table1(batch: Optional[int] = None) -> list[dict]:
  """The two layers of the paper's table 1 (docs/paper.md), recomputed (compile-only)."""
  from analysis.paper_numbers import TABLE1, TABLE1_BATCH
  return [{**p, **conv_layer_cost(batch or TABLE1_BATCH, p["resolution"], p["channels"])}
          for p in TABLE1]


def format_table1(rows: list[dict]) -> str:
  cols = ("layer", "kernel", "feature map", "FLOPs (XLA)", "2·N·H·W·C²·k²", "MACs",
          "XLA args / output", "paper: kernel, map, TFLOPs")
  body = [(r["layer"].replace("B,", f"{r['batch']},"),
           f"{fmt_bytes(r['kernel_bytes'])} ({fmt_bytes(r['kernel_bytes_f32'])} f32)",
           fmt_bytes(r["feature_map_bytes"]), fmt_si(r["flops_xla"]), fmt_si(r["flops_analytic"]),
           f"{fmt_si(r['macs'])} = {r['macs'] / 2 ** 40:.2f} Ti",
           f"{fmt_bytes(r['xla_memory']['arguments'])} / {fmt_bytes(r['xla_memory']['outputs'])}",
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
         f"{r0['kernel_bytes'] // 2:,} weights = {fmt_bytes(r0['kernel_bytes'])} in bfloat16. "
         f"Table 1's {r0['kernel_mb']:g} MB (and {rows[1]['kernel_mb']:g} MB) is 10x that (the "
         f"ratio between the rows, {ratio:.0f}x, is right); it would take {bpw:.0f} bytes a "
         "weight. A decimal slip in the paper or its transcription: 0.28 MiB and 18 MiB.",
         "- XLA args / output: XLA's memory analysis of the compiled layer (input + kernel / "
         "output), per device."]
  return "\n".join(out) + "\n"
