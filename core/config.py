"""Typed, frozen configuration at the core's boundary.

Values marked [?] in docs/paper.md (its section 5) are plain fields here, so that a sweep can
change them; the comment beside each says which reading is the default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
  """A bad key or value, reported on one line with the offending key."""


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  name: str = "cosine"            # cosine | shifted | interpolated (docs/paper.md §1.2)
  logsnr_min: float = -15.0
  logsnr_max: float = 15.0
  noise_d: int = 64               # shifted: reference resolution of eq. 5
  noise_d_low: int = 32           # interpolated (eq. 6): the shift used at t = 1
  noise_d_high: int = 256         # interpolated (eq. 6): the shift used at t = 0


@dataclasses.dataclass(frozen=True)
class LossConfig:
  name: str = "eps_mse"           # eps_mse (paper, weight 1) | v_mse (U-ViT config [?]) | x_mse |
                                  # sigmoid (SiD2: Kingma-Gao weight sigmoid(b - logsnr) on the
                                  # ELBO integrand); each is a weight on the x error (core.diffusion.process)
  weight_cap: float = 0.0         # > 0: that weight capped at this value (eps_mse with cap gamma
                                  # is Min-SNR-gamma, Hang et al. 2023); 0: no cap
  sigmoid_bias: float = 0.0       # SiD2 bias b: 0 at 128, -1 at 256, -3 at 512 [?]
  multiscale: bool = False        # section 3.2
  multiscale_base: int = 32       # lowest resolution s of the multiscale sum
  stratified_t: bool = False      # t stratified across the batch instead of i.i.d. uniform


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  preset: str = ""                # the preset this config came from (a record; see core.models)
  arch: str = "unet"              # unet | uvit
  base_channels: int = 128
  emb_channels: int = 1024
  channel_multiplier: tuple[int, ...] = (1, 2, 4, 8, 8)
  num_res_blocks: tuple[int, ...] = (3, 4, 4, 12, 4)
  attn_resolutions: tuple[int, ...] = (8, 16)
  num_heads: int = 4
  num_transformer_blocks: int = 0  # uvit: blocks at the lowest resolution (36 in the paper)
  mlp_ratio: int = 4               # uvit transformer MLP width / model width
  dropout: float = 0.1
  dropout_max_res: int = 16        # dropout only in blocks at feature resolution <= this
  frontend: str = "none"           # none | dwt:L | patch:k
  num_classes: int = 1000          # 0: unconditional; label num_classes is the null class
  in_channels: int = 3
  out_channels: int = 3
  cond_channels: int = 0           # CDM super-resolution: channels of the upsampled low-res image
  cond_noise_embedding: bool = False  # CDM: the augmentation level s is embedded as well
  norm_groups: int = 32
  dtype: str = "float32"           # compute dtype (bfloat16 for mixed precision)
  prediction: str = "v"            # what the network outputs: v (the paper) | eps | x (JiT)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  name: str = "ddpm"              # ddpm (appendix, ancestral) | ddim (deterministic)
  steps: int = 256                # [?] the paper does not state the step count of its tables;
                                  # reading used: 256 (its appendix sampler); W.A.L.T reports
                                  # simple diffusion sampled at 512 (sampler.steps=512). Tables
                                  # print the steps each run's eval.json records.
  noise_param: float = 0.2        # [?] 0.2 default, 1.0 for the MS-COCO numbers
  clip_x: bool = True             # [?] whether x_hat is clipped to [-1, 1]
  guidance_scale: float = 1.0     # paper's scale = 1 + eta; 1.0 is no guidance
  guidance_t_min: float = 0.0     # SiD2: guidance only for t in [guidance_t_min, guidance_t_max]
  guidance_t_max: float = 1.0
  # CDM super-resolution stages (docs/paper.md §4). Sampling-time only, so that an s-sweep shares
  # one trained model (sweeps.spec.train_key ignores the sampler section).
  # Sampling under another noise schedule than training's (EDM and Chen 2023 set the two apart;
  # the network is conditioned on logSNR, so the sampler may visit other levels' spacing):
  # "" samples with the training schedule; cosine | shifted | interpolated name another, with
  # the training schedule's end points and, for shifted, schedule_noise_d (0: training's).
  schedule: str = ""
  schedule_noise_d: int = 0
  cond_s: float = 0.0             # augmentation level s of the low-res input, picked by a search
  cond_truncated: bool = False    # truncated: stop the lower stage at s instead of re-noising x_0


@dataclasses.dataclass(frozen=True)
class CondConfig:
  """Conditioning task of the model (core.diffusion.conditioning.TASKS) and CDM's training-time
  conditioning augmentation (docs/paper.md §4.2). s is a time in [0, 1] of the run's noise
  schedule at low_resolution, i.e. of the lower stage's forward process."""
  task: str = "none"              # none | super_res
  low_resolution: int = 0         # super_res: side of the low-res input (area-downsampled batch)
  upsample: str = "bicubic"       # [?] low-res -> resolution (jax.image.resize); SR3/CDM: bicubic
  noise_s_min: float = 0.0        # non-truncated noise augmentation: s ~ U(min, max) per example,
  noise_s_max: float = 0.5        # [?] unstated (docs/paper.md N2); max 0: no noise
  blur_prob: float = 0.5          # share of training examples blurred (docs/paper.md §4.2)
  blur_sigma_min: float = 0.4     # [?] unstated (docs/paper.md N3); CDM's reading:
  blur_sigma_max: float = 0.6     #     sigma ~ U(0.4, 0.6), a 3 x 3 kernel, on the low-res image
  blur_size: int = 3


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """A run sampled through a cascade (docs/paper.md §4): the lower stages are trained as runs of
  their own (core.diffusion.cdm.stage_configs, by sweeps.run); this config's model is the last stage."""
  stages: tuple[int, ...] = ()    # resolutions of the lower stages, base first; () = single stage
  base_preset: str = ""           # model preset of the base stage ("": this run's model)
  base_steps: int = 0             # training steps of the base stage (0: train.steps)
  augment: tuple[str, ...] = ()   # per super-resolution stage, lowest first: noise | blur |
                                  # noise+blur (core.diffusion.cdm.AUGMENTATIONS); (): each as cond.* says


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "shapes"          # shapes | shapes_simple | folder | npz | tfds | array_record
  path: str = ""                  # folder / npz / array_record path, or tfds name
  split: str = "train"
  eval_split: str = "test"        # for FID "eval" statistics
  num_classes: int = 10
  size: int = 50_000              # shapes: number of images in the (virtual) data set
  # The content's resolution (the paper's section 3.1 thought experiment, made runnable): images
  # are made at min(content_resolution, resolution) (shapes rendered there, files downsampled to
  # it) and upsampled to the training resolution with `upsample`, so that every resolution
  # carries the same content. 0: made at the training resolution.
  content_resolution: int = 0
  upsample: str = "bicubic"       # nearest | bilinear | bicubic | lanczos (core.data.images)
  random_flip: bool = True
  shuffle_seed: int = 0
  skip_corrupt: bool = False      # False: a file that cannot be decoded stops the run
  num_workers: int = 0
  prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 5e-5                # U-Net 5e-5, U-ViT 1e-4
  b1: float = 0.9
  b2: float = 0.99                # 0.999 for the ImageNet-128 U-Net
  eps: float = 1e-12
  warmup_steps: int = 10_000
  grad_clip: float = 1.0
  weight_decay: float = 0.0
  ema_decay: float = 0.9999
  # [?] unstated (docs/paper.md N6): decay min(ema_decay, (1 + k) / (10 + k)) at step k
  # (TF's num_updates form), so that a short run's EMA is not dominated by its first, untrained
  # steps. The paper's 0.9999 over millions of steps needs none (default off); the cpu tier's
  # runs do.
  ema_warmup: bool = False
  # Post-hoc EMA (EDM2, Karras et al. 2024; core.runtime.phema): power-function EMA profiles of these
  # sigma_rel are tracked beside ema_params (which stays as it is) and snapshotted every
  # phema_every steps and at the last into <model dir>/phema/, so that evaluation can
  # reconstruct any EMA length (ema.sigma_rel). Off at every tier: optim.phema=true turns it
  # on (a model of its own: its key differs).
  phema: bool = False
  phema_sigma_rels: tuple[float, ...] = (0.05, 0.10)   # EDM2's two profiles
  phema_every: int = 0            # snapshot interval in steps; 0: train.steps // 20 (EDM2 keeps
                                  # one every 8Mi images, a few hundred over its runs)


