"""natt's SA arena (natt/natt_arena.h): the C allocator on its own, then through the backend.

The arena hands out the memory of every SA struct of the fast path; a slot given out twice,
a slab unmapped under a live SA or a freed SA not reported by AddressSanitizer would each be
silent in the packet tests until memory got reused.
"""

from __future__ import annotations

import pytest

import natt
from _cprog import FLAGS, build, run
from _packets import key_for
from natt._suites import SUITES


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_arena_against_a_model(tmp_path, flags):
    done = run(build(tmp_path, "arena", flags), "arena", "400000")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "400000 operations, 0 errors", done.stdout
    assert not done.stderr, done.stderr


def test_freed_sa_slot_is_poisoned_for_asan(tmp_path):
    done = run(build(tmp_path, "arena", FLAGS["sanitized"]), "uaf")
    assert done.returncode != 0, done.stdout
    assert "use-after-poison" in done.stderr, done.stderr


def test_deleted_sas_give_their_slabs_back():
    from natt import _fastpath
    before = _fastpath._sa_arena_slabs()
    n = 12_000                                   # more than three slabs of 3 640 SAs
    with natt.Offload(backend="fast", max_sas=n) as nic:
        hs = [nic.add_sa(0x1000 + i, key_for(SUITES["aes128gcm16"]), "aes128gcm16", "in", mode="transport")
              for i in range(n)]
        assert _fastpath._sa_arena_slabs() >= before + n // 3640
        for h in hs:
            nic.delete_sa(h)
        assert _fastpath._sa_arena_slabs() <= before + 1     # at most a spare stays mapped


def test_an_sa_the_backend_refuses_gives_its_slot_back():
    # The slot was taken before the first read of the request, outside the try that frees it:
    # each refused request leaked one (helper scripts call FastBackend directly).
    from natt import _fastpath
    backend = _fastpath.FastBackend()
    before = _fastpath._sa_arena_slabs()
    for _ in range(8_000):                       # more than two slabs of 3 640 SAs
        with pytest.raises(AttributeError):
            backend.add_sa(object())
    assert _fastpath._sa_arena_slabs() <= before + 1
