"""Shared fixtures: every data-path test runs on every backend (DESIGN: two implementations, one suite)."""

import pytest

import natt

# CI builds the Cython extension, so both backends must be present; a missing
# one fails here instead of silently shrinking the suite.
BACKENDS = ["reference", "fast"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Name of the backend under test ("reference" or "fast")."""
    if request.param not in natt.backends():
        pytest.fail(f"backend {request.param!r} is not available: {natt.backends()}")
    return request.param


@pytest.fixture
def nic(backend):
    """An empty Offload on the backend under test, closed after the test."""
    with natt.Offload(backend=backend) as n:
        yield n
