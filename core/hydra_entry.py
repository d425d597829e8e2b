"""Hydra front door shared by `python -m core.train`: key=value overrides of ExperimentConfig.

Bad input (an override Hydra cannot parse, an unknown key, an impossible value, data that is not
there) is one line on stderr and exit status 2, checked before Hydra starts the job (which
would write its log file) and before any training.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from core.config import ConfigError, ExperimentConfig, set_dotted, to_dict


def _fail(msg: str) -> NoReturn:
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _command_line(argv: list[str]):
  """Hydra's command line split into its overrides and --multirun (the flags that take a value
  named, so that a value is not read as an override; other flags are Hydra's to judge)."""
  import argparse
  ap = argparse.ArgumentParser(add_help=False)
  ap.add_argument("overrides", nargs="*")
  ap.add_argument("-m", "--multirun", action="store_true")
  for flag in (("-cp", "--config-path"), ("-cn", "--config-name"), ("-cd", "--config-dir"),
               ("-c", "--cfg"), ("-p", "--package"), ("--experimental-rerun",)):
    ap.add_argument(*flag)
  ap.add_argument("-i", "--info", nargs="?")
  return ap.parse_known_args(argv)[0]


def precheck(argv: list[str]) -> None:
  """The overrides as Hydra will read them, checked first: Hydra's own errors take several
  lines (and exit 1), and by the time the job sees the values it has written its log file."""
  from hydra.core.override_parser.overrides_parser import OverridesParser
  from hydra.core.override_parser.types import OverrideType
  from hydra.errors import HydraException
  from core.experiment import resolve
  parser = OverridesParser.create()
  default = to_dict(ExperimentConfig())
  d: dict = {}
  args = _command_line(argv)
  for arg in args.overrides:
    try:
      ov = parser.parse_override(arg)
    except HydraException as e:   # the grammar's errors
      why = [l for l in str(e).splitlines() if not l.startswith(("Error parsing", "See "))]
      _fail(f"cannot parse the override {arg!r} ({'; '.join(why) or 'bad syntax'}); write "
            "key=value, e.g. train.steps=100")
    key = ov.key_or_group
    if key == "workdir" or key.startswith(("hydra.", "hydra/")) or ov.type == OverrideType.DEL:
      continue
    value = ov.value()
    if ov.is_sweep_override() and not args.multirun:
      _fail(f"{arg!r} holds several values: write a list as {key}=[a,b], quote a string as "
            f"{key}='a,b', or sweep them with --multirun")
    if ov.is_sweep_override() or (isinstance(value, str) and "${" in value):
      value = default   # resolved by Hydra later: the key is checked here, the value in the job
      for p in key.split("."):
        value = value.get(p) if isinstance(value, dict) else None
    try:
      set_dotted(d, key, value)
    except ConfigError as e:
      _fail(str(e))
  try:
    resolve(d, runnable=True)   # the config, the model, the data and the backends
  except (ConfigError, KeyError, ValueError) as e:
    _fail(e.args[0] if e.args else str(e))


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
      cfg = resolve(d, runnable=True)   # again: precheck did not know interpolated values
    except (ConfigError, KeyError, ValueError) as e:
      _fail(e.args[0] if e.args else str(e))
    from core.runio import LockHeld
    try:
      fn(cfg, workdir)
    except LockHeld as e:   # the same workdir trained by another live process
      sys.exit(f"error: {e}")

  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  precheck(sys.argv[1:])
  _main()
