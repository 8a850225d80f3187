"""One writer per run directory: a second writer is refused (or waits); a killed writer's lock is no lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from latentcot.errors import InputError
from latentcot.store import LOCK, MANIFEST, RunStore, WriterLock, read_samples

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from latentcot.store import RunStore
    store = RunStore.open(Path(sys.argv[1]), {"config": {"a": 1}}, resume=sys.argv[2] == "resume")
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
    store.close()
    """
)


def holder(run, seconds, resume=False):
    """A separate process that opens ``run`` as its writer and keeps it ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), "resume" if resume else "new", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def record(i):
    return {"task_spec": "t", "setting_id": "s", "example_id": f"e{i}"}


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    proc = holder(run, 30)
    try:
        for attempt in (lambda: RunStore.check(run, resume=True), lambda: RunStore.open(run, {}, resume=True)):
            with pytest.raises(InputError, match=rf"being written by pid {proc.pid} on .*; wait for it.*--wait"):
                attempt()
        assert WriterLock.holder(run).startswith(f"pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((run / MANIFEST).read_text())["finished_at"] is None


def test_a_killed_writers_lock_does_not_block_a_resume(tmp_path):
    run = tmp_path / "run"
    proc = holder(run, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / LOCK).is_file() and WriterLock.holder(run) is None  # the file stays, the lock is gone
    with RunStore.open(run, {"config": {"a": 1}}, resume=True) as store:
        store.append(record(0))
    assert read_samples(run) == [record(0)]


def test_wait_blocks_until_the_writer_finishes(tmp_path):
    run = tmp_path / "run"
    proc = holder(run, 1.5)
    said = []
    started = time.monotonic()
    with RunStore.open(run, {"config": {"a": 1}}, resume=True, wait=True, on_wait=said.append) as store:
        assert time.monotonic() - started > 1.0  # it got the directory only once the first writer let go
        store.append(record(1))
    assert proc.wait(10) == 0
    assert len(said) == 1 and said[0].startswith(f"waiting for pid {proc.pid}")
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["finished_at"] and len(manifest["resumed_at"]) == 1


def test_one_process_holds_its_own_lock_once(tmp_path):
    """Opening the same directory twice in one process is a second writer too."""
    run = tmp_path / "run"
    first = RunStore.open(run, {"config": {}})
    try:
        done = threading.Event()

        def second():
            with pytest.raises(InputError):
                RunStore.open(run, {"config": {}}, resume=True)
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
        assert done.is_set()
    finally:
        first.close()
    RunStore.open(run, {"config": {}}, resume=True).close()  # released: the next writer gets it
