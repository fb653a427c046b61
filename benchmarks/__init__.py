"""natt's benchmarks: pytest-benchmark data-path grid and the ratio run (``python -m benchmarks.compare``)."""
