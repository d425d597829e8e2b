"""The paper's published numbers (docs/paper.md §3) as data, keyed like the sweep files.

TABLES[table][group][arm] -> {"fid_train", "fid_eval", and where the paper gives them
"is_mean", "is_std", "speed" (relative training speed in percent)}. Table ids, groups and arm
labels are the ones ablations/*.yaml use, so that `lookup(sweep.json's table, run group, run
arm)` finds the row. Values are as docs/paper.md §3 transcribes them; [?] marks what it flags.
"""
from __future__ import annotations

import copy
from typing import Optional


def _f(fid_train, fid_eval, is_mean=None, is_std=None, speed=None) -> dict:
  row = {"fid_train": fid_train, "fid_eval": fid_eval}
  for k, v in (("is_mean", is_mean), ("is_std", is_std), ("speed", speed)):
    if v is not None:
      row[k] = v
  return row


TITLES = {
    "1": "Memory and compute of a convolutional layer at batch 1024",
    "2": "Noise schedule: cosine vs shifted",
    "3": "Dropout only in blocks at resolution <= r (ImageNet 128, 700k steps)",
    "4": "Blocks at 16x16 (down + up)",
    "5": "Downsampling front-ends at ImageNet 512 (U-Net)",
    "6": "Multiscale loss",
    "7": "Comparison with the literature, no guidance",
    "9": "Classifier-free guidance scale on the U-ViTs",
}

TABLES: dict[str, dict[str, dict[str, dict]]] = {
    "2": {
        "128": {"cosine": _f(2.96, 3.38), "shift 64": _f(2.41, 3.03), "shift 32": _f(2.26, 2.88)},
        "256": {"cosine": _f(7.65, 6.87), "shift 128": _f(5.05, 4.74),
                "shift 64": _f(3.94, 3.89), "shift 32": _f(3.76, 3.71)},
    },
    "3": {
        # "r=128" is "all blocks" in the paper.
        "128": {"none": _f(3.74, 3.91), "r=128": _f(3.19, 3.85), "r=64": _f(2.27, 2.85),
                "r=32": _f(2.31, 2.87), "r=16": _f(2.41, 3.03)},
    },
    "4": {
        # [?] data set not confirmed, likely ImageNet 128; speed relative to 4+5.
        "128": {"2+3": _f(3.42, 3.59, speed=114), "4+5": _f(2.98, 3.29, speed=100),
                "8+9": _f(2.46, 3.00, speed=76), "12+13": _f(2.41, 3.03, speed=62)},
    },
    "5": {
        # speed relative to the no-front-end U-Net.
        "512": {"none": _f(5.60, 5.23, speed=100), "DWT-1": _f(5.42, 4.97, speed=139),
                "DWT-2": _f(4.85, 4.58, speed=146), "patch 2x2": _f(5.99, 5.33, speed=137),
                "patch 4x4": _f(5.04, 4.80, speed=146)},
    },
    "6": {
        "256": {"standard": _f(3.76, 3.71, 171.6), "multiscale": _f(4.00, 3.89, 171.0)},
        "512": {"standard": _f(4.85, 4.58, 156.1), "multiscale": _f(4.30, 4.28, 171.0)},
    },
    "7": {
        # literature.yaml's rows; cascade.yaml (single stage against CDM) uses the 256 ones.
        "128": {"U-Net": _f(2.26, 2.88, 137.3, 2.03), "U-ViT": _f(1.94, 3.23, 171.9, 3.24),
                "CDM": _f(3.52, 3.76, 128.8, 2.51)},
        "256": {"U-Net": _f(3.76, 3.71, 171.6, 3.07), "U-ViT": _f(2.77, 3.75, 211.8, 2.93),
                "CDM": _f(4.88, 4.63, 158.71, 2.26)},
        "512": {"U-Net": _f(4.30, 4.28, 171.0, 3.00), "U-ViT": _f(3.54, 4.53, 205.3, 2.65)},
    },
    "9": {
        # guidance scale = 1 + eta; IS without its std in the paper.
        "128": {"1.00": _f(1.94, 3.23, 171.9), "1.05": _f(2.05, 3.57, 189.9),
                "1.10": _f(2.35, 4.10, 207.0), "1.20": _f(3.24, 5.36, 237.6),
                "1.40": _f(5.58, 8.26, 285.2), "1.80": _f(9.77, 13.06, 340.1),
                "2.00": _f(11.47, 14.96, 359.2), "3.00": _f(15.85, 19.75, 399.2)},
        "256": {"1.00": _f(2.77, 3.75, 211.8), "1.05": _f(2.46, 3.80, 235.3),
                "1.10": _f(2.44, 4.08, 256.3), "1.20": _f(2.96, 5.10, 289.8),
                "1.40": _f(4.69, 7.50, 342.2), "1.80": _f(8.21, 11.81, 398.0),
                "2.00": _f(9.59, 13.44, 416.4), "3.00": _f(13.61, 18.00, 455.7)},
        "512": {"1.00": _f(3.54, 4.53, 205.3), "1.05": _f(3.14, 4.43, 228.5),
                "1.10": _f(3.02, 4.60, 248.7), "1.20": _f(3.33, 5.43, 284.6),
                "1.40": _f(4.97, 7.89, 339.9), "1.80": _f(8.38, 12.15, 401.7),
                "2.00": _f(9.68, 13.68, 416.2), "3.00": _f(13.79, 18.42, 461.4)},
    },
}

