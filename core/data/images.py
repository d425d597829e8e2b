"""Image files: which names are images, the one reader of an image folder's file list,
decoding any of them to 8-bit RGB at a resolution, and the grid PNG of a run's samples.

IMAGE_EXTS and image_files are the one list of image extensions and the one folder reader (the
folder source and analysis.fid's image folders both use them).
"""
from __future__ import annotations

import io
import math
import os

from typing import Optional

import numpy as np
from PIL import Image

# Extensions that PIL decodes, lower case, sorted.
IMAGE_EXTS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
  """Whether a file name has an image extension (any case)."""
  return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def image_files(top: str, recursive: bool = True, mtimes: Optional[dict] = None) -> list[str]:
  """Sorted paths, relative to `top`, of the image files in it (names starting with '.' left
  out); recursive: in its sub-folders too (links followed, hidden folders left out). mtimes, if
  given, receives {folder: st_mtime_ns} of every folder read (a file list cache's key)."""
  found = []
  for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
    if mtimes is not None:
      mtimes[dirpath] = os.stat(dirpath).st_mtime_ns
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
    found += [os.path.relpath(os.path.join(dirpath, f), top) for f in filenames
              if not f.startswith(".") and is_image_name(f)]
  return sorted(found)


class ImageModeError(ValueError):
  """An image whose pixel format has no faithful 8-bit RGB reading."""


def to_rgb8(img: Image.Image) -> Image.Image:
  """Any mode PIL opens -> 8-bit RGB, by value, not by truncation. PIL's own convert("RGB")
  clips 16- and 32-bit integer pixels at 255, which turns a 16-bit PNG all white.

  - 1, L, P, PA, CMYK, YCbCr, LAB, HSV: PIL's conversion (palette looked up, CMYK inverted);
  - RGBA, LA, PA: the alpha channel is dropped, as the FID reference code does;
  - I;16 (16-bit PNG, TIFF): value / 257, rounded; I (32-bit integer, which is how PIL opens
    16-bit grayscale files of other formats): the same if its values fit 16 bits, as 8-bit if
    they fit 8, else refused;
  - F (32-bit float) and anything else: refused (ImageModeError), since no range is implied.
  """
  mode = img.mode
  if mode == "RGB":
    return img
  if mode in ("1", "L", "P", "PA", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV",
              "RGBX"):
    return img.convert("RGB")
  if mode.startswith("I"):
    a = np.asarray(img).astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
      raise ImageModeError(f"{mode} image with values {lo}..{hi}: not 8- or 16-bit; convert "
                           "it to 8-bit RGB first")
    if mode.startswith("I;16") or hi > 255:
      a = (a * 255 + 32767) // 65535          # round(a / 257), exactly
    g = a.astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, -1), "RGB")
  raise ImageModeError(f"image mode {mode!r} (e.g. 32-bit float) has no implied 8-bit range; "
                       "convert it to 8-bit RGB first")


def crop_resize(img: Image.Image, resolution: int) -> np.ndarray:
  """Centre crop to a square, resize to (resolution, resolution); returns uint8 (R, R, 3)."""
  img = to_rgb8(img)
  w, h = img.size
  if w != resolution or h != resolution:
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    # reducing_gap: a box reduction by an integer factor that keeps >= 3x the size, then bicubic.
    img = img.resize((resolution, resolution), Image.Resampling.BICUBIC,
                     box=(left, top, left + s, top + s),
                     reducing_gap=3.0 if s >= 3 * resolution else None)
  return np.asarray(img, dtype=np.uint8)


def decode_image(src, resolution: int) -> np.ndarray:
  """Decodes a path or encoded bytes; raises on anything PIL cannot read in full."""
  if not isinstance(src, (bytes, bytearray, memoryview)):
    with open(src, "rb") as f:   # one read: PIL would issue dozens of small ones
      src = f.read()
  with Image.open(io.BytesIO(src)) as img:
    if img.format == "JPEG":
      # Let libjpeg scale by 1/2..1/8 in the DCT while the short side stays >= 2R (speed).
      w, h = img.size
      k = min(1.0, 2 * resolution / min(w, h))
      img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
    img.load()
    return crop_resize(img, resolution)


def array_to_image(a: np.ndarray, resolution: int) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.shape == (resolution, resolution, 3):
    return a.astype(np.uint8, copy=False)
  return crop_resize(Image.fromarray(a.astype(np.uint8, copy=False)), resolution)


# Filters that make an image at the training resolution from its content resolution
# (data.upsample; core.data.sources.Upsampled): PIL's, each sampling at pixel centres.
UPSAMPLE_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def upsample(image: np.ndarray, resolution: int, method: str) -> np.ndarray:
  """uint8 (r, r, 3) -> uint8 (resolution, resolution, 3) with the filter named `method`."""
  if image.shape[0] == resolution and image.shape[1] == resolution:
    return image
  img = Image.fromarray(np.asarray(image, np.uint8))
  return np.asarray(img.resize((resolution, resolution), UPSAMPLE_FILTERS[method]), np.uint8)



def image_grid(images: np.ndarray, min_tile: int = 64) -> np.ndarray:
  """Tiles N images into a near-square grid; small images are enlarged (nearest) to be seen."""
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  f = max(1, min_tile // h)
  pad = 2
  grid = np.full((rows * (h * f + pad) + pad, cols * (w * f + pad) + pad, c), 255, np.uint8)
  for i, im in enumerate(images):
    r, q = divmod(i, cols)
    big = np.repeat(np.repeat(im, f, 0), f, 1)
    y, x = pad + r * (h * f + pad), pad + q * (w * f + pad)
    grid[y:y + h * f, x:x + w * f] = big
  return grid


def save_grid(images: np.ndarray, path: str) -> None:
  """image_grid as a PNG, written atomically."""
  from core.runio import write_bytes_atomic
  buf = io.BytesIO()
  Image.fromarray(image_grid(images)).save(buf, format="PNG")
  write_bytes_atomic(path, buf.getvalue())
