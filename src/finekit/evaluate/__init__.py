"""The evaluation room: metrics, plots, and running a task over a split."""
