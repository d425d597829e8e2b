"""python -m analysis.make_figures RESULTS [--out DIR] [--with-paper | --no-paper]

Paper-style figures, PNG and PDF of each, into RESULTS/figures/ (or --out):
  schedules          logSNR(t): cosine, shifted (eq. 5) at several noise_d, interpolated (eq. 6)
  noise_512          one 512x512 image noised at several t, cosine vs shifted schedule
  <sweep>_guidance   FID and IS against guidance scale (sweeps whose runs vary it)
  <sweep>_shift      FID against the schedule's shift in nats of logSNR, one line per resolution,
                     the optimum the content resolution predicts marked (sweeps that vary it)
  <sweep>_<run>_ema  FID, FID @content and bits/dim against the EMA length sigma_rel of a run
                     evaluated at several post-hoc EMA lengths (core.evaluate RUN_DIR
                     ema.sigma_rel=...), the run's own EMA marked at its equivalent sigma_rel
  <sweep>_loss       smoothed training loss and FID against steps, per arm
  <sweep>_curves     learning curves (eval.every: the oracle's class accuracy and FD, FID
                     @content where asked) against steps, an arm's seeds as a band
  <sweep>_scene      the scene parameters the oracle reads from each arm's samples vs real
  <sweep>_weighting  each arm's objective as an eps-space weighting over the content's logSNR
                     (loss weight x schedule density), for sweeps whose arms differ there
  <sweep>_samples    every arm's samples.png, tiled with its label
The first two are pure maths and always drawn; the others come from each sweep folder under
RESULTS (docs/results_layout.md), skipped where a sweep has nothing to draw yet. A RESULTS
folder without sweeps draws only the first two and exits 0; a missing RESULTS is an error (2).

Every function returns a matplotlib Figure built without pyplot, so the notebook can show it
inline and the command line can save it under the Agg backend.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from typing import Optional, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import paper_numbers
from analysis.results import (Sweep, arm_summary, ema_length_records, finite, group_label,
                              load_results, make_out_dir, readable_results, run_curve,
                              run_metrics, varies_guidance)

NOISE_TS = (0.2, 0.4, 0.6, 0.8)
SHAPES_INDEX = 1      # a triangle over a gradient: large shapes make lost signal easy to see


@contextlib.contextmanager
def style():
  with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.15):
    yield


def _plain_log(ax, axis: str = "y") -> None:
  """Log scale with plain numbers (0.2, 30) rather than 2x10^-1."""
  from matplotlib.ticker import FuncFormatter
  getattr(ax, f"set_{axis}scale")("log")
  a = ax.yaxis if axis == "y" else ax.xaxis
  a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  # minor ticks: label only 2x and 5x a power of ten, so that labels never crowd
  def minor(v, _):
    if v <= 0:
      return ""
    m = v / 10 ** math.floor(math.log10(v))
    lo, hi = sorted(a.get_view_interval())
    keep = range(2, 10) if lo > 0 and hi / lo < 6 else (2, 5)   # narrow range: all of them
    return f"{v:g}" if abs(m - round(m)) < 1e-6 and round(m) in keep else ""
  a.set_minor_formatter(FuncFormatter(minor))


def _log_if_wide(ax, ratio: float = 3.0) -> None:
  """Log y where the data span a factor `ratio` or more; linear otherwise (a narrow log axis
  has no ticks between powers of ten)."""
  lo, hi = ax.dataLim.intervaly
  if lo > 0 and np.isfinite(hi) and hi / lo >= ratio:
    _plain_log(ax)


def suptitle(fig: Figure, text: str, fontsize: float = 12.0) -> None:
  """fig's title, each line wrapped to the figure's width (a one-column figure would cut a
  sweep's long title at both edges)."""
  import textwrap
  width = max(30, int(fig.get_figwidth() * 120 / fontsize))   # characters at that size
  fig.suptitle("\n".join(textwrap.fill(line, width, break_on_hyphens=False)
                         for line in text.split("\n")),
               fontsize=fontsize)


def save(fig: Figure, out_dir: str, name: str) -> list[str]:
  """name.png (150 dpi) and name.pdf."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for ext in ("png", "pdf"):
    p = os.path.join(out_dir, f"{name}.{ext}")
    fig.savefig(p, dpi=150 if ext == "png" else None)
    paths.append(p)
  return paths


# --- (1) schedules ---------------------------------------------------------------------

def schedule_curves(resolution: int = 512, noise_ds: Sequence[int] = (256, 128, 64, 32),
                    interp: tuple[int, int] = (32, 256), n: int = 401) -> dict:
  """{"t", "cosine", "shift <d>" for d in noise_ds, "interpolated <lo>-<hi>"} as numpy."""
  from core.diffusion.schedules import logsnr_cosine, logsnr_interpolated, logsnr_shifted
  t = np.linspace(0.0, 1.0, n)
  out = {"t": t, "cosine": np.asarray(logsnr_cosine(t))}
  for d in noise_ds:
    out[f"shift {d}"] = np.asarray(logsnr_shifted(t, resolution, d))
  lo, hi = interp
  out[f"interpolated {lo}-{hi}"] = np.asarray(logsnr_interpolated(t, resolution, lo, hi))
  return out


def schedule_figure(resolution: int = 512, noise_ds: Sequence[int] = (256, 128, 64, 32),
                    interp: tuple[int, int] = (32, 256)) -> Figure:
  c = schedule_curves(resolution, noise_ds, interp)
  t = c["t"]
  lo, hi = interp
  with style():
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    pal = sns.color_palette("viridis", len(noise_ds))
    ax1.plot(t, c["cosine"], color="k", lw=2, label=f"cosine (= shift {resolution})")
    for col, d in zip(pal, noise_ds):
      ax1.plot(t, c[f"shift {d}"], color=col, lw=1.6, label=f"shift {d}")
    ax1.set_title(f"Shifted cosine schedules at {resolution}×{resolution} (eq. 5)")
    ax2.plot(t, c["cosine"], color="k", lw=1, ls=":", label="cosine")
    ax2.plot(t, c[f"shift {hi}"], color=pal[0], lw=1.4, ls="--", label=f"shift {hi}")
    ax2.plot(t, c[f"shift {lo}"], color=pal[-1], lw=1.4, ls="--", label=f"shift {lo}")
    ax2.plot(t, c[f"interpolated {lo}-{hi}"], color="C3", lw=2.2,
             label=f"interpolated: shift {hi} at t=0 → shift {lo} at t=1")
    ax2.set_title(f"Interpolated schedule at {resolution}×{resolution} (eq. 6)")
    for ax in (ax1, ax2):
      ax.axhline(0, color="0.5", lw=0.8)
      ax.set_xlabel("t")
      ax.set_xlim(0, 1)
      ax.legend(loc="upper right", fontsize=8.5, frameon=True)
    ax1.set_ylabel("logSNR(t)")
    suptitle(fig, "Noise schedules as logSNR against diffusion time")
  return fig


# --- (2) the same image noised under two schedules -------------------------------------

def noise_image(resolution: int = 512) -> np.ndarray:
  """A deterministic test image in [-1, 1], (res, res, 3): a shapes scene, or a numpy pattern."""
  try:
    from core.data import shapes
    img = shapes.ShapesSource(max(SHAPES_INDEX + 1, 8), resolution, "train")[SHAPES_INDEX]["image"]
    return img.astype(np.float32) / 127.5 - 1.0
  except Exception:  # core.data.shapes absent or changed: a smooth pattern with a hard-edged disc
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    r = np.hypot(x - 0.55, y - 0.45)
    img = np.stack([0.8 * x - 0.4, 0.5 * np.cos(6 * np.pi * y) * (1 - x), 0.6 - y], -1)
    img[r < 0.22] = (0.9, 0.7, -0.6)
    return np.clip(img, -1, 1).astype(np.float32)


def _pool(a: np.ndarray, s: int) -> np.ndarray:
  h = a.shape[0]
  f = h // s
  return a[:s * f, :s * f].reshape(s, f, s, f, -1).mean(axis=(1, 3))


def noise_signal(x: np.ndarray, ts: Sequence[float] = NOISE_TS, noise_d: int = 64,
                 pool_to: int = 64, seed: int = 0) -> dict:
  """The image noised at each t under the cosine and the shifted schedule, same noise.

  Returns {"cosine"|"shifted": {"z": [...], "logsnr": [...], "signal": [...]}}, where signal
  is the correlation between the clean and the noised image after average pooling to
  pool_to x pool_to: how much of the image's low-frequency content survives at that t
  (the paper's argument: at high resolution the cosine schedule leaves it largely intact).
  """
  from core.diffusion.process import q_sample
  from core.diffusion.schedules import logsnr_cosine, logsnr_shifted
  res = x.shape[0]
  eps = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
  xp = _pool(x, pool_to).ravel()
  out = {}
  for name, fn in (("cosine", lambda t: logsnr_cosine(t)),
                   ("shifted", lambda t: logsnr_shifted(t, res, noise_d))):
    zs, ls, sig = [], [], []
    for t in ts:
      l = fn(np.float32(t))
      z = np.asarray(q_sample(x[None], eps[None], l[None]))[0]
      zs.append(z)
      ls.append(float(l))
      sig.append(float(np.corrcoef(xp, _pool(z, pool_to).ravel())[0, 1]))
    out[name] = {"z": zs, "logsnr": ls, "signal": sig}
  return out


def noise_figure(resolution: int = 512, ts: Sequence[float] = NOISE_TS, noise_d: int = 64,
                 pool_to: int = 64) -> tuple[Figure, dict]:
  """Rows: cosine and shifted schedule; columns: the clean image, then t in ts."""
  x = noise_image(resolution)
  sig = noise_signal(x, ts, noise_d, pool_to)
  show = lambda a: np.clip((a + 1) / 2, 0, 1)
  rows = (("cosine", "cosine"), ("shifted", f"shifted, noise_d = {noise_d}"))
  with style(), sns.axes_style("white"):
    fig = Figure(figsize=(2.3 * (len(ts) + 1), 2.3 * 2 + 1.3), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08)
    axes = fig.subplots(2, len(ts) + 1)
    for i, (key, label) in enumerate(rows):
      axes[i, 0].imshow(show(x))
      axes[i, 0].set_title("clean image" if i == 0 else "")
      axes[i, 0].set_ylabel(label, fontsize=11)
      for j, t in enumerate(ts):
        ax = axes[i, j + 1]
        ax.imshow(show(sig[key]["z"][j]))
        ax.set_title(f"t = {t:g}, logSNR = {sig[key]['logsnr'][j]:.1f}", fontsize=9)
        ax.set_xlabel(f"signal at {pool_to}²: ρ = {sig[key]['signal'][j]:.2f}", fontsize=9)
    for ax in axes.ravel():
      ax.set_xticks([])
      ax.set_yticks([])
    suptitle(fig, f"The same {resolution}×{resolution} image noised at equal t: the shifted "
                 f"schedule destroys more signal\n(ρ: correlation of noised and clean image "
                 f"average-pooled to {pool_to}×{pool_to})", fontsize=11)
  return fig, sig


# --- (3) guidance ----------------------------------------------------------------------

_GUIDANCE_TAIL = re.compile(r"[\s,;:=_-]*((guidance|cfg|scale|w)(_scale)?)?[\s,;:=_-]*[\d.]*$")


def _line_label(arms: Sequence[str]) -> str:
  """The arm labels' shared text without the guidance value ('shift 32, guidance 1.2' ->
  'shift 32'; '1.00', '2.00' -> '')."""
  pre = os.path.commonprefix(list(arms))
  return _GUIDANCE_TAIL.sub("", pre).strip()


def guidance_lines(sweep: Sweep) -> list[dict]:
  """One line per (group, arm without its guidance value): scales and aggregated numbers."""
  summ = arm_summary(sweep)
  summ = summ[summ["guidance_scale"].map(finite)]
  runs = sweep.runs.copy()
  # runs that differ in anything but the guidance scale make different lines
  runs["base"] = runs["values"].map(lambda v: repr(sorted(
      (k, repr(x)) for k, x in (v or {}).items() if k != "sampler.guidance_scale")))
  base_of = {(g, a): b for g, a, b in zip(runs["group"], runs["arm"], runs["base"])}
  lines: dict = {}
  for _, r in summ.iterrows():
    key = (r["group"], base_of.get((r["group"], r["arm"]), ""))
    lines.setdefault(key, []).append(r)
  out = []
  groups = {g for g, _ in lines}
  for (g, _), rs in lines.items():
    df = pd.DataFrame(rs)
    num = [c for c in df.columns if c not in ("group", "arm", "state", "run_ids")]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")   # rows of a mixed frame: objects
    df = df.sort_values("guidance_scale")
    base = _line_label(list(df["arm"]))
    label = (f"{g}: {base}" if base else g) if len(groups) > 1 or not base else base
    out.append({"group": g, "label": label, "df": df})
  return out


def guidance_figure(sweep: Sweep, with_paper: Optional[bool] = None) -> Optional[Figure]:
  if not varies_guidance(sweep):
    return None
  lines = guidance_lines(sweep)
  if not any((l["df"]["seeds"] > 0).any() for l in lines):
    return None
  paper = sweep.tier == "paper" if with_paper is None else with_paper
  panels = (("fid_train", "FID train"), ("fid_eval", "FID eval"), ("is_mean", "Inception score"))
  with style():
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    pal = sns.color_palette("deep", len(lines))
    for col, line in zip(pal, lines):
      df = line["df"][line["df"]["seeds"] > 0]
      for ax, (k, _) in zip(axes, panels):
        yerr = df[f"{k}_std"].where(df["seeds"] > 1)
        ax.errorbar(df["guidance_scale"], df[k], yerr=yerr.fillna(0).values, color=col,
                    marker="o", lw=1.8, capsize=3,
                    label=f"ours {line['label']}" if paper else line["label"])
      if paper:
        pts = [(s, paper_numbers.lookup(sweep.table, line["group"], f"{s:.2f}"))
               for s in line["df"]["guidance_scale"]]
        pts = [(s, p) for s, p in pts if p]
        for ax, (k, _) in zip(axes, panels):
          pp = [(s, p[k]) for s, p in pts if k in p]
          if pp:
            ax.plot(*zip(*pp), color=col, ls="--", marker="x", lw=1.2,
                    label=f"paper {line['label']}")
    for ax, (k, name) in zip(axes, panels):
      if k.startswith("fid"):
        _log_if_wide(ax)
      ax.set_xlabel("guidance scale (1 + η)")
      ax.set_ylabel(name)
      ax.set_title(name + (" (lower is better)" if k.startswith("fid") else " (higher is better)"))
      ys = [np.asarray(ln.get_ydata(), dtype=float) for ln in ax.get_lines()]
      if not any(np.isfinite(y).any() for y in ys):
        ax.text(0.5, 0.5, f"no {name} in eval.json", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    h, l = axes[0].get_legend_handles_labels()
    order = sorted(range(len(l)), key=lambda i: (l[i].split(" ", 1)[-1], l[i]))  # ours, paper
    by_res = all(ln["group"].isdigit() and ln["label"] == ln["group"] for ln in lines)
    axes[0].legend([h[i] for i in order], [l[i] for i in order], fontsize=8.5,
                   title="resolution" if by_res else None)
    suptitle(fig, f"{sweep.title} — {sweep.name}: FID and IS against guidance scale"
                 + (f" (dashed: the paper's table {sweep.table})" if paper else ""))
  return fig


# --- (3b) FID against the noise shift ---------------------------------------------------

def shift_lines(sweep: Sweep) -> list[dict]:
  """One line per group: each arm's logSNR shift (eq. 5: 2 ln(noise_d / resolution)), its
  resolution and content resolution, and its FID eval and FID @content (mean, 95% interval)."""
  runs = sweep.runs[sweep.runs["has_eval"] & sweep.runs["logsnr_shift"].map(finite)]
  if runs.empty or runs["logsnr_shift"].nunique() < 2:
    return []
  summ = arm_summary(sweep).set_index(["group", "arm"])
  out = []
  for g in dict.fromkeys(runs["group"]):
    sub = runs[runs["group"] == g]
    pts = []
    for a in dict.fromkeys(sub["arm"]):
      r, m = sub[sub["arm"] == a].iloc[0], summ.loc[(g, a)]
      pts.append({"arm": a, "shift": r["logsnr_shift"], "resolution": r["resolution"],
                  "content": r["content_resolution"],
                  **{k: m[k] for k in ("fid_eval", "fid_eval_ci95", "fid_content",
                                       "fid_content_ci95", "seeds")}})
    df = pd.DataFrame(pts).sort_values("shift")
    res, content = df["resolution"].iloc[0], df["content"].iloc[0]
    # the content's logSNR is the pixels' + 2 ln(res / content): cosine's at the content
    # resolution, the paper's 64-px reference here, needs shift -2 ln(res / content)
    predicted = -2 * math.log(res / content) if finite(content) and finite(res) else math.nan
    out.append({"group": g, "resolution": res, "content": content, "predicted": predicted,
                "df": df})
  return sorted(out, key=lambda l: l["resolution"] if finite(l["resolution"]) else 0)


def shift_figure(sweep: Sweep) -> Optional[Figure]:
  lines = shift_lines(sweep)
  if not lines:
    return None
  content = any(l["df"]["fid_content"].map(finite).any() for l in lines)
  panels = [("fid_eval", "FID eval at the trained resolution", False)]
  if content:
    panels.append(("fid_content", "FID eval at the content resolution", True))
  with style():
    fig = Figure(figsize=(6.2 * len(panels), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    pal = sns.color_palette("deep", len(lines))
    for ax, (k, title, rel) in zip(axes, panels):
      for col, ln in zip(pal, lines):
        df = ln["df"][ln["df"][k].map(finite)]
        if df.empty:
          continue
        # right panel: the shift of the content's logSNR, shift + 2 ln(res / content)
        x = df["shift"] - (ln["predicted"] if rel and finite(ln["predicted"]) else 0.0)
        ax.errorbar(x, df[k], yerr=df[f"{k}_ci95"].fillna(0).values, color=col, marker="o",
                    lw=1.8, capsize=3, label=f"{ln['resolution']:.0f} px")
        if finite(ln["predicted"]) and not rel:
          ax.axvline(ln["predicted"], color=col, ls=":", lw=1.4)
      if rel:
        ax.axvline(0.0, color="0.3", ls=":", lw=1.4)
      ax.set_xlabel("shift of the content's logSNR, shift + 2 ln(res / content) (nats)" if rel
                    else "shift of logSNR, 2 ln(noise_d / resolution) (nats; 0 = cosine)")
      ax.set_ylabel("FID eval (lower is better)")
      ax.set_title(title)
      _log_if_wide(ax)
      ax.legend(fontsize=9, title="resolution")
    c = sorted({f"{l['content']:.0f}" for l in lines if finite(l["content"])})
    suptitle(fig, f"{sweep.title} — {sweep.name}: FID against the noise shift"
                 + (f" (dotted: the optimum predicted from {', '.join(c)}-px content; "
                    "bars: 95% intervals over seeds)" if c else ""), fontsize=10)
  return fig


# --- (3c) metrics against the EMA length (post-hoc EMA) --------------------------------

EMA_PANELS = (("fid_eval", "FID eval", None), ("fid_content", "FID eval @content", None),
              ("bpd_eval", "bits/dim eval (the bound)", "bpd_eval_se"))


def ema_length_figure(run_dir: str, title: str = "") -> Optional[Figure]:
  """FID eval, FID @content and bits/dim against the EMA length sigma_rel of one run: its
  post-hoc EMA evaluations (core.evaluate ... ema.sigma_rel=...) as a line, and the run's own
  EMA (eval.json) as a star at its equivalent sigma_rel. None below two post-hoc points."""
  df = ema_length_records(run_dir)
  if df.empty or int(df["post_hoc"].sum()) < 2:
    return None
  panels = [p for p in EMA_PANELS if df[p[0]].map(finite).any()]
  ph, own = df[df["post_hoc"]], df[~df["post_hoc"]]
  with style():
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (k, label, se) in zip(axes, panels):
      yerr = ph[se].fillna(0).values if se else None
      ax.errorbar(ph["sigma_rel"], ph[k], yerr=yerr, color="C0", marker="o", lw=1.8,
                  capsize=3, label="post-hoc EMA (power function)")
      if len(own) and finite(own[k].iloc[0]):
        o = own.iloc[0]
        ax.errorbar([o["sigma_rel"]], [o[k]], yerr=[o[se]] if se and finite(o[se]) else None,
                    color="C3", marker="*", ms=13, ls="none", capsize=3,
                    label=f"the run's own EMA (σ_rel ≈ {o['sigma_rel']:.3f})")
        ax.axvline(o["sigma_rel"], color="C3", ls=":", lw=1.2)
      ax.set_xlabel("EMA length σ_rel (std of its weights / run length)")
      ax.set_ylabel(label + ", lower is better")
      ax.legend(fontsize=8)
    n = df["num_samples"].iloc[0]
    suptitle(fig, (title or os.path.basename(os.path.normpath(run_dir)))
                 + f": metrics against the EMA length\n{n:.0f} samples a point, the same noise "
                 "and images at every point; bars: the bound's standard error over images",
                 fontsize=10)
  return fig


def ema_length_figures(sweep: Sweep) -> dict[str, Figure]:
  """<sweep>_<run_id>_ema for each run evaluated at two or more post-hoc EMA lengths."""
  out = {}
  for rid, d in zip(sweep.runs["run_id"], sweep.runs["dir"]):
    fig = ema_length_figure(d, f"{sweep.name} {rid}")
    if fig is not None:
      out[f"{sweep.name}_{rid}_ema"] = fig
  return out


# --- (4) training curves ---------------------------------------------------------------

def _smooth(y: pd.Series) -> pd.Series:
  span = max(1, len(y) // 15)
  return y.ewm(span=span, adjust=True).mean() if span > 1 else y


def training_curves(sweep: Sweep) -> list[dict]:
  """Per run with metrics: its arm name, training rows and FID rows (eval rows + eval.json).
  Runs with identical training curves (shared models, e.g. guidance scales) are merged."""
  runs = sweep.runs
  ngroups = runs["group"].nunique() if len(runs) else 0
  out: list[dict] = []
  seen: dict = {}
  for _, r in runs.iterrows():
    if r["state"] == "missing":
      continue
    train = run_metrics(r["dir"])
    fid = pd.DataFrame(columns=["step", "fid_train"])
    if finite(r["fid_train"]):
      step = r["eval_step"] if finite(r["eval_step"]) else (
          train["step"].max() if len(train) else 0)
      fid = pd.concat([fid, pd.DataFrame({"step": [step], "fid_train": [r["fid_train"]]})])
    fid = fid.drop_duplicates("step", keep="last").sort_values("step")
    if not len(train) and not len(fid):
      continue
    name = (r["group"], r["arm"])
    if len(train):
      key = (tuple(train["step"]), tuple(np.round(train["loss"].astype(float), 7)))
      if key in seen:   # same trained model: one loss curve, each run's own FIDs
        c = seen[key]
        c["names"].append(name)
        c["fids"].append((r["arm"], fid))
        continue
    c = {"names": [name], "ngroups": ngroups, "arm": (r["group"], r["arm"]), "seed": r["seed"],
         "train": train, "fids": [(r["arm"], fid)], "state": r["state"]}
    if len(train):
      seen[key] = c
    out.append(c)
  return out


def _join_names(names: list[tuple[str, str]], ngroups: int, n: int = 5) -> str:
  """[("128", "1.00"), ("128", "1.40")] -> "128: 1.00, 1.40" (runs sharing one curve)."""
  names = list(dict.fromkeys(names))
  arms = [a for _, a in names]
  text = ", ".join(arms[:n]) + (f" (+{len(arms) - n})" if len(arms) > n else "")
  groups = list(dict.fromkeys(g for g, _ in names))
  if ngroups > 1 and groups[0]:
    return f"{'/'.join(groups)}: {text}"
  return text


_SEED_STYLES = ("-", "--", ":", "-.")


def training_figure(sweep: Sweep) -> Optional[Figure]:
  curves = training_curves(sweep)
  if not curves:
    return None
  arms = list(dict.fromkeys(c["arm"] for c in curves))
  pal = dict(zip(arms, sns.color_palette("tab10" if len(arms) <= 10 else "husl", len(arms))))
  with style():
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    labelled, seeds = set(), set()
    for c in curves:
      col = pal[c["arm"]]
      # colour names the arm, line style the seed (a key of its own below): one legend entry
      # per arm, so that a 3-seed sweep of nine arms still fits beside the axes
      label = _join_names(c["names"], c["ngroups"])
      if label in labelled:
        label = "_" + label
      ls = _SEED_STYLES[int(c["seed"]) % 4]
      seeds.add(int(c["seed"]))
      tr = c["train"]
      if len(tr):
        loss = tr["loss"].astype(float)
        ax1.plot(tr["step"], loss, color=col, alpha=0.2, lw=0.8)
        ax1.plot(tr["step"], _smooth(loss), color=col, ls=ls, lw=1.8, label=label)
        if c["state"] != "done":
          ax1.annotate(c["state"], (tr["step"].iloc[-1], _smooth(loss).iloc[-1]),
                       fontsize=8, color=col, xytext=(3, 0), textcoords="offset points")
      ends: dict = {}
      for arm, fid in c["fids"]:
        if not len(fid):
          continue
        ax2.plot(fid["step"], fid["fid_train"], color=col, ls=ls, marker="o", lw=1.6,
                 label=label)
        end = (float(fid["step"].iloc[-1]), round(float(fid["fid_train"].iloc[-1]), 6))
        ends.setdefault(end, []).append(arm)
      if len(c["fids"]) > 1:   # several runs share this colour: name each final point
        for (x, y), arms in ends.items():
          ax2.annotate(", ".join(arms), (x, y), fontsize=8, color=col, xytext=(4, 0),
                       textcoords="offset points", va="center")
      labelled.add(label)
    _log_if_wide(ax1)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("training loss (EMA-smoothed; raw faint)")
    ax1.set_title("Training loss")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("FID train")
    ax2.set_title("FID against training steps")
    if ax2.has_data():
      _log_if_wide(ax2)
    else:
      ax2.text(0.5, 0.5, "no FID yet", ha="center", va="center", transform=ax2.transAxes)
    h, l = ax1.get_legend_handles_labels()
    if not h:
      h, l = ax2.get_legend_handles_labels()
    if len(seeds) > 1:
      for seed in sorted(seeds):
        h.append(Line2D([], [], color="0.4", ls=_SEED_STYLES[seed % 4], lw=1.8))
        l.append(f"seed {seed}")
    if len(h) > 8:
      fig.legend(h, l, loc="outside right upper", fontsize=8, title="arm")
    elif h:
      ax1.legend(h, l, fontsize=8.5, title="arm")
    for ax in (ax1, ax2):
      ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    steps = {float(x) for c in curves for _, f in c["fids"] for x in f["step"]}
    if len(steps) == 1:   # every FID at one step: one tick there, not a fractional axis
      ax2.set_xticks(sorted(steps))
    suptitle(fig, f"{sweep.title} — {sweep.name}: training")
  return fig


# --- the objectives' weighting over noise levels -------------------------------------------

def weighting_lines(sweep: Sweep) -> list[dict]:
  """Per (group, arm), from its first run's config.yaml: the eps-space weighting of its
  objective over logSNR (core.diffusion.process.objective_weighting: loss weight x schedule density),
  on the axis of the content's logSNR (logsnr + 2 ln(resolution / content resolution): what
  an s x s block mean of upsampled content sees). Empty unless the arms differ in schedule,
  loss or prediction."""
  import yaml
  from core.config import ExperimentConfig, from_dict
  from core.diffusion.process import objective_weighting
  from core.diffusion.schedules import make_schedule
  from core.data.sources import content_resolution
  seen, out, kinds = set(), [], set()
  for _, r in sweep.runs.iterrows():
    p = os.path.join(r["dir"], "config.yaml")
    if (r["group"], r["arm"]) in seen or not os.path.isfile(p):
      continue
    seen.add((r["group"], r["arm"]))
    with open(p) as f:
      cfg = from_dict(ExperimentConfig, yaml.safe_load(f))
    kinds.add((json_key(cfg.schedule), json_key(cfg.loss), cfg.model.prediction,
               cfg.resolution))
    lam, dens = objective_weighting(cfg.loss, make_schedule(cfg.schedule, cfg.resolution),
                                    num=20001)
    c = content_resolution(cfg.data, cfg.resolution)
    shift = 2.0 * math.log(cfg.resolution / c) if cfg.resolution % c == 0 else 0.0
    cum = np.cumsum(dens * np.gradient(lam))
    out.append({"group": r["group"], "arm": r["arm"], "content_logsnr": lam + shift,
                "density": dens, "median": float(lam[np.searchsorted(cum, cum[-1] / 2)] + shift),
                "loss": cfg.loss.name + (f" (cap {cfg.loss.weight_cap:g})"
                                         if cfg.loss.weight_cap else ""),
                "prediction": cfg.model.prediction, "multiscale": cfg.loss.multiscale})
  varies = len({k[:3] for k in kinds}) > 1
  return out if varies else []


def json_key(section) -> str:
  import json
  from core.config import to_dict
  return json.dumps(to_dict(section), sort_keys=True)


def weighting_figure(sweep: Sweep) -> Optional[Figure]:
  """The mechanism behind a schedule or loss ablation: each arm's eps-space weighting against
  the content's logSNR, one panel a group, its median marked (multiscale terms not drawn)."""
  lines = weighting_lines(sweep)
  if not lines:
    return None
  groups = list(dict.fromkeys(l["group"] for l in lines))
  arms = list(dict.fromkeys(l["arm"] for l in lines))
  pal = dict(zip(arms, sns.color_palette("tab10" if len(arms) <= 10 else "husl", len(arms))))
  with style():
    fig = Figure(figsize=(4.3 * len(groups) + 1, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
    for ax, g in zip(axes, groups):
      for l in (l for l in lines if l["group"] == g):
        ax.plot(l["content_logsnr"], l["density"], color=pal[l["arm"]], lw=1.6,
                label=f"{l['arm']}: {l['prediction']}, {l['loss']}"
                + (", +multiscale" if l["multiscale"] else "")
                + f" (median {l['median']:.1f})")
        ax.axvline(l["median"], color=pal[l["arm"]], ls=":", lw=1)
      ax.set_xlim(-20, 15)
      ax.set_xlabel("content logSNR = logSNR + 2 ln(res / content res)")
      ax.set_ylabel("weighting density w(λ) p(λ)")
      ax.set_title(f"group {group_label(sweep, g)}")
      ax.legend(fontsize=7)
    suptitle(fig, f"{sweep.name}: where each objective puts its weight\n(Kingma and Gao "
                 "2023: eps-space weight x the schedule's density of logSNR)")
  return fig


# --- learning curves and the oracle's reading ---------------------------------------------

CURVE_METRICS = (("class_acc", "class accuracy (oracle)", "floor_class_acc", 100.0),
                 ("fd_eval", "oracle FD", "floor_fd_eval", 1.0),
                 ("fid_content", "FID eval @content", None, 1.0))


def curve_lines(sweep: Sweep) -> pd.DataFrame:
  """Every run's learning-curve rows (core.curve) with its group, arm and seed."""
  parts = []
  for _, r in sweep.runs.iterrows():
    if r["state"] == "missing":
      continue
    c = run_curve(r["dir"])
    if len(c):
      parts.append(c.assign(group=r["group"], arm=r["arm"], seed=r["seed"]))
  return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def curve_figure(sweep: Sweep) -> Optional[Figure]:
  """Each metric of the learning curves against training steps, one panel a group and metric:
  an arm's mean over seeds as a line, the band its seeds' 95% t-interval (min to max with two
  seeds), the real data's figure dashed."""
  df = curve_lines(sweep)
  if not len(df):
    return None
  metrics = [m for m in CURVE_METRICS if m[0] in df and df[m[0]].notna().any()]
  groups = list(dict.fromkeys(df["group"]))
  arms = list(dict.fromkeys(df["arm"]))
  pal = dict(zip(arms, sns.color_palette("tab10" if len(arms) <= 10 else "husl", len(arms))))
  with style():
    fig = Figure(figsize=(4.2 * len(groups) + 1.5, 3.2 * len(metrics)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(metrics), len(groups), squeeze=False))
    for j, g in enumerate(groups):
      sub = df[df["group"] == g]
      for i, (m, name, floor, sc) in enumerate(metrics):
        ax = axes[i, j]
        for a in dict.fromkeys(sub["arm"]):
          d = sub[sub["arm"] == a].pivot_table(index="step", columns="seed", values=m)
          if d.empty:
            continue
          y = d * sc
          mean = y.mean(axis=1)
          n = y.notna().sum(axis=1)
          half = y.std(axis=1, ddof=1) * np.array([scipy_t(k) for k in n]) / np.sqrt(n)
          ax.plot(mean.index, mean, color=pal[a], lw=1.8, marker="o", ms=3,
                  label=f"{a} ({int(n.max())} seeds)")
          if (n > 1).any():
            ax.fill_between(mean.index, mean - half, mean + half, color=pal[a], alpha=0.2,
                            lw=0)
        if floor and floor in sub and sub[floor].notna().any():
          ax.axhline(sub[floor].mean() * sc, color="0.3", ls="--", lw=1,
                     label="real data")
        ax.set_xlabel("training step")
        ax.set_ylabel(name + (" (%)" if sc == 100.0 else ""))
        if sc == 100.0:   # an accuracy: its own scale, the band clipped to it
          ax.set_ylim(0, 100)
        if i == 0:
          ax.set_title(f"group {group_label(sweep, g)}")
        ax.legend(fontsize=7.5)
    suptitle(fig, f"{sweep.title} — {sweep.name}: learning curves (mean over seeds, band: "
                 "95% t-interval)")
  return fig


def scipy_t(n: int) -> float:
  """t(0.975, n - 1), NaN below two values."""
  import scipy.stats
  return float(scipy.stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


SCENE_PANELS = (("size", "size (of the image)"), ("centre_x", "centre x"),
                ("centre_y", "centre y"), ("shape_lum", "shape brightness"),
                ("bg_lum", "background brightness"))


def _scene_values(targets: np.ndarray, names: Sequence[str]) -> dict:
  t = np.asarray(targets, np.float32)
  col = {n: t[:, i] for i, n in enumerate(names)}
  col["shape_lum"] = (col["shape_r"] + col["shape_g"] + col["shape_b"]) / 3
  col["bg_lum"] = (col["bg_r"] + col["bg_g"] + col["bg_b"]) / 3
  return col


def scene_figure(sweep: Sweep) -> Optional[Figure]:
  """The scene parameters the oracle reads from each arm's samples (every seed's oracle.npz
  pooled) against the real images', one row a group: where the samples put the shape, how big,
  how bright, and the kinds it reads."""
  data: dict = {}
  for _, r in sweep.runs.iterrows():
    p = os.path.join(r["dir"], "oracle.npz")
    if not r["has_eval"] or not os.path.isfile(p):
      continue
    with np.load(p) as z:
      names = [str(x) for x in z["target_names"]]
      g = data.setdefault(r["group"], {"real": [], "arms": {}})
      g["arms"].setdefault(r["arm"], []).append(_scene_values(z["targets"], names))
      g["real"].append(_scene_values(z["real_targets"], names))
  if not data:
    return None
  arms = list(dict.fromkeys(a for g in data.values() for a in g["arms"]))
  pal = dict(zip(arms, sns.color_palette("tab10" if len(arms) <= 10 else "husl", len(arms))))
  with style():
    fig = Figure(figsize=(3.1 * len(SCENE_PANELS), 2.6 * len(data)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(data), len(SCENE_PANELS), squeeze=False))
    for i, (g, d) in enumerate(data.items()):
      for j, (k, name) in enumerate(SCENE_PANELS):
        ax = axes[i, j]
        real = np.concatenate([x[k] for x in d["real"][:1]])
        bins = np.linspace(min(0.0, real.min()), max(1.0 if k != "size" else 0.4, real.max()),
                           31)
        ax.hist(real, bins=bins, density=True, histtype="stepfilled", color="0.85",
                label="real")
        for a, vals in d["arms"].items():
          v = np.concatenate([x[k] for x in vals])
          ax.hist(v, bins=bins, density=True, histtype="step", color=pal[a], lw=1.5, label=a)
        ax.set_xlabel(name)
        ax.set_yticks([])
        if j == 0:
          ax.set_ylabel(f"group {group_label(sweep, g)}")
        if j == len(SCENE_PANELS) - 1:   # each row its own arms
          ax.legend(fontsize=7.5)
    suptitle(fig, f"{sweep.title} — {sweep.name}: scene parameters the oracle reads "
                 "(samples of every seed; grey: real images)")
  return fig


# --- (5) sample grids ------------------------------------------------------------------

def _read_image(path: str, max_side: int = 768) -> Optional[np.ndarray]:
  try:
    from PIL import Image
    from core.data.images import to_rgb8
    with Image.open(path) as im:
      im = to_rgb8(im)
      if max(im.size) > max_side:   # paper-tier grids are huge; a figure cell needs little
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))),
                       Image.LANCZOS)
      return np.asarray(im)
  except Exception:
    return None