# Table 1: memory at batch 1024, as docs/paper.md has it (kernel MB, feature map GB, TFLOPs).
TABLE1 = [
    {"layer": "(B, 256, 256, 128) conv", "resolution": 256, "channels": 128,
     "kernel_mb": 2.8, "feature_map_gb": 16.0, "tflops": 9.0},
    {"layer": "(B, 16, 16, 1024) conv", "resolution": 16, "channels": 1024,
     "kernel_mb": 180.0, "feature_map_gb": 0.5, "tflops": 2.3},
]
TABLE1_BATCH = 1024


def _norm(s) -> str:
  return " ".join(str(s).split()).lower()


def lookup(table, group, arm) -> Optional[dict]:
  """The paper's row for (table, group, arm), or None where the paper has none.

  Exact labels first; then case and spacing are ignored; for table 9 a numeric arm (1.4,
  "1.4") matches "1.40".
  """
  groups = TABLES.get(str(table))
  if groups is None:
    return None
  arms = groups.get(str(group))
  if arms is None:
    return None
  if str(arm) in arms:
    return copy.deepcopy(arms[str(arm)])
  by_norm = {_norm(k): k for k in arms}
  if _norm(arm) in by_norm:
    return copy.deepcopy(arms[by_norm[_norm(arm)]])
  if str(table) == "9":
    try:
      key = f"{float(arm):.2f}"
    except (TypeError, ValueError):
      return None
    if key in arms:
      return copy.deepcopy(arms[key])
  return None


def for_run(table, group, arm, refs=None) -> Optional[dict]:
  """The paper's row a run reproduces in `table`: the one its sweep file names (sweep.json's
  "paper", from the arm's `paper:`), else, for results written before arms named their rows,
  the row whose labels match the run's group and arm."""
  if refs is None:
    return lookup(table, group, arm)
  for ref in refs if isinstance(refs, list) else []:
    if isinstance(ref, dict) and str(ref.get("table")) == str(table):
      return lookup(ref["table"], ref.get("group"), ref.get("arm"))
  return None


def arms_of(table) -> list[tuple[str, str]]:
  """(group, arm) pairs of a table in the paper's order."""
  return [(g, a) for g, arms in TABLES.get(str(table), {}).items() for a in arms]


# The finding of each table that a study can confirm or refute: one paired comparison, an arm
# against a reference arm of the same group of the sweep file that reproduces the table (its
# labels), on a metric whose lower value is better. "fid" is FID eval @content where the
# study's data were made at a content resolution (the tiers that upsample), else FID eval.
# analysis.scorecard reads them; the numbers in `paper` are TABLES' (FID eval unless named).
CLAIMS = (
    {"row": "2", "sweep": "noise_shift", "group": "256", "arm": "shift 64",
     "reference": "cosine", "metric": "fid",
     "finding": "at 256 the shifted schedule (noise_d 64) beats cosine",
     "paper": "3.89 vs 6.87"},
    {"row": "3", "sweep": "dropout", "group": "128", "arm": "r=64", "reference": "none",
     "metric": "fid", "finding": "dropout only at resolutions <= 64 beats no dropout",
     "paper": "2.85 vs 3.91"},
    {"row": "4", "sweep": "blocks16", "group": "128", "arm": "12+13", "reference": "2+3",
     "metric": "fid", "finding": "more blocks at 16x16 (12+13) beat 2+3",
     "paper": "3.03 vs 3.59"},
    {"row": "5", "sweep": "downsampling", "group": "512", "arm": "DWT-2",
     "reference": "none", "metric": "fid",
     "finding": "a DWT-2 front-end is at least as good as none (and 1.46x faster)",
     "paper": "4.58 vs 5.23"},
    {"row": "6", "sweep": "multiscale", "group": "512", "arm": "multiscale",
     "reference": "standard", "metric": "fid",
     "finding": "at 512 the multiscale loss beats the standard loss (at 256 it does not)",
     "paper": "4.28 vs 4.58"},
    {"row": "7", "sweep": "literature", "group": "256", "arm": "U-ViT", "reference": "U-Net",
     "metric": "fid_train", "finding": "at 256 the U-ViT beats the U-Net in FID train",
     "paper": "FID train 2.77 vs 3.76"},
    {"row": "9", "sweep": "guidance", "group": "256", "arm": "1.10", "reference": "1.00",
     "metric": "fid_train", "finding": "at 256 a little guidance (1.10) improves FID train",
     "paper": "FID train 2.44 vs 2.77"},
    {"row": "CDM", "sweep": "cascade", "group": "256", "arm": "U-Net", "reference": "CDM",
     "metric": "fid", "finding": "one U-Net beats CDM's cascade at 256",
     "paper": "3.71 vs 4.63"},
)
