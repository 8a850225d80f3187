"""Wall-clock timing shared by the benchmark scripts (CUDA work is synchronised around the call)."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds ``fn()`` takes on ``device``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
