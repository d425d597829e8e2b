"""A cost report (analysis.cost) as text, CSV and files: the table printed per arm, the CSV of
numbers, and results/cost/<sweep>_<tier>.{json,csv}.
"""
from __future__ import annotations

import csv
import io
import math
import os

from analysis.xla_cost import MEMORY_FORMULA
from core.runio import write_json_atomic, write_text_atomic


# --- output --------------------------------------------------------------------------------

def fmt_bytes(n) -> str:
  if n is None or not math.isfinite(n):
    return ""
  for div, unit in ((2 ** 40, "TiB"), (2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
    if abs(n) >= div:
      return f"{n / div:.3g} {unit}"
  return f"{n:.0f} B"


def fmt_si(n, unit: str = "") -> str:
  if n is None or not math.isfinite(n):
    return ""
  for div, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= div:
      return f"{n / div:.3g} {p}{unit}"
  return f"{n:.3g} {unit}".rstrip()


def fmt_pct(x) -> str:
  return f"{x:.0f}%" if x is not None and math.isfinite(x) else ""


def fmt_num(x, fmt: str) -> str:
  return format(x, fmt) if x is not None and math.isfinite(x) else ""


TABLE_COLUMNS = ("group", "arm", "params", "FLOPs/img", "memory/dev", "step s", "img/s",
                 "speed", "FLOP speed", "paper", "train FLOPs", "train h", "eval FLOPs",
                 "eval h", "mode")


def table_rows(report: dict) -> list[dict[str, str]]:
  return [{"group": r["group"], "arm": r["arm"], "params": fmt_si(r["params"]),
           "FLOPs/img": fmt_si(r["flops_per_image"]), "memory/dev": fmt_bytes(r["memory"]["peak"]),
           "step s": fmt_num(r["step_s"], ".3g"), "img/s": fmt_num(r["img_per_s"], ".3g"),
           "speed": fmt_pct(r["speed_pct"]), "FLOP speed": fmt_pct(r["flops_speed_pct"]),
           "paper": fmt_pct(r["paper_speed_pct"]), "train FLOPs": fmt_si(r.get("train_flops")),
           "train h": fmt_num(r.get("train_time_h"), ".3g"), "eval FLOPs": fmt_si(r.get("eval_flops")),
           "eval h": fmt_num(r.get("eval_time_h"), ".3g"), "mode": r["mode"]}
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
              f"- in all: training {fmt_si(tot('train_flops'))}FLOP, {tot('train_time_h'):.3g} h; "
              f"evaluation {fmt_si(tot('eval_flops'))}FLOP, {tot('eval_time_h'):.3g} h."]
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
