"""Writes a PNG grid of the procedural shapes data set and times its rendering.

  python -m scripts.show_shapes --resolution 64 --n 64 --out /tmp/shapes.png
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from core.data.shapes import KINDS, ShapesSource


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--resolution", type=int, default=64)
  ap.add_argument("--n", type=int, default=64, help="images in the grid (a square number)")
  ap.add_argument("--split", default="train")
  ap.add_argument("--start", type=int, default=0)
  ap.add_argument("--out", default="shapes.png")
  args = ap.parse_args()
  src = ShapesSource(size=args.start + args.n, resolution=args.resolution, split=args.split)
  t0 = time.perf_counter()
  ex = [src[i] for i in range(args.start, args.start + args.n)]
  dt = time.perf_counter() - t0
  side = int(np.ceil(np.sqrt(args.n)))
  r = args.resolution
  grid = np.full((side * (r + 2), side * (r + 2), 3), 255, np.uint8)
  for k, e in enumerate(ex):
    i, j = divmod(k, side)
    grid[i * (r + 2):i * (r + 2) + r, j * (r + 2):j * (r + 2) + r] = e["image"]
  Image.fromarray(grid).save(args.out)
  print(f"{args.out}: {args.n} images at {r}x{r}, {args.n / dt:.0f} images/s; labels "
        + " ".join(KINDS[int(e['label'])] for e in ex[:side]) + " ...")


if __name__ == "__main__":
  main()
