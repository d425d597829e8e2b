"""Run-directory I/O: atomic writes and append-only JSON lines, so a kill loses nothing."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import yaml

ENV_CACHE = "SIMPLEDIFF_CACHE"


def cache_dir(*parts: str) -> str:
  """The toolkit's cache folder ($SIMPLEDIFF_CACHE, default ~/.cache/simplediff), or a path in it:
  file lists, reference statistics, Inception weights, compiled programs."""
  root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "simplediff")
  return os.path.join(root, *parts)


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Write to a temporary file in the same folder, then rename over the target."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml_atomic(path: str, obj: Any) -> None:
  write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def append_jsonl(path: str, row: dict) -> None:
  """One line per call; a partial last line from a kill is skipped by read_jsonl."""
  with open(path, "a") as f:
    f.write(json.dumps(row, default=float) + "\n")
    f.flush()


def read_jsonl(path: str) -> list[dict]:
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line torn by a kill
  return rows


def read_json(path: str, default: Any = None) -> Any:
  """The file's JSON, or `default` if it is missing, unreadable or not JSON (binary, torn, a
  folder): one bad file must not hide the rest of a sweep."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):   # ValueError: JSONDecodeError and UnicodeDecodeError
    return default


def owner() -> dict:
  """Who is writing a run: recorded in status.json so a reader can tell a killed run."""
  import socket
  return {"pid": os.getpid(), "host": socket.gethostname()}


def run_state(status: Any) -> str:
  """status.json's state, except that a "running" run whose process on this host is gone reads
  "killed" (SIGKILL and the OOM killer leave no chance to write "failed"). A reused pid can
  make a dead run look alive; never the reverse."""
  if not isinstance(status, dict) or not status.get("state"):
    return "pending"
  state = str(status["state"])
  if state != "running" or not isinstance(status.get("pid"), int):
    return state
  import socket
  if status.get("host") != socket.gethostname():
    return state  # another machine's process: cannot tell from here
  try:
    os.kill(status["pid"], 0)
  except ProcessLookupError:
    return "killed"
  except PermissionError:
    pass  # alive, another user's
  return state
