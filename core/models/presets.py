"""Named model configurations: the paper's (docs/paper.md §2.5) and small CPU ones."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from core.config import ConfigError, ModelConfig
from core.registry import Registry

PRESETS: Registry[Callable[[], ModelConfig]] = Registry("model preset")

# The resolution each paper preset was trained at (for param_count and reports).
PAPER_RESOLUTIONS: dict[str, int] = {
  "unet128": 128, "unet256": 256, "unet512": 512,
  "unet512_none": 512, "unet512_dwt1": 512, "unet512_patch2": 512,
  "unet512_dwt2": 512, "unet512_patch4": 512,
  "uvit128": 128, "uvit256": 256, "uvit512": 512,
}


def preset(name: str, **overrides: Any) -> ModelConfig:
  """The preset `name` with fields replaced; an unknown field raises ConfigError."""
  cfg = PRESETS.get(name)()
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  for k in overrides:
    if k not in fields:
      raise ConfigError(f"unknown model config key {k!r} for preset {name!r}; valid keys: "
                        f"{', '.join(sorted(fields))}")
  # Lists become tuples so that the config stays hashable (a static jit argument).
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  return dataclasses.replace(cfg, **overrides)


# U-Net, common to all paper sizes (docs/paper.md §2.1): base 128, emb 1024, attention at 8 and
# 16 with 4 heads, dropout 0.1 at <= 16x16, ImageNet's 1000 classes.
_UNET = dict(arch="unet", base_channels=128, emb_channels=1024, attn_resolutions=(8, 16),
             num_heads=4, dropout=0.1, dropout_max_res=16, num_classes=1000)


def _unet(mult, blocks, frontend="none") -> ModelConfig:
  return ModelConfig(channel_multiplier=tuple(mult), num_res_blocks=tuple(blocks),
                     frontend=frontend, **_UNET)


@PRESETS.register("unet128")
def unet128() -> ModelConfig:
  return _unet([1, 2, 4, 8, 8], [3, 4, 4, 12, 4])


@PRESETS.register("unet256")
def unet256() -> ModelConfig:
  return _unet([1, 1, 2, 4, 8, 8], [1, 2, 2, 4, 12, 4])


# Table 5: front-ends at 512, blocks moved from high to low resolutions.
@PRESETS.register("unet512_none")
def unet512_none() -> ModelConfig:
  return _unet([1, 1, 1, 2, 4, 8, 8], [1, 1, 2, 2, 4, 12, 4])


@PRESETS.register("unet512_dwt1")
def unet512_dwt1() -> ModelConfig:
  return _unet([1, 2, 2, 4, 8, 8], [2, 2, 2, 4, 12, 4], "dwt:1")


@PRESETS.register("unet512_patch2")
def unet512_patch2() -> ModelConfig:
  return _unet([1, 2, 2, 4, 8, 8], [2, 2, 2, 4, 12, 4], "patch:2")


@PRESETS.register("unet512_dwt2")
def unet512_dwt2() -> ModelConfig:
  return _unet([2, 3, 4, 8, 8], [3, 3, 4, 12, 4], "dwt:2")


@PRESETS.register("unet512_patch4")
def unet512_patch4() -> ModelConfig:
  return _unet([2, 3, 4, 8, 8], [3, 3, 4, 12, 4], "patch:4")


@PRESETS.register("unet512")
def unet512() -> ModelConfig:
  return unet512_dwt2()   # the paper's final 512 model


# U-ViT "2B" (docs/paper.md §2.2): the transformer always runs at 16x16 with width 2048.
# dropout_max_res=16 puts the 0.2 dropout in the transformer only (conv levels are >= 32).
def _uvit(frontend: str) -> ModelConfig:
  return ModelConfig(arch="uvit", base_channels=128, emb_channels=1024,
                     channel_multiplier=(1, 2, 4, 16), num_res_blocks=(2, 2, 2),
                     attn_resolutions=(), num_heads=4, num_transformer_blocks=36, mlp_ratio=4,
                     dropout=0.2, dropout_max_res=16, frontend=frontend, num_classes=1000)


@PRESETS.register("uvit128")
def uvit128() -> ModelConfig:
  return _uvit("none")


@PRESETS.register("uvit256")
def uvit256() -> ModelConfig:
  return _uvit("dwt:1")


@PRESETS.register("uvit512")
def uvit512() -> ModelConfig:
  return _uvit("dwt:2")


# Tiny (tests, CPU smoke runs at 16/32) and small (a CPU tier, minutes at 32x32 on 2 cores).
@PRESETS.register("unet_tiny")
def unet_tiny() -> ModelConfig:
  return ModelConfig(arch="unet", base_channels=12, emb_channels=64, channel_multiplier=(1, 2),
                     num_res_blocks=(1, 1), attn_resolutions=(8,), num_heads=2, dropout=0.1,
                     dropout_max_res=16, num_classes=10, norm_groups=4)


@PRESETS.register("uvit_tiny")
def uvit_tiny() -> ModelConfig:
  return ModelConfig(arch="uvit", base_channels=16, emb_channels=64, channel_multiplier=(1, 2),
                     num_res_blocks=(1,), attn_resolutions=(), num_heads=2,
                     num_transformer_blocks=2, mlp_ratio=2, dropout=0.1, dropout_max_res=16,
                     num_classes=10, norm_groups=8)


@PRESETS.register("unet_small")
def unet_small() -> ModelConfig:
  return ModelConfig(arch="unet", base_channels=32, emb_channels=128,
                     channel_multiplier=(1, 2, 2), num_res_blocks=(2, 2, 2),
                     attn_resolutions=(8,), num_heads=4, dropout=0.1, dropout_max_res=16,
                     num_classes=10, norm_groups=8)


@PRESETS.register("uvit_small")
def uvit_small() -> ModelConfig:
  return ModelConfig(arch="uvit", base_channels=32, emb_channels=128,
                     channel_multiplier=(1, 2, 4), num_res_blocks=(1, 1), attn_resolutions=(),
                     num_heads=4, num_transformer_blocks=4, mlp_ratio=4, dropout=0.1,
                     dropout_max_res=16, num_classes=10, norm_groups=8)
