"""Data-path benchmarks: decap and encap per suite, packet size, batch size, threads and SA count.

Run ``pytest benchmarks --benchmark-only`` for the short default set (the
``smoke`` points), ``pytest benchmarks --benchmark-only -m grid`` for the
whole grid. Every benchmark also checks its result (every packet ``OK``, the
decapsulated packets equal the datagrams that went in), so a plain
``pytest benchmarks`` is a correctness run of the same cases, and a number
never comes from an error path.

Tunnel mode, UDP port 4500, RFC 3948 framing; inner packets are IPv4/UDP
datagrams of 64, 512 or 1400 octets; "many SAs" is 100 000 inbound SAs with
random SPIs, each packet picking one at random. Anti-replay is off in this
grid (see ``conftest.Workloads``); ``test_decap_replay_window`` measures it on.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import numpy as np
import pytest

import natt
from natt import DecapResult, EncapResult, PacketBatch, Status

from .conftest import head

SUITES = ("aes128gcm16", "aes256gcm16", "aes128-sha1", "aes256-sha256", "chacha20poly1305", "aes128gmac",
          "3des-sha1")
SIZES = (64, 512, 1400)
BATCHES = (1, 64, 4096, 65536)
THREADS = (None, 2)
SAS = (1, 100_000)


class Case(NamedTuple):
    backend: str
    suite: str
    size: int
    batch: int
    threads: Optional[int]
    sas: int = 1

    @property
    def id(self) -> str:
        t = "t1" if self.threads is None else f"t{self.threads}"
        return f"{self.backend}-{self.suite}-{self.size}B-x{self.batch}-{t}-{self.sas}sa"


def _smoke(c: Case) -> bool:
    """The short default run: every suite once, then one step along each other axis."""
    if c.backend == "reference":
        return True
    if c.threads is None and c.sas == 1 and c.batch == 4096 and (c.size == 512 or c.suite == "aes128gcm16"):
        return True                                   # every suite at 512; AES-GCM at every size
    if c.suite != "aes128gcm16":
        return False
    return ((c.size == 64 and c.threads is None and c.sas == 1 and c.batch in (1, 64))   # per-call overhead
            or (c.size == 1400 and c.batch == 65536 and c.sas == 1)                     # big batch, threads
            or (c.size == 64 and c.batch == 65536 and c.threads is None))               # 1 vs 100 000 SAs


def _params(direction: str) -> list:
    cases = [Case("fast", s, z, b, t, n)
             for s, z, n, b, t in itertools.product(SUITES, SIZES, SAS if direction == "decap" else (1,),
                                                    BATCHES, THREADS)]
    # The reference path, for scale only (~40 us a packet): small batches of two suites.
    cases += [Case("reference", s, z, 64, None) for s in ("aes128gcm16", "aes128-sha1") for z in (64, 1400)]
    params = []
    for c in cases:
        marks = [pytest.mark.grid] + ([pytest.mark.smoke] if _smoke(c) else [])
        params.append(pytest.param(c, id=c.id, marks=marks))
    return params


def _label(benchmark, direction: str, c: Case) -> None:
    benchmark.group = f"{direction} {c.suite} {c.size}B"
    benchmark.extra_info.update(packets=c.batch, inner_octets=c.size, threads=c.threads or 1, sas=c.sas,
                                backend=c.backend)


@pytest.mark.parametrize("case", _params("decap"))
def test_decap(benchmark, workloads, case: Case) -> None:
    wl = workloads.workload(case.backend, case.suite, case.size, case.sas)
    nic = workloads.receiver(case.backend, case.suite, case.size, case.sas)
    n = min(case.batch, len(wl.esp))
    batch = head(wl.esp, n)
    out = DecapResult()
    _label(benchmark, "decap", case)

    res = benchmark(nic.decap, batch, threads=case.threads, out=out)

    assert res.counts() == {Status.OK: n}
    for i in {0, n // 2, n - 1}:
        assert res[i] == wl.inner[i]


@pytest.mark.parametrize("case", _params("encap"))
def test_encap(benchmark, workloads, case: Case) -> None:
    wl = workloads.workload(case.backend, case.suite, case.size, 1)
    n = min(case.batch, len(wl.inner))
    inner = head(wl.inner, n)
    tx, h = wl.sender(case.backend)
    out = EncapResult()
    _label(benchmark, "encap", case)

    res = benchmark(tx.encap, inner, h, threads=case.threads, out=out)

    assert res.counts() == {Status.OK: n}
    # The packets of the last round decapsulate back to what went in.
    k = min(n, 64)
    rx = wl.receiver(case.backend, replay_window=0)
    back = rx.decap(PacketBatch(res.data, np.ascontiguousarray(res.offsets[:k]),
                                np.ascontiguousarray(res.lengths[:k])))
    assert back.counts() == {Status.OK: k}
    assert [back[i] for i in range(k)] == [wl.inner[i] for i in range(k)]
    rx.close()
    tx.close()


# Part of the grid (-m grid) and of the default set alike.
@pytest.mark.grid
@pytest.mark.smoke
@pytest.mark.parametrize("size", [64, 1400])
def test_decap_replay_window(benchmark, workloads, size: int) -> None:
    """AES-GCM decap of 65 536 packets with natt's default anti-replay window (64), on a fresh SA each round."""
    wl = workloads.workload("fast", "aes128gcm16", size, 1)
    out = DecapResult()
    benchmark.group = f"decap aes128gcm16 {size}B"
    benchmark.extra_info.update(packets=len(wl.esp), inner_octets=size, threads=1, sas=1,
                                backend="fast, replay window 64")
    receivers: list[natt.Offload] = []

    def fresh() -> tuple[tuple, dict]:
        receivers.append(wl.receiver("fast"))
        return (wl.esp,), {"out": out}

    res = benchmark.pedantic(lambda batch, out: receivers[-1].decap(batch, out=out), setup=fresh,
                             rounds=5)

    assert res.counts() == {Status.OK: len(wl.esp)}
    # Sequence number 1 is the SA's warm-up packet; the batch carried 2 .. n + 1.
    assert receivers[-1].sa_stats(receivers[-1].sa_handles()[0])["replay_seq"] == len(wl.esp) + 1
    for nic in receivers:
        nic.close()
