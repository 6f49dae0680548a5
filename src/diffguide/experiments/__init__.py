"""Experiments: guidance sweeps over ``w`` and classifier-guidance scales, their tables and plots
(:mod:`~diffguide.experiments.sweep`, :mod:`~diffguide.experiments.plots`), and the exact-mixture
picture (:mod:`~diffguide.experiments.gmm_demo`). matplotlib is imported only when plotting."""

from .plots import plot_sweep, sweep_series
from .sweep import Setting, evaluate_samples, grid_settings, read_rows, run_sweep

__all__ = ["Setting", "evaluate_samples", "grid_settings", "plot_sweep", "read_rows", "run_sweep", "sweep_series"]
