"""Hydra front door shared by `python -m core.train`: key=value overrides of ExperimentConfig.

Hydra parses and validates the overrides against the full default config (struct mode, so an
unknown key is a one-line error naming it), then our typed from_dict checks values.
"""
from __future__ import annotations

import sys
from typing import Callable

from core.config import ConfigError, ExperimentConfig, to_dict


def run_hydra(fn: Callable, argv=None) -> None:
  import hydra
  from hydra.core.config_store import ConfigStore
  from omegaconf import OmegaConf

  from core.experiment import resolve

  base = to_dict(ExperimentConfig())
  base["workdir"] = "results/single/${name}"
  base["hydra"] = {"run": {"dir": "."}, "output_subdir": None, "job": {"chdir": False}}
  cs = ConfigStore.instance()
  cs.store(name="simplediff_train", node=base)

  @hydra.main(version_base=None, config_name="simplediff_train")
  def _main(c) -> None:
    from hydra.core.hydra_config import HydraConfig
    from core.config import set_dotted
    full = OmegaConf.to_container(c, resolve=True)
    # Only the keys given on the command line: the rest must come from the preset, if any.
    d: dict = {}
    for ov in HydraConfig.get().overrides.task:
      key = ov.split("=", 1)[0].lstrip("+~")
      if key != "workdir":
        set_dotted(d, key, OmegaConf.select(c, key))
    d.setdefault("name", full["name"])
    workdir = full["workdir"]
    try:
      cfg = resolve(d)
    except (ConfigError, KeyError) as e:
      sys.exit(f"error: {e}")
    from core.runio import LockHeld
    try:
      fn(cfg, workdir)
    except LockHeld as e:   # the same workdir trained by another live process
      sys.exit(f"error: {e}")

  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  _main()
