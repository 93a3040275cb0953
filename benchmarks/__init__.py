"""Benchmarks: ``python -m benchmarks.<name>`` measures a figure and its baseline in one run."""