def samples_figure(sweep: Sweep, max_cols: int = 8) -> Optional[Figure]:
  runs = sweep.runs
  if not len(runs) or runs["samples"].isna().all():
    return None
  summ = arm_summary(sweep)
  rows: list[list[tuple]] = []
  for g in dict.fromkeys(summ["group"]):
    arms = summ[summ["group"] == g]
    cells = []
    for _, a in arms.iterrows():
      sub = runs[(runs["group"] == g) & (runs["arm"] == a["arm"])].sort_values("seed")
      path = next((p for p in sub["samples"] if isinstance(p, str)), None)
      cells.append((g, a["arm"], path, a["state"]))
    rows += [cells[i:i + max_cols] for i in range(0, len(cells), max_cols)]
  ncols = max(len(r) for r in rows)
  with style(), sns.axes_style("white"):
    fig = Figure(figsize=(max(7.0, 2.3 * ncols), 2.5 * len(rows) + 0.9), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for i, cells in enumerate(rows):
      for j in range(ncols):
        ax = axes[i, j]
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= len(cells):
          ax.axis("off")
          continue
        g, arm, path, state = cells[j]
        img = _read_image(path) if path else None
        if img is not None:
          ax.imshow(img)
        else:
          ax.text(0.5, 0.5, state if len(state) < 30 else state[:27] + "...", ha="center",
                  va="center", fontsize=8, wrap=True, transform=ax.transAxes, color="0.3")
          ax.set_box_aspect(1)
          for s in ax.spines.values():
            s.set_color("0.8")
        ax.set_title(arm, fontsize=10)
        if j == 0 and g:
          ax.set_ylabel(group_label(sweep, g), fontsize=11)
    ngroups = len({c[0] for r in rows for c in r})
    suptitle(fig, f"{sweep.title}\n{sweep.name}: samples (EMA parameters)"
                 + ("; rows: group" if ngroups > 1 else ""))
  return fig


# --- driver ----------------------------------------------------------------------------

def sweep_figures(sweep: Sweep, with_paper: Optional[bool] = None) -> dict[str, Figure]:
  """The figures one sweep gives, by file name (absent where there is nothing to draw)."""
  out = {}
  for suffix, fn in (("guidance", lambda s: guidance_figure(s, with_paper)),
                     ("shift", shift_figure), ("loss", training_figure),
                     ("curves", curve_figure), ("scene", scene_figure),
                     ("weighting", weighting_figure),
                     ("samples", samples_figure)):
    fig = fn(sweep)
    if fig is not None:
      out[f"{sweep.name}_{suffix}"] = fig
  out.update(ema_length_figures(sweep))
  return out


def make_all(results: str, out: Optional[str] = None, with_paper: Optional[bool] = None,
             log=print) -> list[str]:
  out = out or os.path.join(results, "figures")
  paths = []
  paths += save(schedule_figure(), out, "schedules")
  fig, sig = noise_figure(512)
  paths += save(fig, out, "noise_512")
  log("noise_512: signal kept (ρ at 64²) cosine "
      + " ".join(f"{v:.2f}" for v in sig["cosine"]["signal"]) + " vs shifted "
      + " ".join(f"{v:.2f}" for v in sig["shifted"]["signal"]))
  sweeps = load_results(results, warn=lambda m: log(f"warning: {m}"))
  if not sweeps:
    log(f"no sweeps in {results!r} (no sub-folder holds a sweep.json); drew the schedule and "
        "noise figures only")
  for s in sweeps:
    figs = sweep_figures(s, with_paper)
    if not figs:
      log(f"{s.name}: nothing to draw yet (no metrics, samples or finished runs)")
    for name, fig in figs.items():
      paths += save(fig, out, name)
  return paths


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m analysis.make_figures",
                               description="Paper-style figures from a results folder.")
  ap.add_argument("results", nargs="?", default="results", help="results folder (default results/)")
  ap.add_argument("--out", default=None, help="output folder (default RESULTS/figures)")
  g = ap.add_mutually_exclusive_group()
  g.add_argument("--with-paper", dest="with_paper", action="store_true", default=None,
                 help="draw the paper's curves at any tier (default: only at tier paper)")
  g.add_argument("--no-paper", dest="with_paper", action="store_false")
  args = ap.parse_args(argv)
  _, _, err = readable_results(args.results)   # before any figure
  out = args.out or os.path.join(args.results, "figures")
  err = err or make_out_dir(out)
  if err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  matplotlib.use("Agg")
  paths = make_all(args.results, args.out, args.with_paper,
                   log=lambda m: print(m, file=sys.stderr))
  print("\n".join(paths))
  return 0


if __name__ == "__main__":
  sys.exit(main())
