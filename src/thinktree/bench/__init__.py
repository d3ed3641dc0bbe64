"""Benchmarks: grids of runs, their statistics, reports and plots."""
