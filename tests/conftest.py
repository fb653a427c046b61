"""Shared fixtures: every data-path test runs on every backend (DESIGN: two implementations, one suite)."""

import contextlib
from collections.abc import Iterator

import pytest

import natt

# CI builds the Cython extension, so both backends must be present; a missing
# one fails here instead of silently shrinking the suite. Where the CPU has AES-NI the fast
# backend runs AES-GCM, AES-GMAC and outbound AES-CBC on natt's own AES code (natt_aesni.h);
# "fast-libcrypto" is the fast backend with that switched off, so the libcrypto path that
# other CPUs take passes the same suite.
try:
    from natt._fastpath import _aesni
except ImportError:
    _aesni = None
BACKENDS = ["reference", "fast"] + (["fast-libcrypto"] if _aesni is not None and _aesni() else [])


@contextlib.contextmanager
def aes_switch(enabled: bool):
    """SAs added inside run on natt's own AES (``enabled``) or on libcrypto; restored after."""
    before = _aesni()
    _aesni(enabled)
    try:
        yield
    finally:
        _aesni(before)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Iterator[str]:
    """Name of the backend under test ("reference" or "fast")."""
    name = request.param.removesuffix("-libcrypto")
    if name not in natt.backends():
        pytest.fail(f"backend {name!r} is not available: {natt.backends()}")
    with aes_switch(False) if name != request.param else contextlib.nullcontext():
        yield name


@pytest.fixture
def nic(backend):
    """An empty Offload on the backend under test, closed after the test."""
    with natt.Offload(backend=backend) as n:
        yield n
