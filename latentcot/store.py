"""RunStore: a run directory with ``manifest.json`` and an append-only ``samples.jsonl``.

Each record is written as one complete line, flushed and fsynced, so a killed run loses at most
the line being written; on resume a torn last line is dropped and every recorded
(task_spec, setting_id, example_id) is skipped. One process writes a run directory at a time
(:class:`WriterLock`): a second writer is refused, or waits, and never duplicates a record.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import jsonlines

from latentcot.errors import InputError

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
LOCK = "writer.lock"


class WriterLock:
    """An exclusive ``flock`` on ``<run>/writer.lock``, held while a process writes the run. The kernel
    releases it when the process ends, however it ends (SIGKILL included), so a stale lock never blocks a
    resume; the file's text names the holder (pid, host, command, since) for the refusal message."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def acquire(cls, root: Path, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> WriterLock:
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                os.close(fd)
                raise busy(root, holder) from None
            if on_wait is not None:
                on_wait(f"waiting for {holder} to finish writing {root}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        holder = {"pid": os.getpid(), "host": platform.node(), "since": now(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return cls(fd)

    @staticmethod
    def holder(root: Path) -> str | None:
        """Who holds the lock of ``root`` now (None: nobody), without taking it for longer than a check."""
        if not (root / LOCK).is_file():
            return None
        fd = os.open(root / LOCK, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)  # closing drops a lock taken here
        return None

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor releases the flock


def busy(root: Path, holder: str) -> InputError:
    """The refusal of a second writer."""
    return InputError(f"run directory {root} is being written by {holder}; wait for it to finish, or pass --wait")


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({info.get('command', '')})"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _config_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return diffs


def _drop_torn_tail(path: Path) -> None:
    """Truncate a samples file to its last complete line (a kill can leave half a line)."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _complete_lines(handle: IO[bytes]) -> Iterator[bytes]:
    """The newline-terminated lines of ``handle``. A last line without its newline was cut short by
    a killed writer, so it is not a record even when it happens to parse as JSON."""
    for line in handle:
        if not line.endswith(b"\n"):
            return
        yield line


def _malformed_reason(err: jsonlines.InvalidLineError) -> str:
    cause = err.__cause__
    if isinstance(cause, json.JSONDecodeError):
        return cause.msg  # the decoder's own words, without jsonlines' "(line N)" suffix
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text ({cause.reason} at byte {cause.start})"
    return "expected a JSON object"  # the line held null or a non-object value


def iter_samples(path: Path) -> Iterator[dict]:
    """Records of a samples.jsonl; a malformed complete line is an error naming file:line."""
    # Bytes, not text: only b"\n" ends a line (text mode would also split on a lone "\r"), and
    # jsonlines reports a line that is not UTF-8 with its number instead of failing mid-file.
    with open(path, "rb") as handle, jsonlines.Reader(_complete_lines(handle)) as reader:
        try:
            yield from reader.iter(type=dict)
        except jsonlines.InvalidLineError as err:
            # Only a torn last line is dropped, so the reader's count is the file's line number.
            raise InputError(f"malformed record: {_malformed_reason(err)}", where=f"{path}:{err.lineno}") from None


def read_samples(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / SAMPLES
    if not path.is_file():
        raise InputError(f"{run_dir} has no {SAMPLES}")
    return list(iter_samples(path))


class RunStore:
    """Owns one run directory. Create it with ``RunStore.open``."""

    def __init__(self, root: Path, manifest: dict[str, Any], lock: WriterLock):
        self.root = root
        self.manifest = manifest
        self._lock = lock
        self._samples = open(root / SAMPLES, "a", encoding="utf-8")
        # Exactly the encoder the store used before jsonlines (json.dumps' ", " and ": "
        # separators, not compact=True), so new lines stay byte-identical to recorded runs'.
        self._writer = jsonlines.Writer(self._samples, dumps=functools.partial(json.dumps, ensure_ascii=False))

    @classmethod
    def open(
        cls,
        root: str | Path,
        manifest: Mapping[str, Any],
        resume: bool = False,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ) -> RunStore:
        """Start a run (the directory must be new or empty) or, with ``resume``, continue one whose
        manifest has the same ``config``. The directory's writer lock is taken first (``wait``: until
        the writer holding it finishes) and held until ``close``."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise InputError(f"--out {root} is a file, not a directory")
        root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(root, wait, on_wait)
        try:
            return cls._open_locked(root, manifest, resume, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, root: Path, manifest: Mapping[str, Any], resume: bool, lock: WriterLock) -> RunStore:
        existing = root / MANIFEST
        if cls.check(root, resume, wait=True):  # this process holds the lock
            old = json.loads(existing.read_text())
            diffs = _config_differences(old.get("config", {}), manifest.get("config", {}))
            if diffs:
                raise InputError(f"cannot resume {root}: its config differs: {'; '.join(diffs)}")
            merged = {**old, "resumed_at": [*old.get("resumed_at", []), now()], "finished_at": None}
            if (root / SAMPLES).exists():
                _drop_torn_tail(root / SAMPLES)
            _write_json_atomic(existing, merged)
            return cls(root, merged, lock)
        fresh = {**manifest, "started_at": now(), "finished_at": None}
        _write_json_atomic(existing, fresh)
        return cls(root, fresh, lock)

    @staticmethod
    def check(root: Path, resume: bool, wait: bool = False) -> bool:
        """Refuse a directory that cannot be used, writing nothing; True when it is a run to resume. A
        directory another process is writing is refused here already (before a slow model load),
        unless ``wait`` (the caller waits for that writer, or holds the lock itself)."""
        if root.exists() and not root.is_dir():
            raise InputError(f"--out {root} is a file, not a directory")
        holder = None if wait else WriterLock.holder(root)
        if holder is not None:
            raise busy(root, holder)
        if not (root.is_dir() and any(p.name != LOCK for p in root.iterdir())):
            return False
        if not resume:
            raise InputError(f"run directory {root} is not empty; pass --resume to continue it or choose another --out")
        if not (root / MANIFEST).is_file():
            raise InputError(f"cannot resume {root}: it has no {MANIFEST}")
        return True

    def done_keys(self) -> set[tuple[str, str, str]]:
        """(task_spec, setting_id, example_id) of every complete record."""
        return {(r["task_spec"], r["setting_id"], r["example_id"]) for r in iter_samples(self.root / SAMPLES)}

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line and make it durable before returning, so a kill loses at
        most the line being written."""
        self._writer.write(record)
        self._samples.flush()
        os.fsync(self._samples.fileno())

    def close(self, finished: bool = True) -> None:
        self._writer.close()  # a Writer given an open file leaves closing that file to its owner
        self._samples.close()
        try:
            if finished:
                self.manifest = {**self.manifest, "finished_at": now()}
            _write_json_atomic(self.root / MANIFEST, self.manifest)  # decode cost etc. even when stopped
        finally:
            self._lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(finished=exc_type is None)
