"""The toolkit's programs at two or more commits, measured side by side in alternating children.

    python -m scripts.benchmark_versions REV_A REV_B [...] [--repeats 2] [--quick]

Each commit is checked out in a temporary git worktree, and scripts/benchmark_xla_flags.py's
child (the tier's training steps, unet_small and uvit_small at 32x32 batch 16, the tier's
sampling, Inception, and the loss of a fixed batch) runs from that worktree, commits alternating
A B A B ... so that the machine's load falls on all of them; the persistent compilation cache is
off. Prints the same table as benchmark_xla_flags, commits in place of flag sets: a before/after
of a speed change in one run. The first commit must have that child (8eac834 and later).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("revs", nargs="+", help="commits, first is the reference")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--quick", action="store_true", help="the tier models only, fewer reps")
  a = ap.parse_args(argv)
  from scripts.benchmark_xla_flags import print_table, run_child
  tmp = tempfile.mkdtemp(prefix="simplediff_versions_")
  trees = {}
  try:
    for rev in a.revs:
      sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True,
                           capture_output=True, text=True).stdout.strip()
      path = os.path.join(tmp, sha)
      subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, sha], check=True,
                     capture_output=True)
      trees[f"{rev} ({sha})" if rev != sha else sha] = path
    out: dict[str, list] = {k: [] for k in trees}
    env = dict(os.environ, SIMPLEDIFF_COMPILE_CACHE="0")
    for rep in range(a.repeats):
      for label, path in trees.items():
        res = run_child(path, a.quick, env, f"commit {label}")
        if res is None:
          return 1
        out[label].append(res)
        print(f"repeat {rep + 1}/{a.repeats} commit {label} done", flush=True)
    print_table(out, a.repeats, "commit", lambda k: k)
    return 0
  finally:
    for path in trees.values():
      subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
