"""Run analysis: pure DataFrame -> tables and figures."""
from analysis.load import Run, load_run, samples_frame, steps_frame

__all__ = ["Run", "load_run", "samples_frame", "steps_frame"]
