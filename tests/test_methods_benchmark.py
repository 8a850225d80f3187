"""benchmarks/methods.py runs end to end in its --quick configuration and prints a row per method."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentcot.methods import METHODS

pytestmark = pytest.mark.slow  # a subprocess that imports torch and decodes every method: about 10 s

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "methods.py"


@pytest.fixture(scope="module")
def table() -> list[list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method "))
    return [line.split() for line in lines[start:]]


def test_the_table_has_a_row_per_method_in_registry_order(table):
    header, *rows = table
    assert header[0] == "method"
    assert [row[0] for row in rows] == [m.name for m in METHODS]


def test_token_mode_is_the_unit_and_every_row_is_filled(table):
    rows = {row[0]: row for row in table[1:]}
    assert rows["token"][1:] == ["token", rows["token"][2], "1.00x", "0%"]
    assert rows["coconut"][1] == "coconut:k=4"
    assert rows["entropy"][1].startswith("entropy:threshold=")
    for name, spec, tokens_per_s, ratio, latent in rows.values():
        assert spec.split(":")[0] == name
        assert float(tokens_per_s) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        assert latent.endswith("%") and 0 <= int(latent[:-1]) <= 100
    assert rows["soft-thinking"][4] == "100%"  # Cold Stop's 256 steps are never reached in 8
    assert rows["moi"][4] == "100%"
