"""The run directory: append-only records, torn lines, resume rules."""

from __future__ import annotations

import json

import pytest

from latentcot.errors import InputError
from latentcot.store import MANIFEST, SAMPLES, RunStore, read_samples


def record(i, setting="token"):
    return {"task": "t", "task_spec": "t:n=1", "setting_id": setting, "example_id": f"e{i}", "correct": i % 2 == 0}


def test_records_are_complete_lines_and_manifest_is_written(tmp_path):
    with RunStore.open(tmp_path / "run", {"config": {"a": 1}}) as store:
        for i in range(3):
            store.append(record(i))
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["config"] == {"a": 1} and manifest["finished_at"] and manifest["started_at"]
    assert read_samples(tmp_path / "run") == [record(i) for i in range(3)]


def test_resume_drops_a_torn_line_and_reports_done_keys(tmp_path):
    run = tmp_path / "run"
    with RunStore.open(run, {"config": {"a": 1}}) as store:
        store.append(record(0))
        store.append(record(1))
    with open(run / SAMPLES, "a") as f:
        f.write('{"task": "t", "setting_id": "tok')  # killed mid-write
    store = RunStore.open(run, {"config": {"a": 1}}, resume=True)
    assert store.done_keys() == {("t:n=1", "token", "e0"), ("t:n=1", "token", "e1")}
    store.append(record(2))
    store.close()
    assert read_samples(run) == [record(0), record(1), record(2)]
    assert len(json.loads((run / MANIFEST).read_text())["resumed_at"]) == 1


def test_non_empty_directory_needs_resume(tmp_path):
    RunStore.open(tmp_path / "run", {"config": {}}).close()
    with pytest.raises(InputError, match="not empty; pass --resume"):
        RunStore.open(tmp_path / "run", {"config": {}})


def test_resume_refuses_a_different_config(tmp_path):
    RunStore.open(tmp_path / "run", {"config": {"gate": {"kind": "token"}, "seed": 0}}).close()
    with pytest.raises(InputError, match=r"config differs: gate.kind \('token' -> 'latent'\)"):
        RunStore.open(tmp_path / "run", {"config": {"gate": {"kind": "latent"}, "seed": 0}}, resume=True)


def test_out_pointing_at_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        RunStore.open(tmp_path / "file", {"config": {}})


def test_corrupt_line_in_the_middle_names_file_and_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / SAMPLES).write_text(json.dumps(record(0)) + "\n{oops\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(InputError) as err:
        read_samples(run)
    assert err.value.where == f"{run / SAMPLES}:2"


def test_a_torn_tail_that_parses_as_json_is_still_not_a_record(tmp_path):
    run = tmp_path / "run"
    with RunStore.open(run, {"config": {}}) as store:
        store.append(record(0))
    with open(run / SAMPLES, "a") as f:
        f.write(json.dumps(record(1)))  # killed just before the newline: valid JSON, not a record
    assert read_samples(run) == [record(0)]
    store = RunStore.open(run, {"config": {}}, resume=True)
    assert store.done_keys() == {("t:n=1", "token", "e0")}
    store.append(record(2))
    store.close()
    assert read_samples(run) == [record(0), record(2)]


@pytest.mark.parametrize(
    "bad_line,message",
    [
        (b"{oops", "malformed record: Expecting property name enclosed in double quotes"),
        (b"", "malformed record: Expecting value"),
        (b"null", "malformed record: expected a JSON object"),
        (b"[1, 2]", "malformed record: expected a JSON object"),
        (b'{"a": "\xff"}', "malformed record: not UTF-8 text"),
    ],
)
def test_a_bad_complete_line_names_its_line_and_keeps_the_message(tmp_path, bad_line, message):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps(record(0)).encode()
    (run / SAMPLES).write_bytes(good + b"\n" + good + b"\n" + bad_line + b"\n" + good + b"\n")
    with pytest.raises(InputError) as err:
        read_samples(run)
    assert err.value.where == f"{run / SAMPLES}:3"
    assert err.value.message.startswith(message)


def test_records_are_written_exactly_as_json_dumps_wrote_them(tmp_path):
    records = [
        {**record(0), "completion": "x ⟨latent⟩ 42 — ünïcode ✓", "entropy": [0.5, float("nan")]},
        {**record(1), "prompt": "line\u2028separator and \x85 and \r\n inside"},
    ]
    with RunStore.open(tmp_path / "run", {"config": {}}) as store:
        for r in records:
            store.append(r)
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    assert (tmp_path / "run" / SAMPLES).read_bytes() == expected
    back = read_samples(tmp_path / "run")
    assert back[0]["completion"] == records[0]["completion"] and back[1] == records[1]
