"""Front-ends that bring a high-resolution image down to the network's working resolution.

The 5/3 (LeGall) wavelet by lifting (docs/paper.md §2.3, paper section 3.4): linear and exactly
invertible, since every lifting step is undone by subtracting what it added. Multi-level
layout: the coarsest LL band first, then the detail bands of each level from coarse to fine,
finer levels moved to the coarsest resolution by space-to-depth; 512x512x3 with two levels
becomes 128x128x48 (3 + 9 + 36 channels).
"""
from __future__ import annotations

import jax.numpy as jnp


def _lift_fwd(x: jnp.ndarray, axis: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One 1-D 5/3 lifting step along `axis`; returns (low, high), each half as long."""
  n = x.shape[axis]
  if n % 2:
    raise ValueError(f"dwt53 needs an even size along axis {axis}, got {n}")
  s = jnp.take(x, jnp.arange(0, n, 2), axis=axis)
  d = jnp.take(x, jnp.arange(1, n, 2), axis=axis)
  # Predict: d[i] -= (s[i] + s[i+1]) / 2, with symmetric extension s[n/2] = s[n/2 - 1].
  s_next = jnp.concatenate([jnp.take(s, jnp.arange(1, s.shape[axis]), axis=axis),
                            jnp.take(s, jnp.array([s.shape[axis] - 1]), axis=axis)], axis=axis)
  d = d - 0.5 * (s + s_next)
  # Update: s[i] += (d[i-1] + d[i]) / 4, with symmetric extension d[-1] = d[0].
  d_prev = jnp.concatenate([jnp.take(d, jnp.array([0]), axis=axis),
                            jnp.take(d, jnp.arange(0, d.shape[axis] - 1), axis=axis)], axis=axis)
  s = s + 0.25 * (d_prev + d)
  return s, d


def _lift_inv(s: jnp.ndarray, d: jnp.ndarray, axis: int) -> jnp.ndarray:
  m = d.shape[axis]
  d_prev = jnp.concatenate([jnp.take(d, jnp.array([0]), axis=axis),
                            jnp.take(d, jnp.arange(0, m - 1), axis=axis)], axis=axis)
  s = s - 0.25 * (d_prev + d)
  s_next = jnp.concatenate([jnp.take(s, jnp.arange(1, m), axis=axis),
                            jnp.take(s, jnp.array([m - 1]), axis=axis)], axis=axis)
  d = d + 0.5 * (s + s_next)
  # Interleave even (s) and odd (d) samples back along `axis`.
  x = jnp.stack([s, d], axis=axis + 1)
  shape = list(s.shape)
  shape[axis] = 2 * m
  return x.reshape(shape)


def _dwt2d(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One 2-D level on NHWC: returns LL (N,H/2,W/2,C) and details LH,HL,HH (N,H/2,W/2,3C)."""
  lo, hi = _lift_fwd(x, axis=1)
  ll, lh = _lift_fwd(lo, axis=2)
  hl, hh = _lift_fwd(hi, axis=2)
  return ll, jnp.concatenate([lh, hl, hh], axis=-1)


def _idwt2d(ll: jnp.ndarray, details: jnp.ndarray) -> jnp.ndarray:
  lh, hl, hh = jnp.split(details, 3, axis=-1)
  lo = _lift_inv(ll, lh, axis=2)
  hi = _lift_inv(hl, hh, axis=2)
  return _lift_inv(lo, hi, axis=1)


def space_to_depth(x: jnp.ndarray, k: int) -> jnp.ndarray:
  n, h, w, c = x.shape
  x = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // k, w // k, k * k * c)


def depth_to_space(x: jnp.ndarray, k: int) -> jnp.ndarray:
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, k, k, c // (k * k)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * k, w * k, c // (k * k))


def dwt53(x: jnp.ndarray, levels: int) -> jnp.ndarray:
  """(N, H, W, C) -> (N, H/2^L, W/2^L, C * 4^L): coarsest LL, then details coarse to fine."""
  if levels < 1:
    return x
  details = []
  ll = x
  for _ in range(levels):
    ll, det = _dwt2d(ll)
    details.append(det)
  out = [ll]
  for lvl in reversed(range(levels)):       # coarsest level first
    k = 2 ** (levels - 1 - lvl)
    out.append(space_to_depth(details[lvl], k) if k > 1 else details[lvl])
  return jnp.concatenate(out, axis=-1)


def idwt53(y: jnp.ndarray, levels: int) -> jnp.ndarray:
  """Exact inverse of dwt53."""
  if levels < 1:
    return y
  c = y.shape[-1] // (4 ** levels)
  ll = y[..., :c]
  offset = c
  for lvl in reversed(range(levels)):       # same order as dwt53 wrote them
    k = 2 ** (levels - 1 - lvl)
    width = 3 * c * k * k
    det = y[..., offset:offset + width]
    offset += width
    if k > 1:
      det = depth_to_space(det, k)
    ll = _idwt2d(ll, det)
  return ll


def parse_frontend(spec: str) -> tuple[str, int]:
  """'none' -> ('none', 1); 'dwt:2' -> ('dwt', 2 levels); 'patch:4' -> ('patch', 4)."""
  if spec in ("none", "", None):
    return "none", 1
  kind, _, arg = str(spec).partition(":")
  if kind not in ("dwt", "patch") or not arg.isdigit() or int(arg) < 1:
    raise ValueError(f"bad model.frontend {spec!r}; use none, dwt:L or patch:k")
  return kind, int(arg)


def frontend_factor(spec: str) -> int:
  """How much the front-end divides the spatial resolution."""
  kind, arg = parse_frontend(spec)
  return {"none": 1, "dwt": 2 ** arg, "patch": arg}[kind]
