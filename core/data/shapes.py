"""An embedded procedural data set: coloured shapes over textured backgrounds.

Image i of a split is a pure function of (seed, split, i): its scene (background, one main
shape whose kind is the label, 0-2 smaller distractors behind it) is drawn from a
counter-based seed and then rendered analytically at any resolution. Every layer is
rendered as the average over each pixel's square footprint, so that the same scene at 4R,
box-downsampled by 4, is close to the scene rendered at R:
  - gradients and value noise are smooth, so a point sample is the pixel average;
  - stripes and checkers are square waves averaged in closed form (the antiderivative of a
    square wave is a triangle wave), over a box as wide as the pixel, which matches the
    variance of the rotated pixel footprint;
  - shapes are signed distance functions (after Inigo Quilez's 2D SDFs) turned into coverage
    by a linear ramp one pixel wide, the same variance match for a straight edge.
Rendering is vectorised numpy in float32, and shapes are evaluated only inside their
bounding boxes.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

KINDS = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon",
         "diamond", "crescent")
BACKGROUNDS = ("linear", "radial", "stripes", "checker", "noise")
NUM_CLASSES = len(KINDS)


# --- signed distance functions: p = (x, y) arrays in the shape's frame, s its radius ----

def _len(x, y):
  return np.sqrt(x * x + y * y)


def _box(x, y, bx, by):
  qx = np.abs(x) - bx
  qy = np.abs(y) - by
  return _len(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _circle(x, y, s, a):
  return _len(x, y) - s


def _square(x, y, s, a):
  rr = 0.12 * s * a[0]                     # slightly rounded corners
  b = 0.72 * s - rr
  return _box(x, y, b, b) - rr


def _triangle(x, y, s, a):
  k = math.sqrt(3.0)
  r = s * k / 2                            # circumradius s
  x = np.abs(x) - r
  y = y + r / k
  m = x + k * y > 0
  x, y = np.where(m, (x - k * y) / 2, x), np.where(m, (-k * x - y) / 2, y)
  x = x - np.clip(x, -2 * r, 0)
  return -_len(x, y) * np.sign(y)


_K1 = (0.809016994375, -0.587785252292)


def _star(x, y, s, a):
  rf = 0.4 + 0.15 * a[0]                   # inner / outer radius
  k1x, k1y = _K1
  k2x = -k1x
  x = np.abs(x)
  d = 2 * np.maximum(k1x * x + k1y * y, 0)
  x, y = x - d * k1x, y - d * k1y
  d = 2 * np.maximum(k2x * x + k1y * y, 0)
  x, y = x - d * k2x, y - d * k1y
  x = np.abs(x)
  y = y - s
  bax, bay = -rf * k1y, rf * k1x - 1
  h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, s)
  return _len(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _ring(x, y, s, a):
  w = s * (0.14 + 0.1 * a[0])
  return np.abs(_len(x, y) - (s - w)) - w


def _cross(x, y, s, a):
  t = s * (0.22 + 0.1 * a[0])
  ln = 0.92 * s
  return np.minimum(_box(x, y, ln, t), _box(x, y, t, ln))


def _ellipse(x, y, s, a):
  ax, ay = s, s * (0.45 + 0.25 * a[0])
  k0 = _len(x / ax, y / ay)
  k1 = _len(x / (ax * ax), y / (ay * ay))
  return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def _hexagon(x, y, s, a):
  kx, ky, kz = -0.866025404, 0.5, 0.577350269
  r = 0.85 * s                             # apothem; circumradius ~0.98 s
  x = np.abs(x)
  y = np.abs(y)
  d = 2 * np.minimum(kx * x + ky * y, 0)
  x, y = x - d * kx, y - d * ky
  x = x - np.clip(x, -kz * r, kz * r)
  y = y - r
  return _len(x, y) * np.sign(y)


def _diamond(x, y, s, a):
  bx, by = s * (0.5 + 0.18 * a[0]), s      # a rhombus, never a square
  x = np.abs(x)
  y = np.abs(y)
  h = np.clip(((bx - 2 * x) * bx - (by - 2 * y) * by) / (bx * bx + by * by), -1, 1)
  d = _len(x - 0.5 * bx * (1 - h), y - 0.5 * by * (1 + h))
  return d * np.sign(x * by + y * bx - bx * by)


def _crescent(x, y, s, a):
  r2 = s * (0.75 + 0.12 * a[0])
  off = s * (0.35 + 0.2 * a[1])
  return np.maximum(_len(x, y) - s, r2 - _len(x - off, y))


_SDF = (_circle, _square, _triangle, _star, _ring, _cross, _ellipse, _hexagon, _diamond,
        _crescent)
_BOUND = 1.05                              # every shape lies within radius 1.05 s


# --- scene sampling ---------------------------------------------------------------------

def _hsv(h, s, v):
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


class _Draws:
  """Uniforms drawn once from the image's generator and handed out in order (fast)."""

  def __init__(self, rng: np.random.Generator, n: int = 96):
    self.rng = rng
    self.u = rng.random(n).tolist()
    self.k = 0

  def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
    v = self.u[self.k]
    self.k += 1
    return lo + (hi - lo) * v

  def int(self, n: int) -> int:
    return min(int(self(0, n)), n - 1)

  def colour(self, sat=(0.35, 1.0), val=(0.3, 1.0)):
    return _hsv(self(), self(*sat), self(*val))


