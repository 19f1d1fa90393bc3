"""Side-by-side benchmarks of plm-ray against the usual recipes; `python -m benchmarks`."""
