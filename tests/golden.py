"""The stored test vectors under tests/data (made by the scripts/make_*_golden.py scripts)."""
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict:
  """Every array of tests/data/<name>, read into memory (the file is closed on return)."""
  with np.load(DATA / name) as z:
    return {k: z[k] for k in z.files}
