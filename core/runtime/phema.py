"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of
diffusion models" (EDM2), section 3 and appendix C; facts from its training/phema.py).

Training tracks power-function EMA profiles: the average at step T weights the parameters of
step t in proportion to t^gamma (t <= T), whose spread relative to T is
sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 eq. 123). Their snapshots
are kept (optim.phema), and after training the profile of any sigma_rel at a snapshot's step
is the least-squares combination of the snapshots' profiles (appendix C.3): evaluation asks
for it with ema.sigma_rel. The maths is numpy only (analysis reads it without JAX); the
snapshot files live in <model dir>/phema/.
"""
from __future__ import annotations

import io
import os
import re
from typing import Any, Sequence

import numpy as np

SNAPSHOTS = "phema"            # the folder in a model directory
_NAME = re.compile(r"^(\d{8})\.npz$")


def exp_to_std(gamma):
  """sigma_rel of the profile t^gamma on [0, 1] (EDM2 eq. 123)."""
  g = np.float64(gamma)
  return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def std_to_exp(sigma_rel):
  """gamma of the profile with this sigma_rel: the largest real root of
  gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0 (EDM2 eq. 126, algorithm 2)."""
  s = np.asarray(sigma_rel, np.float64)
  out = [np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max() for t in s.reshape(-1) ** -2]
  return np.asarray(out, np.float64).reshape(s.shape)


def power_beta(gamma: float, t):
  """The decay of the update that makes step t (t >= 1) for the profile t^gamma:
  (1 - 1/t)^(gamma + 1) (EDM2 eq. 127); 0 at t = 1, so the first average is that step's
  parameters. Works on numpy and jax arrays alike."""
  return (1.0 - 1.0 / t) ** (gamma + 1.0)


def ema_weights(decays: Sequence[float]) -> np.ndarray:
  """The weights an EMA e_{k+1} = d_k e_k + (1 - d_k) theta_{k+1} (e_0 = theta_0) puts on
  theta_0 .. theta_T after T = len(decays) updates; they sum to one. Computed in logs, so a
  decay of 0.9999 over millions of steps underflows only weights that are negligible."""
  d = np.asarray(decays, np.float64)
  with np.errstate(divide="ignore"):
    log_d, log_1md = np.log(d), np.log1p(-d)
  after = np.concatenate([np.cumsum(log_d[::-1])[::-1], [0.0]])  # sum of log d_k for k >= j
  log_w = np.concatenate([[after[0]], log_1md + after[1:]])
  return np.exp(log_w)


def profile_sigma_rel(weights: Sequence[float]) -> float:
  """The std of a weight profile over training time t / T (weights on steps 0 .. T): EDM2's
  definition of an average's length, which any EMA (power-function or not) has."""
  w = np.asarray(weights, np.float64)
  w = w / w.sum()
  t = np.arange(len(w)) / (len(w) - 1)
  mean = np.sum(w * t)
  return float(np.sqrt(np.sum(w * (t - mean) ** 2)))


def profile_inner(a_t, a_gamma, b_t, b_gamma):
  """Inner product over time of two power-function profiles, each normalised to unit mass on
  [0, T]: p(t) = (gamma + 1) t^gamma / T^(gamma + 1). The integral over [0, min(T_a, T_b)] in
  closed form (EDM2 eq. 151, algorithm 3)."""
  a_t, a_gamma, b_t, b_gamma = (np.asarray(x, np.float64) for x in (a_t, a_gamma, b_t, b_gamma))
  ratio = a_t / b_t
  expo = np.where(a_t < b_t, b_gamma, -a_gamma)
  num = (a_gamma + 1) * (b_gamma + 1) * ratio ** expo
  return num / ((a_gamma + b_gamma + 1) * np.maximum(a_t, b_t))


