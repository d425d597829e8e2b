"""Synthetic results folders that follow docs/results_layout.md, for the analysis tests.

write_fake_sweep: a table-like sweep with every state the layout allows: finished runs
(eval.json, metrics.jsonl, samples.png), two seeds of one arm (or any seed counts), a running
run, a failed run, a run whose folder is missing, and a torn last line in one metrics.jsonl.
The first group's runs write the newer eval.json keys (KID, the data floor); the others are
older runs: without those keys, or with them null (every other arm).
write_fake_guidance_sweep: a table 9-like sweep whose runs vary sampler.guidance_scale.
Numbers are deterministic, so tests can recompute what the tables should show.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from analysis import paper_numbers

NOW = 1_700_000_000.0


def slug(s: str) -> str:
  s = re.sub(r"[^A-Za-z0-9.=+]+", "-", str(s)).strip("-")
  return s or "run"


def run_id(group: str, arm: str, seed: int) -> str:
  return slug(f"{group}_{arm}" if group else arm) + f"-s{seed}"


def _json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def _samples_png(path: str, seed: int, size: int = 64) -> None:
  """A small 4x4 grid of coloured gradients, different per run."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  tile = size // 4
  img = np.zeros((size, size, 3), np.uint8)
  ramp = np.linspace(0.3, 1.0, tile)[:, None, None]
  for i in range(4):
    for j in range(4):
      c = rng.uniform(0, 255, 3)
      img[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = (ramp * c).astype(np.uint8)
  Image.fromarray(img).save(path)


def _metrics(path: str, k: int, seed: int, steps: int, torn: bool = False,
             until: Optional[int] = None) -> None:
  """Training rows every 10 steps, loss decaying with noise."""
  rng = np.random.default_rng(1000 * k + seed)
  last = steps if until is None else until
  with open(path, "w") as f:
    for step in range(10, last + 1, 10):
      loss = 0.05 + 0.5 / (1 + step / (20 + 5 * k)) + 0.02 * rng.standard_normal() ** 2
      row = {"step": step, "loss": loss, "grad_norm": 1.0 / (1 + step / 100), "lr": 1e-3,
             "img_per_s": 100.0 + k, "time": step * 0.1}
      row.update({f"loss_q{q}": loss * (1.5 - 0.3 * q) for q in range(4)})
      f.write(json.dumps(row) + "\n")
    if torn:
      f.write('{"step": 99999, "loss": 0.1')   # a line cut by a kill: no newline, no brace


def fake_eval(k: int, seed: int, **extra) -> dict:
  """eval.json of the k-th arm's seed: numbers that differ per arm and per seed."""
  ev = {"fid_train": 20.0 + 3.0 * k + 1.0 * seed, "fid_eval": 22.0 + 2.5 * k + 0.6 * seed,
        "is_mean": 5.0 + 0.5 * k + 0.2 * seed, "is_std": 0.1 + 0.01 * k,
        "num_samples": 512, "params": 1_234_567 * (1 + k), "steps": 200, "step": 200,
        "train_img_per_s": 100.0 * (1 + 0.25 * k) + 4.0 * seed,
        "train_time_s": 60.0, "eval_time_s": 30.0 + 6.0 * seed, "guidance_scale": 1.0}
  ev.update(extra)
  return ev


def fake_kid(k: int, seed: int) -> dict:
  """eval.json's KID keys of the k-th arm's seed, unscaled (x 10^3: train 12 + 3k + seed,
  eval 10 + 2k + seed)."""
  return {"kid_train": 0.012 + 0.003 * k + 0.001 * seed,
          "kid_eval": 0.010 + 0.002 * k + 0.001 * seed,
          "kid_train_std": 0.0005 + 0.0001 * k, "kid_eval_std": 0.0004 + 0.0001 * k}


def fake_floor(group: str, num: int = 512) -> dict:
  """eval.json's "floor" of a group: the same in every run of it."""
  res = int(group) // 8 if group.isdigit() else 16
  return {"num": num, "resolution": res,
          "fid_train": 1.5 + 0.01 * res, "fid_eval": 1.75 + 0.01 * res,
          "kid_train": 0.0002 + 1e-5 * res, "kid_eval": 0.0003 + 1e-5 * res,
          "kid_train_std": 0.0001, "kid_eval_std": 0.00015}


NEW_KEYS = ("kid_train", "kid_train_std", "kid_eval", "kid_eval_std", "floor")


def new_keys(group: str, k: int, seed: int, new: bool) -> dict:
  """The newer eval.json keys of a run: KID and floor where new, else none (even k) or nulls."""
  if new:
    return {**fake_kid(k, seed), "floor": fake_floor(group)}
  return {} if k % 2 == 0 else dict.fromkeys(NEW_KEYS)


def _write_run(sdir: str, rid: str, state: str, k: int, seed: int, steps: int = 200,
               evals: Optional[dict] = None, torn: bool = False,
               error: Optional[str] = None, metrics_src: Optional[int] = None,
               sample_seed: Optional[int] = None) -> None:
  if state == "missing":
    return
  d = os.path.join(sdir, rid)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "config.yaml"), "w") as f:
    f.write(f"name: {rid}\nresolution: 16\n")
  step = {"done": steps, "running": steps // 2, "failed": steps // 4, "pending": 0}[state]
  _json(os.path.join(d, "status.json"), {"state": state, "error": error, "step": step,
                                         "updated": NOW})
  if state == "pending":
    return
  mk = k if metrics_src is None else metrics_src
  ev = evals or fake_eval(k, seed)
  _metrics(os.path.join(d, "metrics.jsonl"), mk, seed if metrics_src is None else 0, steps,
           torn=torn, until=None if state == "done" else step)
  if state == "done":
    _json(os.path.join(d, "eval.json"), ev)
    _samples_png(os.path.join(d, "samples.png"),
                 17 * k + seed if sample_seed is None else sample_seed)


def write_fake_sweep(root: str, sweep: str = "noise_shift", table: str = "2", tier: str = "cpu",
                     arms: Optional[Sequence[tuple[str, str]]] = None,
                     states: Optional[dict] = None, two_seeds: Optional[tuple[str, str]] = None,
                     reference: Optional[tuple[str, str]] = "first",
                     title: Optional[str] = None, seeds: Optional[dict] = None,
                     new: Optional[Callable[[str, str, int], bool]] = None) -> str:
  """Writes root/<sweep>_<tier>/ and returns its path.

  arms: (group, label) pairs, default the paper table's. states: {(group, label): state} for
  "running" | "failed" | "missing" | "pending"; default the last three arms running, failed and
  missing. two_seeds: the arm with seeds 0 and 1 (default the first). seeds: {(group, label):
  number of seeds} (seeds 0, 1, ...), over two_seeds. reference: the arm whose seed-0 run is
  sweep.json's reference ("first" = the first arm, None = no reference). new(group, label, seed):
  whether a run writes KID and floor (default: the first group's runs).
  The first finished run's metrics.jsonl ends with a torn line.
  """
  arms = list(arms or paper_numbers.arms_of(table))
  if states is None:
    states = {}
    if len(arms) >= 5:
      states = {arms[-3]: "running", arms[-2]: "failed", arms[-1]: "missing"}
  two_seeds = two_seeds or arms[0]
  if reference == "first":
    reference = arms[0]
  counts = {tuple(two_seeds): 2, **{tuple(a): n for a, n in (seeds or {}).items()}}
  new = new or (lambda g, a, s: g == arms[0][0])
  sdir = os.path.join(root, f"{sweep}_{tier}")
  os.makedirs(sdir, exist_ok=True)
  runs = []
  torn_done = False
  for k, (group, arm) in enumerate(arms):
    for seed in range(counts.get((group, arm), 1)):
      rid = run_id(group, arm, seed)
      state = states.get((group, arm), "done")
      runs.append({"run_id": rid, "arm": arm, "group": group, "seed": seed,
                   "values": {"resolution": int(group) // 8 if group.isdigit() else 16}})
      torn = state == "done" and not torn_done
      torn_done = torn_done or torn
      err = ("RuntimeError: RESOURCE_EXHAUSTED: out of memory allocating 12.3GiB on device "
             "cuda:0 while running the train step\nTraceback (most recent call last): ...")
      ev = fake_eval(k, seed, **new_keys(group, k, seed, new(group, arm, seed)))
      _write_run(sdir, rid, state, k, seed, evals=ev, torn=torn,
                 error=err if state == "failed" else None)
  # the runner's shared-model folder sits beside the runs; analysis must ignore it
  os.makedirs(os.path.join(sdir, "_models", "0123456789ab"), exist_ok=True)
  meta = {"sweep": sweep, "file": f"ablations/{sweep}.yaml", "table": table,
          "title": title or paper_numbers.TITLES.get(table, sweep), "tier": tier,
          "axes": ["resolution"],
          "reference": run_id(*reference, 0) if reference else None, "runs": runs}
  _json(os.path.join(sdir, "sweep.json"), meta)
  return sdir


def guidance_fid(group: str, s: float) -> float:
  return 10.0 + 8.0 * (s - 1.3) ** 2 + 0.01 * (int(group) if group.isdigit() else 0)


def write_fake_guidance_sweep(root: str, tier: str = "cpu", groups: Sequence[str] = ("128", "256"),
                              scales: Sequence[float] = (1.0, 1.4, 2.0, 3.0),
                              with_is: bool = True) -> str:
  """A table-9 sweep: one model per group, sampled at several guidance scales, all done.
  with_is=False: IS null in eval.json, as runs without Inception logits write it."""
  sdir = os.path.join(root, f"guidance_{tier}")
  runs = []
  for gi, group in enumerate(groups):
    for s in scales:
      label = f"{s:.2f}"
      rid = run_id(group, label, 0)
      runs.append({"run_id": rid, "arm": label, "group": group, "seed": 0,
                   "values": {"resolution": int(group) // 8, "sampler.guidance_scale": s}})
      fid = guidance_fid(group, s)
      ev = fake_eval(gi, 0, fid_train=fid, fid_eval=fid + 1.5,
                     is_mean=5.0 + 4.0 * (s - 1) + gi if with_is else None,
                     is_std=0.2 if with_is else None, guidance_scale=s)
      _write_run(sdir, rid, "done", gi, 0, evals=ev, metrics_src=gi,
                 sample_seed=int(1000 * s) + gi)
  meta = {"sweep": "guidance", "file": "ablations/guidance.yaml", "table": "9",
          "title": "Guidance scale on the U-ViTs (table 9)", "tier": tier,
          "axes": ["resolution", "sampler.guidance_scale"], "reference": None, "runs": runs}
  _json(os.path.join(sdir, "sweep.json"), meta)
  return sdir


def sample_std(xs) -> float:
  m = sum(xs) / len(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