def _far_colour(d: _Draws, ref, min_dist: float = 0.45):
  # The main shape must stand out from its background; retries are deterministic.
  best, best_dist = None, -1.0
  for _ in range(8):
    c = d.colour()
    dist = math.dist(c, ref)
    if dist > best_dist:
      best, best_dist = c, dist
    if dist >= min_dist:
      break
  return best


STYLES = ("full", "simple")


def sample_scene(rng: np.random.Generator, style: str = "full") -> dict:
  """Draws a scene in resolution-free units: the image is the square [0, 1]^2.

  style "simple": a smooth background (linear or radial gradient) and the main shape alone,
  no distractors. Its pixels are as redundant as images get, where the paper's argument for
  the noise shift is strongest, and a model of a few minutes on a CPU learns it; "full" adds
  striped, checkered and noise backgrounds and distractor shapes.
  """
  d = _Draws(rng)
  if style == "simple":
    return _simple_scene(d)
  bg_kind = d.int(len(BACKGROUNDS))
  c0, c1 = d.colour(), d.colour()
  bg = dict(kind=bg_kind, c0=c0, c1=c1, angle=d(0, 2 * math.pi), period=d(0.06, 0.25),
            phase=d(), centre=(d(0.1, 0.9), d(0.1, 0.9)), radius=d(0.5, 1.0))
  if BACKGROUNDS[bg_kind] == "noise":
    n = 4 + d.int(5)                       # lattice cells across the image
    bg["grid"] = rng.random((n + 3, n + 3, 4), dtype=np.float32)
  mean_bg = tuple((a + b) / 2 for a, b in zip(c0, c1))
  shapes = []
  for _ in range(d.int(3)):                # distractors: small, behind the main shape
    s = d(0.05, 0.1)
    shapes.append(dict(kind=d.int(NUM_CLASSES), size=s, centre=(d(), d()),
                       angle=d(0, 2 * math.pi), colour=d.colour(), aux=(d(), d()),
                       shade=(d(-0.25, 0.25), d(0, 2 * math.pi))))
  label = d.int(NUM_CLASSES)
  s = d(0.18, 0.32)
  shapes.append(dict(kind=label, size=s, centre=(d(s + 0.02, 0.98 - s), d(s + 0.02, 0.98 - s)),
                     angle=d(0, 2 * math.pi), colour=_far_colour(d, mean_bg), aux=(d(), d()),
                     shade=(d(-0.3, 0.3), d(0, 2 * math.pi))))
  return dict(background=bg, shapes=shapes, label=label)


