"""Learning curves: a run scored while it trains, so that a study sees when one arm overtakes
another rather than only where each stopped.

With eval.every = N, every N training steps (and at the last) eval.curve_num samples of the
EMA parameters are drawn with the evaluation's own keys (core.runtime.generate.sample_key, stream 0:
every point and every arm of a seed read the same noise and labels) and read by the oracle
(core.metrics.oracle: class accuracy, the oracle's Fréchet distance and their real-data floor; with
eval.memorisation, core.metrics.memorisation's copy fraction and nearest-neighbour ratio), with
FID eval @content at the points whose step is a multiple of eval.curve_fid_every (Inception:
about 15 images/s on 2 cores). Rows go
to <model dir>/curve.jsonl, one per step; a resumed run writes its steps again over any rows
from the steps it repeats. The hook costs training nothing else: core.train calls it between
steps and leaves its seconds out of the run's speed and training time.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from core.metrics import memorisation, oracle as oracle_lib
from core.config import ExperimentConfig
from core.runtime.generate import gather_rows, generate, make_sampler
from core.runio import append_jsonl, read_jsonl, write_text_atomic

CURVE_FILE = "curve.jsonl"


class CurveHook:
  """Called by core.train.train after every step as hook(step, trainer, state)."""

  def __init__(self, cfg: ExperimentConfig, model_dir: str, log=print):
    self.cfg, self.path, self.log = cfg, os.path.join(model_dir, CURVE_FILE), log
    self.oracle = oracle_lib.for_run(cfg, progress=False)
    self.draw = None
    self.inception = None

  def due(self, step: int) -> bool:
    e = self.cfg.eval
    return e.every > 0 and (step % e.every == 0 or step == self.cfg.train.steps)

  def __call__(self, step: int, trainer, state) -> None:
    if not self.due(step):
      return
    import jax
    t0 = time.perf_counter()
    cfg, n = self.cfg, self.cfg.eval.curve_num
    ema = state.ema_params
    if self.draw is None:   # one compiled sampler for every point: the parameters are an input
      self.draw = make_sampler(trainer, ema, cfg, min(cfg.eval.batch_size, n))
    draw = lambda key, labels, low=None: self.draw(key, labels, low, params=ema)
    e = cfg.eval
    with_fid = e.curve_fid_every > 0 and step % e.curve_fid_every == 0
    reads, asked, rows, images = [], [], [], []
    for imgs, labels, idx in generate(trainer, ema, cfg, n, seed=cfg.eval.seed,
                                      progress=False, draw=draw):
      reads.append(oracle_lib.read_images(self.oracle, imgs))
      asked.append(labels)
      rows.append(idx)
      if with_fid or e.memorisation:
        images.append(imgs)
    rows = np.concatenate(rows)
    r = {k: gather_rows(np.concatenate([x[k] for x in reads]), rows) for k in reads[0]}
    a = None if asked[0] is None else gather_rows(np.concatenate(asked), rows)
    s = oracle_lib.run_scores(cfg, self.oracle, r, a)
    row = {"step": int(step), "num": s["num"], "class_acc": s["class_acc"],
           "class_acc_lo": s["class_acc_lo"], "class_acc_hi": s["class_acc_hi"],
           "fd_eval": s["fd_eval"], "floor_fd_eval": s["floor"]["fd_eval"],
           "floor_class_acc": s["floor"]["class_acc"],
           **{f"{k}_mean": v["mean"] for k, v in s["params"].items()}}
    if with_fid:
      row["fid_content"] = self._fid(np.concatenate(images), rows)
    if e.memorisation:   # how near the samples are to the training images (core.metrics.memorisation)
      from core.metrics.reference import box_downsample
      at = self.oracle.resolution
      m = memorisation.run_scores(cfg, gather_rows(box_downsample(np.concatenate(images), at),
                                                   rows), at)
      row.update(copy_fraction=m["copy_fraction"], nn_ratio=m["nn_ratio"])
    row.update(seconds=time.perf_counter() - t0, time=time.time())
    if jax.process_index() == 0:
      self._write(row)
    acc = "" if row["class_acc"] is None else f"class accuracy {row['class_acc']:.3f}, "
    self.log(f"curve at step {step}: {acc}oracle FD {row['fd_eval']:.2f} "
             f"({row['seconds']:.0f} s)")

  def _fid(self, images: np.ndarray, rows: np.ndarray) -> float:
    """FID eval of the samples at the content resolution: core.evaluate's @content figure,
    through the same function (core.evaluate reads checkpoints, not the engine)."""
    from core.evaluate import content_figures
    from core.metrics.features import inception_extractor
    from core.metrics.reference import box_downsample
    if self.inception is None:
      self.inception = inception_extractor(self.cfg.eval.inception_weights)
    at = self.oracle.resolution
    feats = gather_rows(self.inception(box_downsample(images, at))["pool"], rows)
    return float(content_figures(self.cfg, feats, self.inception, at, False)["fid_eval"])

  def _write(self, row: dict) -> None:
    """Appends the row, first dropping rows of this step or later (a resumed run's repeats)."""
    import json
    old = read_jsonl(self.path) if os.path.exists(self.path) else []
    if any(r.get("step", 0) >= row["step"] for r in old):
      write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in old
                                           if r.get("step", 0) < row["step"]))
    append_jsonl(self.path, row)


def curve_hook(cfg: ExperimentConfig, model_dir: str, log=print) -> Optional[CurveHook]:
  """The learning-curve hook of a run's (last) model, or None where eval.every is 0 or the run
  has no oracle to read its samples."""
  if cfg.eval.every <= 0 or oracle_lib.oracle_resolution(cfg) is None:
    return None
  return CurveHook(cfg, model_dir, log)
