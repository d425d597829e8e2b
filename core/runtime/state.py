"""The training state and what builds it: TrainState, the optimiser (docs/paper.md §2.4), the EMA,
the shardings (data parallel or FSDP over the mesh axis 'data') and StateSpec, one config's
model with its state's shapes and shardings. Shared by the training engine (core.train) and by
checkpoint reading for evaluation (core.runtime.checkpoint), which needs no training step.
"""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from core import models

from core.runtime import phema
from core.diffusion.conditioning import make_task
from core.config import ExperimentConfig, OptimConfig
from core.devices import make_mesh
from core.diffusion.schedules import make_schedule


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any


@flax.struct.dataclass
class PhemaTrainState(TrainState):
  """A TrainState with the tracked post-hoc EMA profiles (optim.phema): one parameter tree per
  optim.phema_sigma_rels. Its own class, so that checkpoints without them still restore."""
  phema: Any


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Learning rate by update count: linear warm-up from 0, then constant (docs/paper.md §2.4)."""
  return optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """Adam (beta2 0.99, eps 1e-12), lr_schedule, clipping at 1.0 (docs/paper.md §2.4)."""
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
  parts.append(optax.adam(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(-cfg.weight_decay * cfg.lr))
  return optax.chain(*parts)


def ema_decay(cfg: OptimConfig, step):
  """The EMA decay at step `step` (the update that makes step + 1); see OptimConfig."""
  if not cfg.ema_warmup:
    return cfg.ema_decay
  k = jnp.asarray(step, jnp.float32)
  return jnp.minimum(cfg.ema_decay, (1.0 + k) / (10.0 + k))


def ema_sigma_rel(cfg: OptimConfig, steps: int) -> float:
  """The length of the run's own EMA (ema_decay over `steps` updates) as EDM2 measures any
  average: the std of its weights over training time, relative to the run's length; what
  ema.sigma_rel would have to be for a post-hoc EMA of the same length."""
  decays = np.broadcast_to(np.asarray(ema_decay(cfg, np.arange(steps))), (steps,))
  return phema.profile_sigma_rel(phema.ema_weights(decays))


def learning_rate(cfg: OptimConfig, step) -> float:
  """lr_schedule at `step` as a host float (the metrics rows' "lr"), computed in float64."""
  with jax.enable_x64(True):
    return float(lr_schedule(cfg)(int(step)))


def fsdp_spec(shape, n: int) -> P:
  """Shards the largest axis divisible by the mesh size; small or indivisible leaves replicate."""
  if n == 1 or not shape or int(np.prod(shape)) < 2 ** 14:
    return P()
  for ax in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[ax] % n == 0:
      spec = [None] * len(shape)
      spec[ax] = "data"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool):
  n = mesh.devices.size
  def leaf(x):
    return NamedSharding(mesh, fsdp_spec(x.shape, n) if fsdp else P())
  return jax.tree.map(leaf, abstract_state)


def map_null_labels(labels, num_classes: int):
  """Samplers mark the null class by -1; the model's null class is index num_classes."""
  if labels is None or num_classes == 0:
    return None
  return jnp.where(labels < 0, num_classes, labels)


class StateSpec:
  """One experiment config's model, conditioning task, schedule and optimiser, and its
  TrainState's shapes and shardings over a mesh: what training (core.train.Trainer adds the
  step) and restoring a checkpoint for evaluation (core.runtime.checkpoint) share."""

  def __init__(self, cfg: ExperimentConfig, mesh: Optional[Mesh] = None):
    self.cfg = cfg
    self.mesh = mesh or make_mesh(batch=cfg.train.batch_size)
    self.model = models.build_model(cfg.model, cfg.resolution)
    self.task = make_task(cfg)   # extra model inputs, e.g. CDM's low-res image (cond.task)
    self.schedule = make_schedule(cfg.schedule, cfg.resolution)
    self.optimizer = make_optimizer(cfg.optim)
    # the power-function exponents of the tracked post-hoc EMA profiles (EDM2 eq. 126)
    self.phema_gammas = tuple(float(g) for g in phema.std_to_exp(
        cfg.optim.phema_sigma_rels)) if cfg.optim.phema else ()
    self.abstract_state = jax.eval_shape(self._init, jax.random.key(0))
    self.state_sharding = state_shardings(self.abstract_state, self.mesh, cfg.train.fsdp)
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.replicated = NamedSharding(self.mesh, P())
    self.init = jax.jit(self._init, out_shardings=self.state_sharding)

  def _init(self, key) -> TrainState:
    params = models.init_params(self.cfg.model, self.cfg.resolution, key)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       ema_params=jax.tree.map(jnp.copy, params),
                       opt_state=self.optimizer.init(params))
    if not self.phema_gammas:
      return state
    return PhemaTrainState(**vars(state), phema=tuple(
        jax.tree.map(jnp.copy, params) for _ in self.phema_gammas))

  def apply(self, params, z, logsnr, labels, *, train: bool, rng=None, **kw):
    labels = map_null_labels(labels, self.cfg.model.num_classes)
    rngs = {"dropout": rng} if rng is not None else {}
    return self.model.apply({"params": params}, z, logsnr, labels, train=train, rngs=rngs, **kw)