def solve_weights(in_t, in_sigma_rel, out_t: float, out_sigma_rel: float) -> np.ndarray:
  """The snapshot weights whose combination of the snapshots' profiles (at steps in_t, with
  in_sigma_rel) is closest in L2 to the profile (out_t, out_sigma_rel): the normal equations
  of EDM2's algorithm 3, then scaled to sum to one, so that a constant trajectory is
  reconstructed exactly."""
  in_t = np.asarray(in_t, np.float64).reshape(-1)
  in_g = std_to_exp(np.broadcast_to(np.asarray(in_sigma_rel, np.float64), in_t.shape))
  out_g = std_to_exp(np.float64(out_sigma_rel))
  gram = profile_inner(in_t[:, None], in_g[:, None], in_t[None, :], in_g[None, :])
  rhs = profile_inner(in_t, in_g, np.float64(out_t), out_g)
  x = np.linalg.solve(gram, rhs)
  return x / x.sum()


# ---------------------------------------------------------------------------------------------
# Snapshots: <model dir>/phema/<step:08d>.npz, every tracked profile's parameters at one step.


def _leaf_names(tree) -> list[str]:
  import jax
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in paths]


def snapshot_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, SNAPSHOTS, f"{int(step):08d}.npz")


def save_snapshot(model_dir: str, step: int, profiles: Sequence[Any],
                  sigma_rels: Sequence[float]) -> str:
  """Writes the tracked profiles (one parameter tree each, host arrays) at `step`, atomically:
  a snapshot rewritten by a resumed run is replaced whole."""
  import jax
  from core.runio import write_bytes_atomic
  arrays = {"step": np.int64(step), "sigma_rel": np.asarray(sigma_rels, np.float64)}
  for j, tree in enumerate(profiles):
    for name, leaf in zip(_leaf_names(tree), jax.tree.leaves(tree)):
      arrays[f"{j}/{name}"] = np.asarray(leaf)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  path = snapshot_path(model_dir, step)
  write_bytes_atomic(path, buf.getvalue())
  return path


def snapshot_steps(model_dir: str) -> list[int]:
  """The steps of a model directory's snapshots, ascending ([] without any)."""
  d = os.path.join(model_dir, SNAPSHOTS)
  if not os.path.isdir(d):
    return []
  return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(d)) if m)


def reconstruct(model_dir: str, like, sigma_rel: float, step: int):
  """The post-hoc EMA of relative std `sigma_rel` at `step` (a snapshot's step) from the
  snapshots up to it, as a tree shaped like `like` (the model's parameters). A ConfigError
  names the fix where there are no snapshots or none at `step`."""
  import jax
  from core.config import ConfigError
  steps = [s for s in snapshot_steps(model_dir) if 0 < s <= step]
  if not steps:
    raise ConfigError(f"ema.sigma_rel={sigma_rel:g}: {model_dir} has no post-hoc EMA snapshots "
                      f"({SNAPSHOTS}/); train it with optim.phema=true, or leave ema.sigma_rel "
                      "at 0 (the run's own EMA)")
  if steps[-1] != step:
    raise ConfigError(f"ema.sigma_rel={sigma_rel:g}: {model_dir}/{SNAPSHOTS} has no snapshot at "
                      f"the checkpoint's step {step} (the last is {steps[-1]}); finish training "
                      "it with optim.phema=true")
  files = [np.load(snapshot_path(model_dir, s)) for s in steps]
  sig = [np.asarray(f["sigma_rel"], np.float64) for f in files]
  in_t = np.concatenate([np.full(len(s), t, np.float64) for s, t in zip(sig, steps)])
  coef = solve_weights(in_t, np.concatenate(sig), step, sigma_rel)
  names, treedef = _leaf_names(like), jax.tree.structure(like)
  leaves = [np.asarray(x) for x in jax.tree.leaves(like)]
  acc = [np.zeros(x.shape, np.float64) for x in leaves]
  i = 0
  for f, s in zip(files, sig):
    for j in range(len(s)):
      for a, name in zip(acc, names):
        a += coef[i] * f[f"{j}/{name}"]
      i += 1
    f.close()
  return jax.tree.unflatten(treedef, [a.astype(x.dtype) for a, x in zip(acc, leaves)])