def _simple_scene(d: _Draws) -> dict:
  bg_kind = BACKGROUNDS.index(("linear", "radial")[d.int(2)])
  c0, c1 = d.colour(), d.colour()
  bg = dict(kind=bg_kind, c0=c0, c1=c1, angle=d(0, 2 * math.pi), period=0.1, phase=0.0,
            centre=(d(0.1, 0.9), d(0.1, 0.9)), radius=d(0.5, 1.0))
  label = d.int(NUM_CLASSES)
  s = d(0.18, 0.32)
  mean_bg = tuple((a + b) / 2 for a, b in zip(c0, c1))
  shape = dict(kind=label, size=s, centre=(d(s + 0.02, 0.98 - s), d(s + 0.02, 0.98 - s)),
               angle=d(0, 2 * math.pi), colour=_far_colour(d, mean_bg), aux=(d(), d()),
               shade=(d(-0.3, 0.3), d(0, 2 * math.pi)))
  return dict(background=bg, shapes=[shape], label=label)


# --- rendering ------------------------------------------------------------------------

def _sq_avg(t: np.ndarray, w: float) -> np.ndarray:
  """Box average, width w (in periods), of the square wave +1 on [0, 1/2), -1 on [1/2, 1)."""
  def tri(u):  # antiderivative of the square wave, zero mean
    return 0.25 - np.abs(u - np.floor(u) - 0.5)
  return (tri(t + w / 2) - tri(t - w / 2)) / w


def _cubic_weights(pos: np.ndarray, n: int) -> np.ndarray:
  """(len(pos), n + 3) Catmull-Rom interpolation weights of a lattice over [0, 1]."""
  g = pos * n
  i = np.floor(g).astype(np.int64)
  f = (g - i).astype(np.float32)
  f2, f3 = f * f, f * f * f
  w = np.stack([-0.5 * f3 + f2 - 0.5 * f, 1.5 * f3 - 2.5 * f2 + 1,
                -1.5 * f3 + 2 * f2 + 0.5 * f, 0.5 * f3 - 0.5 * f2], -1)
  out = np.zeros((len(pos), n + 3), np.float32)
  rows = np.arange(len(pos))[:, None]
  out[rows, np.clip(i, 0, n - 1)[:, None] + np.arange(4)] = w
  return out


def _background(bg: dict, res: int) -> np.ndarray:
  """(3, res, res) float32; channels first, since numpy broadcasts a trailing 3 slowly."""
  u = ((np.arange(res, dtype=np.float32) + 0.5) / res)
  p = 1.0 / res
  c0 = np.asarray(bg["c0"], np.float32)[:, None, None]
  c1 = np.asarray(bg["c1"], np.float32)[:, None, None]
  kind = BACKGROUNDS[bg["kind"]]
  ca, sa = math.cos(bg["angle"]), math.sin(bg["angle"])
  if kind == "linear":
    # Linear in x and y, so the point sample is the exact pixel average.
    t = (0.5 + (u[None, :] - 0.5) * (ca / 1.42) + (u[:, None] - 0.5) * (sa / 1.42))
  elif kind == "radial":
    cx, cy = bg["centre"]
    t = np.minimum(_len(u[None, :] - cx, u[:, None] - cy) / bg["radius"], 1.0)
  elif kind == "stripes":
    per = bg["period"]
    t = (u[None, :] * (ca / per) + u[:, None] * (sa / per) + bg["phase"])
    t = 0.5 + 0.5 * _sq_avg(t, p / per)
  elif kind == "checker":
    per = 2 * bg["period"]
    a = u[None, :] * (ca / per) + u[:, None] * (sa / per) + bg["phase"]
    b = u[:, None] * (ca / per) - u[None, :] * (sa / per)
    t = 0.5 + 0.5 * _sq_avg(a, p / per) * _sq_avg(b, p / per)
  else:  # noise: a smooth lattice field, interpolated separably (small matmuls)
    grid = bg["grid"]
    w = _cubic_weights(u, grid.shape[0] - 3)                    # (res, n + 3)
    f = np.stack([w @ grid[:, :, c] @ w.T for c in range(4)])   # (4, res, res)
    t = np.clip(f[0], 0, 1)
    return (c0 - 0.15) + (c1 - c0) * t + 0.3 * f[1:]
  return c0 + (c1 - c0) * t.astype(np.float32)