@dataclasses.dataclass(frozen=True)
class EmaConfig:
  """Which average of the trained parameters evaluation uses (may change at evaluation)."""
  sigma_rel: float = 0.0          # 0: the run's own EMA (optim.ema_decay); > 0: the post-hoc
                                  # EMA of this relative std (EDM2), from optim.phema's snapshots


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 512
  seed: int = 0
  log_every: int = 50
  ckpt_every: int = 1000
  keep_ckpts: int = 2
  label_dropout: float = 0.1      # [?] unstated (docs/paper.md N5): labels dropped, for guidance
  fsdp: bool = False              # shard parameters over the data axis
  distributed: bool = False       # call jax.distributed.initialize() (TPU VM, SLURM)
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  progress: bool = True
  log_to: tuple[str, ...] = ()    # metrics also to tensorboard | wandb (core.runtime.log)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  num_samples: int = 50_000
  batch_size: int = 256
  fid: bool = True
  inception_weights: str = ""     # local path; else $SIMPLEDIFF_INCEPTION or download
  compute_is: bool = True
  stats_dir: str = ""             # cache of reference statistics (default ~/.cache/simplediff)
  grid_size: int = 64             # images in the PNG sample grid
  ref_num: int = 0                # images of each reference split (0: the split, at most 50k)
  seed: int = 0                   # sampling seed (labels and noise)
  # The variational bound in bits/dim (VDM; core.diffusion.bound) on held-out images of each split, under
  # one fixed evaluation schedule between fixed end points whatever the run was trained with,
  # so that it scores every arm of a sweep alike; class-conditional models get the images'
  # true labels. [?] Unstated (docs/paper.md N7): the end points are a reading. -12 and 10 lie
  # inside the trained range of every arm of the noise-shift study at every tier (cosine
  # [-15, 15] shifted by 0 to -4.16 nats: the narrowest is [-19.2, 10.8]); at 10 the decoder's
  # sigma / alpha = e^-5 = 0.0067 is below the 2/255 = 0.0078 spacing of the data's values, so
  # it still tells neighbouring values apart (its term is then 1.83 bits/dim on the cpu tier's
  # data, the same for every model; a higher end would make it smaller but leave some arms'
  # trained range).
  bound: bool = True
  bound_num: int = 0              # images of each split; 0: as many as the samples scored
                                  # (eval.num_samples; eval.grid_size with eval.fid off)
  bound_times: int = 8            # times per image (a randomly shifted lattice)
  bound_logsnr_min: float = -12.0
  bound_logsnr_max: float = 10.0
  bound_schedule: str = "linear"  # where the times fall between the end points (core.diffusion.bound
                                  # EVAL_SCHEDULES): linear in logSNR | cosine; the bound does
                                  # not depend on it, its standard error does
  # The oracle (core.metrics.oracle; this toolkit's metrics beside the paper's FID and IS) where the
  # data are procedural scenes (shapes, shapes_simple): the kind read back from class-
  # conditional samples against the label asked, a Fréchet distance in the oracle's features,
  # the scene parameters read back; samples read at the content resolution. On at the gpu and
  # cpu tiers (ablations/_tiers.yaml); off by default, since a data set and resolution without
  # a cached or shipped oracle trains one first (minutes).
  oracle: bool = False
  oracle_num: int = 0             # samples it reads; 0: those Inception scores (eval.num_samples);
                                  # more are drawn after those, from a stream of their own
  oracle_recipe: str = "default"  # core.metrics.oracle.RECIPES: default | quick (tests)
  # Memorisation (core.metrics.memorisation): each sample's nearest training images at the content
  # resolution (copy fraction, nearest-neighbour ratio to held-out images), in the record and
  # the learning curve; for small training sets (data.size) seen for many epochs.
  memorisation: bool = False
  memorisation_train: int = 0     # training images compared against; 0: the split, at most 50,000
  # Learning curves: every N training steps (0: none), curve_num samples of the EMA model are
  # read by the oracle into <model dir>/curve.jsonl, with FID @content at the points whose step
  # is a multiple of curve_fid_every (0: none; Inception is ~15 images/s on 2 cores). Drawn
  # with the evaluation's keys, so each point reads the same noise and labels.
  every: int = 0
  curve_num: int = 256
  curve_fid_every: int = 0


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "run"
  resolution: int = 32
  model: ModelConfig = ModelConfig()
  schedule: ScheduleConfig = ScheduleConfig()
  loss: LossConfig = LossConfig()
  sampler: SamplerConfig = SamplerConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  cond: CondConfig = CondConfig()
  cascade: CascadeConfig = CascadeConfig()
  ema: EmaConfig = EmaConfig()


