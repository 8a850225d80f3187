"""Run analysis: pure DataFrame -> tables and figures."""