def _draw_shape(img: np.ndarray, sh: dict) -> None:
  res = img.shape[-1]
  p = 1.0 / res
  s = sh["size"]
  cx, cy = sh["centre"]
  r = _BOUND * s + 2 * p
  j0, j1 = max(int(math.floor((cx - r) * res)), 0), min(int(math.ceil((cx + r) * res)), res)
  i0, i1 = max(int(math.floor((cy - r) * res)), 0), min(int(math.ceil((cy + r) * res)), res)
  if j0 >= j1 or i0 >= i1:
    return
  x = ((np.arange(j0, j1, dtype=np.float32) + 0.5) * p - cx)[None, :]
  y = ((np.arange(i0, i1, dtype=np.float32) + 0.5) * p - cy)[:, None]
  ca, sa = math.cos(sh["angle"]), math.sin(sh["angle"])
  lx, ly = ca * x + sa * y, ca * y - sa * x
  dist = _SDF[sh["kind"]](lx, ly, s, sh["aux"])
  alpha = np.minimum(np.maximum(0.5 - dist * res, 0), 1)   # (np.clip is slower)
  # Soft directional shading, so that fills are not flat (shade > 0 wherever alpha > 0).
  k, th = sh["shade"]
  shade = 1 + (k / s) * (math.cos(th) * x + math.sin(th) * y)
  crop = img[:, i0:i1, j0:j1]
  for c, v in enumerate(sh["colour"]):
    crop[c] += alpha * (np.minimum(v * shade, 1) - crop[c])


def render(scene: dict, res: int) -> np.ndarray:
  """The scene as a (res, res, 3) uint8 image."""
  img = _background(scene["background"], res)   # a fresh (3, res, res) float32 array
  for sh in scene["shapes"]:
    _draw_shape(img, sh)
  out = np.empty((res, res, 3), np.uint8)
  for c in range(3):
    out[..., c] = np.clip(img[c] * 255 + 0.5, 0, 255)
  return out


def split_key(split: str) -> int:
  """Disjoint seed streams per split name (train, test, or any other)."""
  return zlib.crc32(split.encode())


class ShapesSource:
  """Random-access source: `len(src)` images, `src[i]` -> {'image': uint8, 'label': int32}."""

  num_classes = NUM_CLASSES

  def __init__(self, size: int, resolution: int, split: str = "train", seed: int = 0,
               style: str = "full"):
    if style not in STYLES:
      raise ValueError(f"shapes: style must be one of {', '.join(STYLES)}, got {style!r}")
    if size <= 0:
      raise ValueError(f"shapes: data.size must be positive, got {size}")
    if resolution < 1:
      raise ValueError(f"shapes: resolution must be positive, got {resolution}")
    self.size, self.resolution, self.split, self.seed = size, resolution, split, seed
    self.style = style
    self._key = split_key(split)

  def __len__(self) -> int:
    return self.size

  def scene(self, i: int) -> dict:
    rng = np.random.default_rng([0x5A4E5, self.seed, self._key, i])
    return sample_scene(rng, self.style)

  def __getitem__(self, i) -> dict:
    i = int(i)
    if not 0 <= i < self.size:
      raise IndexError(f"shapes: index {i} out of range for size {self.size}")
    sc = self.scene(i)
    return {"image": render(sc, self.resolution), "label": np.int32(sc["label"])}

  def __repr__(self) -> str:
    return (f"ShapesSource(size={self.size}, resolution={self.resolution}, "
            f"split={self.split!r}, style={self.style!r})")
