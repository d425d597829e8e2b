"""scripts/gpu_check.py runs here at tiny sizes, so that it works the day a GPU is lent."""
import json

import pytest


# Slow (32 s): the script is for a lent GPU; `python -m pytest -m slow` keeps it runnable here.
@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu_and_reports_shares_of_its_peak(tmp_path, capsys):
  from scripts import gpu_check
  out = tmp_path / "check.json"
  assert gpu_check.main(["--tiny", "--reps", "1", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "peak" in text and "of peak" in text
  rep = json.loads(out.read_text())
  assert rep["peak"]["flops_per_s"] > 0 and len(rep["rows"]) == 4
  for r in rep["rows"]:
    assert r["img_per_s"] > 0 and 0 < r["share_of_peak"] < 5, r   # a share, not a raw count
