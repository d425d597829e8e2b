"""A run's metrics: the one writer of metrics.jsonl, and training speed from its rows.

`MetricsWriter(workdir, cfg)` appends each row to <workdir>/metrics.jsonl (always, on process
0) and, where train.log_to asks, to TensorBoard (tensorboardX, into <workdir>/tensorboard) or
Weights & Biases (wandb, run id from the workdir so that a resumed run continues its curve).
Neither is a dependency: they are imported when asked for, and `check_backends` turns a
missing one into one ConfigError line before any training.

Training speed is images per second: `images_per_s` for one interval, `run_speed` for a run's
logged rows (the median interval, without the first, which holds compilation) and
`combined_speed` for a cascade's stages.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from typing import Any, Optional, Sequence

from core.config import ConfigError
from core.runio import append_jsonl, read_jsonl, write_text_atomic

METRICS_FILE = "metrics.jsonl"
# train.log_to name -> (module to import, pip package)
BACKENDS = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb": ("wandb", "wandb")}


# --- training speed ----------------------------------------------------------------------

def images_per_s(images: float, seconds: float) -> float:
  return images / max(seconds, 1e-9)


def run_speed(rows: Sequence[dict]) -> Optional[float]:
  """Median images/s of the logged intervals, leaving out the first (it holds compilation)."""
  import numpy as np
  v = [r["img_per_s"] for r in rows if "img_per_s" in r]
  v = v[1:] if len(v) > 1 else v
  return float(np.median(v)) if v else None


def combined_speed(images: Sequence[float], speeds: Sequence[Optional[float]]) -> Optional[float]:
  """Stages trained one after another (a cascade) as one: images of every stage per second of
  their training, sum(images) / sum(images / speed); None where a stage's speed is unknown."""
  if len(speeds) == 1:
    return speeds[0]
  if not all(speeds):
    return None
  return sum(images) / sum(i / v for i, v in zip(images, speeds))


# --- the writer --------------------------------------------------------------------------

def _importable(module: str) -> bool:
  import sys
  if module in sys.modules:     # already imported (or a stand-in); None: import blocked
    return sys.modules[module] is not None
  return importlib.util.find_spec(module) is not None


def check_backends(names: Sequence[str], installed: bool = True) -> None:
  """Each train.log_to backend is known (and, with `installed`, importable), else one
  ConfigError line."""
  for name in names:
    if name not in BACKENDS:
      raise ConfigError(f"train.log_to: unknown backend {name!r}; choose from "
                        f"{', '.join(BACKENDS)} (or leave it empty: metrics.jsonl only)")
    module, package = BACKENDS[name]
    if installed and not _importable(module):
      raise ConfigError(f"train.log_to={name} needs the package {package}, which is not "
                        f"installed: pip install {package}, or drop {name} from train.log_to")


def _scalars(row: dict) -> dict[str, float]:
  return {k: float(v) for k, v in row.items()
          if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _TensorBoard:
  def __init__(self, workdir: str, cfg):
    mod = importlib.import_module(BACKENDS["tensorboard"][0])
    self.writer = mod.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def log(self, row: dict) -> None:
    for k, v in _scalars(row).items():
      self.writer.add_scalar(f"train/{k}", v, int(row["step"]))
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class _Wandb:
  def __init__(self, workdir: str, cfg):
    from core.config import to_dict
    self.wandb = importlib.import_module(BACKENDS["wandb"][0])
    run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
    self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "simplediff"),
                               name=cfg.name, id=run_id, resume="allow", dir=workdir,
                               config=to_dict(cfg))

  def log(self, row: dict) -> None:
    self.run.log({f"train/{k}": v for k, v in _scalars(row).items()}, step=int(row["step"]))

  def close(self) -> None:
    self.run.finish()


_WRITERS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


class MetricsWriter:
  """Appends metrics rows to <workdir>/metrics.jsonl and to the train.log_to backends; writes
  only on process 0 (`is_main`), where it also calls `on_row(row)` after each row.

  resume_step: rows past it belong to steps that are about to run again and are dropped, so
  that each step appears once."""

  def __init__(self, workdir: str, cfg, *, is_main: bool = True, resume_step: int = 0,
               on_row=None):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.is_main, self.on_row = is_main, on_row
    self.backends: list[Any] = []
    check_backends(cfg.train.log_to)   # on every process: the same error everywhere
    if not is_main:
      return
    if os.path.exists(self.path):
      rows = read_jsonl(self.path)
      if any(r.get("step", 0) > resume_step for r in rows):
        import json
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows
                                             if r.get("step", 0) <= resume_step))
    self.backends = [_WRITERS[name](workdir, cfg) for name in cfg.train.log_to]

  def write(self, row: dict) -> None:
    if not self.is_main:
      return
    append_jsonl(self.path, row)
    for b in self.backends:
      b.log(row)
    if self.on_row is not None:
      self.on_row(row)

  def close(self) -> None:
    for b in self.backends:
      b.close()
    self.backends = []

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
