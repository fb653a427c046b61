"""pytest configuration of the data-path benchmarks (``pytest benchmarks --benchmark-only``).

* ``--benchmark-only`` turns benchmarking back on: pyproject's ``addopts``
  carries ``--benchmark-disable`` so that the unit-test run stays fast, and
  pytest-benchmark refuses the two together.
* The full grid (every suite × size × batch × threads × SA count) is marked
  ``grid`` and runs only when asked for (``-m grid``); a plain run takes the
  points also marked ``smoke``, which cover every axis once.
* Workloads and receivers are expensive to build (100 000 SAs), so they are
  built once per session and shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from natt import Offload, PacketBatch
from natt._bench import Workload, build_workload


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "grid: a point of the full benchmark grid (select with -m grid)")
    config.addinivalue_line("markers", "smoke: a grid point that also runs without -m (the default short run)")
    # Runs before pytest-benchmark's own (trylast) pytest_configure reads the options.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("grid") and not item.get_closest_marker("smoke") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class Workloads:
    """Session cache: packets per (backend, suite, size, SAs), receivers per (backend, suite, SAs).

    Receivers have anti-replay off (window 0): pytest-benchmark runs the same
    packets many times, and with the window on every round after the first
    would measure the REPLAY early exit. ``benchmarks/compare.py`` measures
    with the window on (fresh SAs per repetition).
    """

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._wl: dict[tuple[str, str, int, int], Workload] = {}
        self._rx: dict[tuple[str, str, int], Offload] = {}

    def workload(self, backend: str, suite: str, size: int, sas: int) -> Workload:
        key = (backend, suite, size, sas)
        if key not in self._wl:
            if sas > 1:
                # Many-SA workloads are large: keep one at a time (tests are ordered by suite and size).
                for k in [k for k in self._wl if k[3] > 1]:
                    del self._wl[k]
            # Build with the fast backend when it is there: the reference one takes ~40 us a packet.
            self._wl[key] = build_workload(_builder(backend), suite, size, self.max_batch if backend == "fast"
                                           else min(self.max_batch, 4096), sas)
        return self._wl[key]

    def receiver(self, backend: str, suite: str, size: int, sas: int) -> Offload:
        key = (backend, suite, sas)
        if key not in self._rx:
            if sas > 1:
                for k in [k for k in self._rx if k[2] > 1]:
                    self._rx.pop(k).close()
            self._rx[key] = self.workload(backend, suite, size, sas).receiver(backend, replay_window=0)
        return self._rx[key]

    def close(self) -> None:
        for nic in self._rx.values():
            nic.close()


def _builder(backend: str) -> str:
    import natt

    return "fast" if "fast" in natt.backends() else backend


@pytest.fixture(scope="session")
def workloads() -> Any:
    w = Workloads(max_batch=65536)
    yield w
    w.close()


def head(batch: PacketBatch, n: int) -> PacketBatch:
    """The first ``n`` packets of ``batch`` (shares its buffer)."""
    return PacketBatch(batch.data, np.ascontiguousarray(batch.offsets[:n]), np.ascontiguousarray(batch.lengths[:n]))
