"""A sweep through a Hydra launcher plugin: one Hydra job per trained model.

    python -m sweeps.run FILE tier=cpu --launcher joblib --launcher-arg hydra.launcher.n_jobs=2
    python -m sweeps.run FILE tier=gpu --launcher submitit_slurm \\
        --launcher-arg hydra.launcher.partition=gpu --launcher-arg hydra.launcher.gpus_per_node=1

The runner checks every run as usual, writes the sweep command to <sweep dir>/launch.json and
starts `python -m sweeps.launch --multirun hydra/launcher=NAME job=... train_key=k1,k2,...`.
Each job expands the sweep again and runs, in order, the unfinished runs that share its trained
model (so two jobs never train the same model at once), writing results exactly as the
in-process runner does. Plugins: `pip install 'simplediff[launchers]'` (hydra-joblib-launcher,
hydra-submitit-launcher); `basic` is Hydra's own sequential launcher.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from core.config import ConfigError
from core.runio import read_json, write_json_atomic

# launcher name -> the module its Hydra plugin installs (None: built into Hydra)
LAUNCHERS = {
    "basic": None,
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


def check_launcher(name: str) -> None:
  if name not in LAUNCHERS:
    raise ConfigError(f"--launcher {name!r} is not one of {', '.join(LAUNCHERS)}")
  mod = LAUNCHERS[name]
  if mod is not None and importlib.util.find_spec(mod) is None:
    raise ConfigError(f"--launcher {name} needs its Hydra plugin: pip install "
                      f"'simplediff[launchers]' (or {mod.split('.')[-1].replace('_', '-')})")


def launch(name: str, launcher_args: list[str], sdir: str, file: str, overrides: list[str],
           pending: list) -> int:
  """Starts one Hydra job per trained model of the `pending` runs; returns Hydra's exit code."""
  if not pending:
    return 0
  sdir = os.path.abspath(sdir)
  job = os.path.join(sdir, "launch.json")
  write_json_atomic(job, {"file": os.path.abspath(file), "overrides": list(overrides)})
  from sweeps.execute import execution_order
  keys = list(dict.fromkeys(r.train_key for r in execution_order(pending)))  # seed by seed
  cmd = [sys.executable, "-m", "sweeps.launch", "--multirun", f"hydra/launcher={name}",
         f"job={job}", f"train_key={','.join(keys)}",
         f"hydra.sweep.dir={os.path.join(sdir, '_launcher')}", *launcher_args]
  print(f"launching {len(keys)} jobs for {len(pending)} runs through Hydra's {name} launcher",
        flush=True)
  return subprocess.run(cmd).returncode


def run_job(job: str, train_key: str) -> int:
  """One Hydra job: the unfinished runs of one trained model; returns how many failed."""
  from sweeps.execute import run_all
  from sweeps.spec import expand, parse_overrides
  spec = read_json(job)
  if spec is None:
    raise ConfigError(f"job={job!r}: no such launch file")
  opts, over = parse_overrides(spec["overrides"])
  meta, runs = expand(spec["file"], opts.get("tier", "paper"), over, opts.get("seeds"))
  mine = [r for r in runs if r.train_key == train_key]
  if not mine:
    raise ConfigError(f"train_key={train_key!r} matches no run of {spec['file']}")
  return run_all(mine, os.path.dirname(job), progress=False)


def main() -> None:
  import hydra
  from core.devices import setup
  setup()
  from hydra.core.config_store import ConfigStore
  ConfigStore.instance().store(name="simplediff_launch", node={
      "job": "???", "train_key": "???",
      "hydra": {"job": {"chdir": False}, "sweep": {"subdir": "${hydra.job.num}"}}})

  @hydra.main(version_base=None, config_name="simplediff_launch")
  def _main(c) -> int:
    return run_job(str(c.job), str(c.train_key))

  _main()


if __name__ == "__main__":
  main()