def _coerce(value: Any, tp: Any, key: str) -> Any:
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    if not isinstance(value, dict):
      raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
    return from_dict(tp, value, prefix=key + ".")
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
      return None
    return _coerce(value, args[0], key)
  if origin is tuple:
    if isinstance(value, (int, float, str)):
      value = [value]
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
    (elem, *_) = typing.get_args(tp)
    return tuple(_coerce(v, elem, key) for v in value)
  if tp is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
  if tp is int:
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, float) and value.is_integer())):
      try:
        if isinstance(value, str):
          return int(value)
      except ValueError:
        pass
      raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    return int(value)
  if tp is float:
    if isinstance(value, bool):
      raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
  if tp is str:
    if isinstance(value, (dict, list)):
      raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return str(value)
  return value


def from_dict(cls: type, d: dict[str, Any], prefix: str = ""):
  """Builds dataclass `cls` from a nested dict; unknown keys and bad values raise ConfigError."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for k, v in d.items():
    if k not in names:
      raise ConfigError(f"unknown config key {prefix + k!r}; valid keys under "
                        f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    kwargs[k] = _coerce(v, hints[k], prefix + k)
  return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
  """Nested plain dict (tuples as lists), fit for YAML and JSON."""
  def conv(x):
    if dataclasses.is_dataclass(x):
      return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple):
      return [conv(v) for v in x]
    return x
  return conv(cfg)


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
  """Sets d['a']['b'] = value for key 'a.b', creating mappings on the way."""
  parts = key.split(".")
  for p in parts[:-1]:
    nxt = d.setdefault(p, {})
    if not isinstance(nxt, dict):
      raise ConfigError(f"config key {key!r}: {p!r} is not a mapping")
    d = nxt
  d[parts[-1]] = value


def parse_assignments(items: list[str]) -> dict[str, Any]:
  """Command-line `key=value` strings -> {dotted key: value}, each value read as YAML (so
  3, true, [a, b] are typed; the config's own types check them later), or kept as the string
  where it is not YAML. The one reader of key=value for the sweep runner and core.evaluate."""
  import yaml
  out: dict[str, Any] = {}
  for it in items:
    if "=" not in it:
      raise ConfigError(f"override {it!r} is not of the form key=value")
    k, v = it.split("=", 1)
    try:
      out[k] = yaml.safe_load(v)
    except yaml.YAMLError:
      out[k] = v
  return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
  """Recursive merge; `over` wins. Neither input is modified."""
  out = dict(base)
  for k, v in over.items():
    if isinstance(v, dict) and isinstance(out.get(k), dict):
      out[k] = deep_merge(out[k], v)
    else:
      out[k] = v
  return out


def replace(cfg, **dotted: Any):
  """Returns cfg with dotted keys replaced, e.g. replace(cfg, **{'model.dropout': 0.0})."""
  d = to_dict(cfg)
  for k, v in dotted.items():
    set_dotted(d, k, v)
  return from_dict(type(cfg), d)


# Counts and sizes that no run can have at zero or below: caught when the config is resolved,
# not as a division by zero or an empty loop mid-run.
POSITIVE = ("resolution", "train.steps", "train.batch_size", "train.log_every",
            "train.ckpt_every", "eval.num_samples", "eval.batch_size", "sampler.steps",
            "eval.bound_times", "eval.curve_num")


# Counts that may be zero but not below.
NON_NEGATIVE = ("data.num_workers", "data.prefetch", "data.content_resolution",
                "loss.weight_cap", "eval.bound_num", "optim.phema_every", "eval.oracle_num",
                "eval.every", "sampler.schedule_noise_d", "eval.curve_fid_every",
                "eval.memorisation_train")


def get_dotted(cfg, key: str) -> Any:
  for part in key.split("."):
    cfg = getattr(cfg, part)
  return cfg


def check_values(cfg: ExperimentConfig) -> None:
  """Values of the right type that are impossible raise ConfigError, naming the key."""
  for key in POSITIVE:
    v = get_dotted(cfg, key)
    if v < 1:
      raise ConfigError(f"{key}={v} is impossible: it must be a positive integer (pass {key}=N, "
                        "N >= 1)")
  for key in NON_NEGATIVE:
    v = get_dotted(cfg, key)
    if v < 0:
      raise ConfigError(f"{key} must be >= 0, got {v}")
  e = cfg.eval
  if not e.bound_logsnr_min < e.bound_logsnr_max:
    raise ConfigError(f"eval.bound_logsnr_min={e.bound_logsnr_min:g} must be below "
                      f"eval.bound_logsnr_max={e.bound_logsnr_max:g}")
  # a power-function profile is t^gamma, gamma >= 0: sigma_rel below 1/sqrt(12) = 0.2887
  # (core.runtime.phema.exp_to_std(0))
  for key, values in (("ema.sigma_rel", [cfg.ema.sigma_rel] if cfg.ema.sigma_rel else []),
                      ("optim.phema_sigma_rels", list(cfg.optim.phema_sigma_rels))):
    for v in values:
      if not 0 < v < 0.288:
        raise ConfigError(f"{key}={v:g} is outside (0, 0.288), the lengths a power-function "
                          f"EMA can have; pass {key} between, e.g. 0.05 to 0.15 (EDM2)")
  if cfg.optim.phema and not cfg.optim.phema_sigma_rels:
    raise ConfigError("optim.phema=true needs optim.phema_sigma_rels, e.g. [0.05, 0.1] (EDM2)")


def check_choice(key: str, value: str, registry) -> None:
  """`value` names a component of `registry` (core.registry.Registry), else a ConfigError
  naming the key and the choices."""
  if value not in registry:
    raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(registry.names())}")


def flatten(d: dict[str, Any], prefix: str = "", leaf=lambda v: False) -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; a dict for which leaf(v) is true stays one value."""
  out: dict[str, Any] = {}
  for k, v in d.items():
    if isinstance(v, dict) and not leaf(v):
      out.update(flatten(v, f"{prefix}{k}.", leaf))
    else:
      out[f"{prefix}{k}"] = v
  return out
