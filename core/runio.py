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
  file lists, reference statistics, Inception weights, compiled programs, shapes renders."""
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


def write_npz_atomic(path: str, arrays: dict) -> None:
  """numpy arrays as an .npz, written atomically (write_bytes_atomic)."""
  import io
  import numpy as np
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes_atomic(path, buf.getvalue())


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


class _Stop:
  """A stop asked for by a signal (sweeps.run's SIGTERM handler sets it). Long loops call
  check(), which raises KeyboardInterrupt("SIGTERM") once it is set: the handler's own raise
  can be lost where the signal lands inside a callback."""

  def __init__(self):
    import threading
    self._event = threading.Event()

  def set(self) -> None:
    self._event.set()

  def clear(self) -> None:
    self._event.clear()

  def is_set(self) -> bool:
    return self._event.is_set()

  def check(self) -> None:
    if self._event.is_set():
      raise KeyboardInterrupt("SIGTERM")


STOP = _Stop()


def _alive(holder: Any) -> bool:
  """Whether the process a lock or status names may still run. Another host's process cannot
  be checked from here and counts as alive; a reused pid can make a dead one look alive."""
  import socket
  if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
    return False   # unreadable or half-written: no process stands behind it
  if holder.get("host") != socket.gethostname():
    return True
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, another user's
  return True


class LockHeld(RuntimeError):
  """Another live process owns the folder; .holder says who."""

  def __init__(self, path: str, holder: dict):
    self.path, self.holder = path, holder
    super().__init__(f"{os.path.dirname(path)} is in use by pid {holder.get('pid')} on "
                     f"{holder.get('host')} (since {holder.get('since_utc', '?')}); wait for it"
                     " to finish or stop it (its lock ends with the process), or use another "
                     "results folder")


class DirLock:
  """Exclusive ownership of a run or model folder across processes: an flock on `<folder>/.lock`,
  which names the owner's host and pid. The kernel drops the lock when its process dies
  however it dies (SIGKILL, OOM), so a stale lock recovers by itself; the file is removed on
  release. A second process gets LockHeld naming the owner, or with wait_s waits for it.

    with DirLock(run_dir):            # LockHeld if a live process owns run_dir
    with DirLock(model_dir, wait_s=math.inf, on_wait=print):  # wait for the owner instead
  """

  NAME = ".lock"

  def __init__(self, folder: str, wait_s: float = 0.0, poll_s: float = 1.0, on_wait=None):
    self.path = os.path.join(folder, self.NAME)
    self.wait_s, self.poll_s, self.on_wait = wait_s, poll_s, on_wait
    self.fd: Any = None

  @property
  def held(self) -> bool:
    return self.fd is not None

  def holder(self) -> Any:
    return read_json(self.path)

  def _try(self) -> bool:
    import fcntl
    import socket
    import time
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    try:
      same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
    except FileNotFoundError:
      same = False
    if not same:   # the owner removed the file between our open and our lock: try afresh
      os.close(fd)
      return self._try()
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self.fd = fd
    return True

  def acquire(self) -> "DirLock":
    import time
    t0, told = time.monotonic(), False
    while not self._try():
      h = self.holder() or {}
      if time.monotonic() - t0 >= self.wait_s:
        raise LockHeld(self.path, h)
      if self.on_wait is not None and not told:
        self.on_wait(f"waiting for pid {h.get('pid')} on {h.get('host')}, which holds "
                     f"{os.path.dirname(self.path)}")
        told = True
      time.sleep(self.poll_s)
    return self

  def release(self) -> None:
    if self.fd is not None:
      try:
        os.remove(self.path)   # while still locked: a waiter on this file sees it replaced
      except FileNotFoundError:
        pass
      os.close(self.fd)
      self.fd = None

  def __enter__(self) -> "DirLock":
    return self.acquire()

  def __exit__(self, *exc) -> bool:
    self.release()
    return False


def run_done(run_dir: str) -> bool:
  """Whether a run is finished: status.json says "done" and its eval.json is readable (the
  runner writes eval.json, then "done"). Finished runs are skipped when a sweep runs again."""
  st = read_json(os.path.join(run_dir, "status.json"))
  return (isinstance(st, dict) and st.get("state") == "done"
          and isinstance(read_json(os.path.join(run_dir, "eval.json")), dict))


def run_state(status: Any) -> str:
  """status.json's state, except that a "running" run whose process on this host is gone reads
  "killed" (SIGKILL and the OOM killer leave no chance to write "failed"). A reused pid can
  make a dead run look alive; never the reverse."""
  if not isinstance(status, dict) or not status.get("state"):
    return "pending"
  state = str(status["state"])
  if state != "running" or not isinstance(status.get("pid"), int):
    return state
  return state if _alive(status) else "killed"
