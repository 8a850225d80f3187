"""Run analysis: pure DataFrame -> tables and figures, and the report writer.

from latentcot.analysis import load_run, compute_tables, write_report
run = load_run("runs/grid")
tables = compute_tables(run.samples, run.steps)   # tables["method_comparison"], tables.skipped
result = write_report("runs/grid")                 # runs/grid/report/{summary.md,report.html,…}
"""

from .load import Run, load_run, samples_frame, steps_frame
from .report import ReportResult, write_report
from .stats import AnalysisOptions
from .tables import AnalysisTables, compute_tables

__all__ = [
    "AnalysisOptions",
    "AnalysisTables",
    "ReportResult",
    "Run",
    "compute_tables",
    "load_run",
    "samples_frame",
    "steps_frame",
    "write_report",
]
