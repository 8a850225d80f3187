"""RunStore: a run directory with ``manifest.json`` and an append-only ``samples.jsonl``.

Each record is written as one complete line, flushed and fsynced, so a killed run loses at most
the line being written; on resume a torn last line is dropped and every recorded
(task_spec, setting_id, example_id) is skipped.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import jsonlines

from latentcot.errors import InputError

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"


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

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self._samples = open(root / SAMPLES, "a", encoding="utf-8")
        # Exactly the encoder the store used before jsonlines (json.dumps' ", " and ": "
        # separators, not compact=True), so new lines stay byte-identical to recorded runs'.
        self._writer = jsonlines.Writer(self._samples, dumps=functools.partial(json.dumps, ensure_ascii=False))

    @classmethod
    def open(cls, root: str | Path, manifest: Mapping[str, Any], resume: bool = False) -> RunStore:
        """Start a run (the directory must be new or empty) or, with ``resume``, continue one whose
        manifest has the same ``config``."""
        root = Path(root)
        existing = root / MANIFEST
        if cls.check(root, resume):
            old = json.loads(existing.read_text())
            diffs = _config_differences(old.get("config", {}), manifest.get("config", {}))
            if diffs:
                raise InputError(f"cannot resume {root}: its config differs: {'; '.join(diffs)}")
            merged = {**old, "resumed_at": [*old.get("resumed_at", []), now()], "finished_at": None}
            if (root / SAMPLES).exists():
                _drop_torn_tail(root / SAMPLES)
            _write_json_atomic(existing, merged)
            return cls(root, merged)
        root.mkdir(parents=True, exist_ok=True)
        fresh = {**manifest, "started_at": now(), "finished_at": None}
        _write_json_atomic(existing, fresh)
        return cls(root, fresh)

    @staticmethod
    def check(root: Path, resume: bool) -> bool:
        """Refuse a directory that cannot be used, writing nothing; True when it is a run to resume."""
        if root.exists() and not root.is_dir():
            raise InputError(f"--out {root} is a file, not a directory")
        if not (root.is_dir() and any(root.iterdir())):
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
        if finished:
            self.manifest = {**self.manifest, "finished_at": now()}
            _write_json_atomic(self.root / MANIFEST, self.manifest)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(finished=exc_type is None)
