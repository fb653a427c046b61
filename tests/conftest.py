"""Shared fixtures: every data-path test runs on every backend (DESIGN: two implementations, one suite)."""

import contextlib
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import natt

# Property tests (hypothesis) draw the same examples on every run, so that `pytest` passes or
# fails alike on every machine and in CI: a random draw that meets a wrong expectation in a test
# blocked the landing of unrelated work once (test_fuzz's protocol-59 case). New examples on
# each run: NATT_HYPOTHESIS_PROFILE=explore pytest (README, "Testing"); the sanitized fuzz job
# that CI runs after the tests (ci/fuzz-sanitized.sh) draws new inputs every time too.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("NATT_HYPOTHESIS_PROFILE", "deterministic"))

# CI builds the Cython extension, so both backends must be present; a missing
# one fails here instead of silently shrinking the suite. Where the CPU has AES-NI the fast
# backend runs AES-GCM, AES-GMAC and outbound AES-CBC on natt's own AES code (natt_aesni.h);
# "fast-libcrypto" is the fast backend with that switched off, so the libcrypto path that
# other CPUs take passes the same suite.
try:
    from natt._fastpath import _aesni, _share_min_octets
except ImportError:
    _aesni = _share_min_octets = None
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


@pytest.fixture(autouse=True, scope="session")
def threads_on_small_batches() -> Iterator[None]:
    """The fast backend runs a ``threads=N`` batch of less than 256 KiB serially (natt/_fastpath.pyx,
    ``natt_share_min_octets``), and most of the tests' batches are smaller: they must still run
    the threaded pipelines they check. test_fastpath checks the threshold itself."""
    if _share_min_octets is None:
        yield
        return
    before = _share_min_octets()
    _share_min_octets(0)
    try:
        yield
    finally:
        _share_min_octets(before)


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
