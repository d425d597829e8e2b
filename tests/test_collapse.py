"""No silent collapse: arms that set a training key apart but are one model at a
tier stop the sweep at expansion, with one line naming the arms and the keys."""
import os

import pytest
import yaml

from core.config import ConfigError
from sweeps import run as runner
from sweeps.spec import effective_model, expand

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# unet_tiny at 16 px: feature levels 16 and 8. The cpu tier turns dropout off, as
# ablations/_tiers.yaml does, under a base that has it on.
BASE = {"resolution": 16, "model": {"preset": "unet_tiny", "dropout": 0.1},
        "data": {"source": "shapes", "size": 64}, "train": {"steps": 1, "batch_size": 8}}
TIERS = {"cpu": {"set": {"model": {"dropout": 0.0}}}}


def _write(tmp_path, arms, **extra):
  f = tmp_path / "s.yaml"
  f.write_text(yaml.safe_dump({"name": "s", "table": "x", "base": BASE, "arms": arms,
                               "tiers": TIERS, **extra}, sort_keys=False))
  return str(f)


DROPOUT_ARMS = [{"label": "none", "set": {"model.dropout": 0.0}},
                {"label": "r=16", "set": {"model.dropout_max_res": 16}},
                {"label": "r=8", "set": {"model.dropout_max_res": 8}}]


def test_arms_a_tier_makes_one_model_stop_with_one_line(tmp_path, capsys):
  f = _write(tmp_path, DROPOUT_ARMS)
  assert len({r.train_key for r in expand(f, "paper")[1]}) == 3   # the paper tier: 3 models
  with pytest.raises(ConfigError) as e:
    expand(f, "cpu")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{f}: at tier cpu the arms 'none', 'r=16', 'r=8'")
  assert "model.dropout=0.0 in each (from tier cpu's set in" in msg   # the key that did it
  assert "shared_models: !tier {cpu: [[none, r=16, r=8]]}" in msg      # and the fix
  # --dry-run shows the same line, and fails
  assert runner.main([f, "tier=cpu", "--dry-run"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: {msg}"]


def test_arms_declared_shared_pass(tmp_path, capsys):
  f = _write(tmp_path, DROPOUT_ARMS, shared_models={"cpu": [["none", "r=16", "r=8"]]})
  with pytest.raises(ConfigError):   # an untagged mapping is not a per-tier declaration
    expand(f, "cpu")
  text = open(f).read().replace("shared_models:", "shared_models: !tier")
  open(f, "w").write(text)
  meta, runs = expand(f, "cpu")
  assert len({r.train_key for r in runs}) == 1
  assert meta["shared_models"] == [["none", "r=16", "r=8"]]
  assert runner.main([f, "tier=cpu", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "# one network on purpose (shared_models): 'none', 'r=16', 'r=8'" in out
  # a plain list declares at every tier; a label that is no arm's is an error
  f = _write(tmp_path, DROPOUT_ARMS, shared_models=[["none", "r=16", "r=8"]])
  assert len(expand(f, "cpu")[1]) == 3
  f = _write(tmp_path, DROPOUT_ARMS, shared_models=[["none", "r=99"]])
  with pytest.raises(ConfigError, match="shared_models names 'r=99', which is no arm's label"):
    expand(f, "cpu")


def test_arms_that_differ_only_in_sampling_share_by_design(tmp_path):
  arms = [{"label": "a"}, {"label": "a s7", "set": {"sampler.steps": 7}}]
  f = _write(tmp_path, arms, grid={"sampler.guidance_scale": [1.0, 2.0]})
  _, runs = expand(f, "cpu")
  assert len(runs) == 4 and len({r.train_key for r in runs}) == 1


def test_dropout_max_res_is_compared_by_the_levels_it_reaches(tmp_path):
  # dropout on at every tier; the values below are written per tier (not scaled)
  arm = lambda label, r: {"label": label, "set": {"model.dropout_max_res": r}}
  tiers = {"cpu": {"set": {"model": {"dropout": 0.1}}}}
  for arms, collapse in (
      ([arm("r=16", 16), arm("r=8", 8)], None),                      # levels {16, 8} vs {8}
      ([arm("r=16", 16), arm("r=32", 32)], "'r=16', 'r=32'"),        # both reach 16 and 8
      ([arm("r=4", 4), arm("r=2", 2)], "'r=4', 'r=2'"),              # below 8: no level
      ([{"label": "none", "set": {"model.dropout": 0.0}}, arm("r=4", 4)], "'none', 'r=4'")):
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"name": "d", "base": BASE, "arms": arms, "tiers": tiers}))
    if collapse is None:
      expand(str(f), "cpu")
      continue
    with pytest.raises(ConfigError) as e:
      expand(str(f), "cpu")
    msg = str(e.value)
    assert f"the arms {collapse} are one model (model keys " in msg, msg   # two keys, one network
    assert "of the 16-px model (levels 16, 8 px)" in msg and "\n" not in msg


def test_effective_model_reads_dropout_as_the_network_has_it():
  _, runs = expand(os.path.join(ROOT, "ablations/dropout.yaml"), "smoke")
  eff = {r.arm: effective_model(r.config)["model.dropout"] for r in runs}
  assert eff == {"none": 0.0, "r=128": [0.1, [16, 8]], "r=64": [0.1, [8]], "r=32": 0.0,
                 "r=16": 0.0}


def test_dropout_yaml_at_tier_cpu_has_five_networks():
  _, runs = expand(os.path.join(ROOT, "ablations/dropout.yaml"), "cpu")
  runs = [r for r in runs if r.seed == 0]   # the tier's study has 3 seeds
  eff = [effective_model(r.config)["model.dropout"] for r in runs]
  assert eff == [0.0, [0.1, [16, 8, 4, 2]], [0.1, [8, 4, 2]], [0.1, [4, 2]], [0.1, [2]]]
  assert len({r.train_key for r in runs}) == 5
