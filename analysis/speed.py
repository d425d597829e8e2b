"""Relative training speed, the one rule that tables and cost reports share: each arm's
images/s in percent of its reference's, the reference being the sweep's reference arm (its
`reference:` run) where it names one, else the first arm of the arm's group.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence


def speed_references(groups: Sequence[str], reference: Optional[int]) -> list[int]:
  """The index of each row's reference row: `reference` where given, else the first row of
  the row's group."""
  first: dict[str, int] = {}
  for i, g in enumerate(groups):
    first.setdefault(g, i)
  return [reference if reference is not None else first[g] for g in groups]


def percent_of(value: float, ref: float) -> float:
  """100 * value / ref; NaN where either is unknown or ref is not positive. The ratio first:
  the reference row is then exactly 100 (100 * x / x can miss it by an ulp)."""
  ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (value, ref)) and ref > 0
  return 100.0 * (value / ref) if ok else math.nan
