"""Anti-replay state export/import (``Offload.replay_state``, ``replay_bitmap``, ``replay_fail_run``;
docs/semantics.md §3).

An SA's window moved to another Offload -- the same backend or the other one -- must make
exactly the decisions the original would have made on the same follow-up traffic. Expected
windows are recomputed here from the numbers that were accepted, independently of natt.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

import natt
from natt import Status
from natt._suites import SUITES

from test_datapath import SPI, Peer, add_in

GCM = SUITES["aes128gcm16"]
U32 = 1 << 32


def _tampered(packet: bytes) -> bytes:
    """The packet with its last ICV octet flipped: AUTH_FAILED, must not move the window."""
    return packet[:-1] + bytes([packet[-1] ^ 0x01])


def _mixed_traffic(rng: random.Random, start: int, w: int, esn: bool) -> list[tuple[int, bool]]:
    """(number, tampered) pairs: in-order steps, jumps of about a window, out-of-order and
    duplicate numbers inside the window, numbers left of it, and forged packets."""
    top_limit = (1 << 64) - 1 if esn else U32 - 1
    cur, out = start, []
    for _ in range(150):
        op = rng.random()
        if op < 0.4:
            cur += rng.randint(1, 5)
            n = cur
        elif op < 0.5:
            cur += rng.choice([w // 2, w - 1, w, w + 3])
            n = cur
        elif op < 0.75:
            n = cur - rng.randrange(0, w)
        elif op < 0.85:
            n = cur - w - rng.randint(0, 10)
        else:
            n = cur + rng.randint(1, 3)
            out.append((n, True))
            continue
        if 1 <= n <= top_limit:
            out.append((n, False))
    return out


def _followup(rng: random.Random, top: int, w: int, esn: bool) -> list[tuple[int, bool]]:
    """Numbers around both edges of the window ``top - w + 1 .. top``, a sample inside it,
    repeats and a few forgeries: every kind of REPLAY/OK decision the window makes."""
    top_limit = (1 << 64) - 1 if esn else U32 - 1
    nums = list(range(top - w - 3, top - w + 40)) + list(range(top - 40, top + 6))
    nums += [top - rng.randrange(0, w) for _ in range(300)]
    nums += rng.sample(nums, 50)                           # repeats inside the follow-up itself
    rng.shuffle(nums)
    out = [(n, rng.random() < 0.05) for n in nums if 1 <= n <= top_limit]
    return out


def _packets(peer: Peer, traffic: list[tuple[int, bool]]) -> list[bytes]:
    return [_tampered(peer.packet(n)) if bad else peer.packet(n) for n, bad in traffic]


def _expected_window(start: int, accepted: list[int], w: int) -> tuple[int, int]:
    """RFC 4303 §3.4.3 from scratch: T = highest accepted; bit i set when T - i was accepted,
    or is <= ``start`` (installed as seen), or is <= 0 (never valid)."""
    top = max([start, *accepted])
    seen = set(accepted)
    bitmap = 0
    for i in range(w):
        n = top - i
        if n <= start or n in seen:
            bitmap |= 1 << i
    return top, bitmap


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn"])
@pytest.mark.parametrize("w", [32, 64, 1000, 65536])
def test_moved_window_decides_like_the_original(nic: natt.Offload, w: int, esn: bool) -> None:
    rng = random.Random(w * 2 + esn)
    # Without ESN start at 0 (window bits of numbers <= 0); with ESN just below a 2**32 boundary,
    # so the traffic crosses into seq_hi = 1 and the window then spans it (Appendix A case B).
    start = U32 - 50 if esn else 0
    h, peer = add_in(nic, GCM, esn=esn, replay_window=w, replay_seq=start)
    traffic = _mixed_traffic(rng, start, w, esn)
    res = nic.decap(_packets(peer, traffic))
    ok = res.status == Status.OK
    assert ok.any() and (res.status == Status.REPLAY).any() and (res.status == Status.AUTH_FAILED).any()

    top, bitmap = nic.replay_state(h)
    assert (top, bitmap) == _expected_window(start, [int(s) for s in res.seq[ok]], w)
    assert bitmap != (1 << w) - 1, "the scenario must leave holes in the window"

    moved: list[tuple[str, natt.Offload, int]] = []
    try:
        for other in natt.backends():
            o = natt.Offload(backend=other)
            moved.append((other, o, add_in(o, GCM, esn=esn, replay_window=w, replay_seq=top,
                                           replay_bitmap=bitmap)[0]))
            assert o.replay_state(moved[-1][2]) == (top, bitmap)
        follow = _packets(peer, _followup(rng, top, w, esn))
        want = nic.decap(follow)
        assert (want.status == Status.OK).any() and (want.status == Status.REPLAY).any()
        for other, o, mh in moved:
            got = o.decap(follow)
            assert np.array_equal(got.status, want.status), other
            assert np.array_equal(got.seq, want.seq), other
            assert o.replay_state(mh) == nic.replay_state(h)
    finally:
        for _, o, _ in moved:
            o.close()


def test_fresh_sa_exports_a_full_window(nic: natt.Offload) -> None:
    """Default install (no replay_bitmap): every number <= replay_seq counts as seen."""
    h, _ = add_in(nic, GCM, replay_window=1000, replay_seq=12345)
    assert nic.replay_state(h) == (12345, (1 << 1000) - 1)


@pytest.mark.parametrize("w", [32, 64, 1000, 65536])
def test_import_export_round_trip(nic: natt.Offload, w: int) -> None:
    """An imported bitmap comes back bit for bit, except that numbers <= 0 read as seen."""
    rng = random.Random(w)
    for top in (0, 5, w - 1, w, w + 7, U32 - 1):
        bitmap = rng.getrandbits(w)
        h, _ = add_in(nic, GCM, spi=SPI + top % 1000 + 1 + w, replay_window=w, replay_seq=top,
                      replay_bitmap=bitmap)
        below = ((1 << w) - 1) & ~((1 << top) - 1) if top < w else 0
        assert nic.replay_state(h) == (top, bitmap | below)
        nic.delete_sa(h)


def test_imported_hole_is_accepted_once(nic: natt.Offload) -> None:
    """A number whose bit is clear in the imported bitmap is new; its neighbours are replays."""
    top = 1000
    bitmap = ((1 << 64) - 1) & ~(1 << 10)              # only number 990 unseen
    h, peer = add_in(nic, GCM, replay_window=64, replay_seq=top, replay_bitmap=bitmap)
    res = nic.decap([peer.packet(989), peer.packet(990), peer.packet(990), peer.packet(991), peer.packet(1001)])
    assert res.status.tolist() == [Status.REPLAY, Status.OK, Status.REPLAY, Status.REPLAY, Status.OK]
    assert nic.replay_state(h) == (1001, (1 << 64) - 1)


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn"])
@pytest.mark.parametrize("top", [0, 5])
def test_seq_zero_is_a_replay_even_where_the_imported_bitmap_is_clear(nic: natt.Offload, top: int,
                                                                      esn: bool) -> None:
    """Sequence number 0 is never valid (RFC 4303 §3.3.3: the first packet sent carries 1), so
    the receiver rejects it (§3.4.3, docs/semantics.md §3) whatever the window's bits say. An
    imported bitmap of 0 clears the bit of number 0 too (replay_state only *reports* numbers
    <= 0 as seen): the check must not rest on that bit."""
    h, peer = add_in(nic, GCM, esn=esn, replay_window=64, replay_seq=top, replay_bitmap=0)
    packets = [peer.packet(0)] + [peer.packet(n) for n in range(1, top + 1)] + [peer.packet(0)]
    res = nic.decap(packets)
    assert res.status.tolist() == [Status.REPLAY] + [Status.OK] * top + [Status.REPLAY]
    assert res.seq[0] == 0 and res.seq[-1] == 0 and res.sa[0] == h
    st = nic.sa_stats(h)
    assert st["replays"] == 2 and st["packets"] == top and st["replay_seq"] == top


@pytest.mark.parametrize("kw, why", [
    ({"replay_bitmap": -1}, "negative"),
    ({"replay_bitmap": 1 << 64}, "wider than the window"),
    ({"replay_bitmap": True}, "bool is not a bitmap"),
    ({"replay_bitmap": "3"}, "not an int"),
    ({"replay_bitmap": 0, "replay_window": 0, "suite": "aes128gcm16"}, "no window"),
    ({"replay_bitmap": 0, "direction": "out"}, "outbound"),
])
def test_replay_bitmap_validation(nic: natt.Offload, kw: dict[str, Any], why: str) -> None:
    args: dict[str, Any] = {"replay_window": 64, **kw}
    suite = SUITES[args.pop("suite", "aes128gcm16")]
    direction = args.pop("direction", "in")
    with pytest.raises(natt.OffloadError) as ei:
        nic.add_sa(SPI, bytes(suite.key_len), suite.name, direction, src="198.51.100.2", dst="203.0.113.5",
                   **args)
    assert ei.value.status == natt.NdisStatus.INVALID_PARAMETER, why
    assert str(ei.value).startswith("replay_bitmap:"), why
    assert nic.sa_handles() == []


def test_replay_bitmap_validation_oid(nic: natt.Offload) -> None:
    """The OID layer returns the status (set_oid never raises) and installs nothing."""
    key = bytes(GCM.key_len)
    req = natt.AddUdpEspSa(
        flags=natt.OFFLOAD_INBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, SPI, integrity_algo=natt.AlgoInfo(GCM.integ_algo, GCM.integ_key_len),
            conf_algo=natt.AlgoInfo(GCM.conf_algo, GCM.conf_key_len))],
        key_mat=key, icv_len=GCM.icv_len, replay_window=32, replay_bitmap=1 << 32)
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.INVALID_PARAMETER
    assert nic.sa_handles() == []
    req.replay_bitmap = (1 << 32) - 2
    req.replay_seq = 40
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.SUCCESS
    assert nic.replay_state(req.offload_handle) == (40, (1 << 32) - 2)


@pytest.mark.parametrize("carried", [True, False], ids=["with-fail-run", "window-only"])
def test_moved_esn_sa_keeps_its_run_of_failures(nic: natt.Offload, carried: bool) -> None:
    """An ESN SA moved in the middle of a run of failed packets (2**32 lost: RFC 4303 Appendix
    A3) resynchronises at the same packet as the original only if its count of failures moves
    with it (``sa_stats`` ``replay_fail_run`` -> ``add_sa(replay_fail_run=...)``)."""
    top = (5 << 32) + 1000
    h, peer = add_in(nic, GCM, esn=True, replay_seq=top)
    lost = [peer.packet((6 << 32) + 2000 + k) for k in range(64)]
    first = nic.decap(lost[:50])
    assert (first.status == Status.AUTH_FAILED).all()
    state, run = nic.replay_state(h), nic.sa_stats(h)["replay_fail_run"]
    assert state == (top, (1 << 64) - 1) and run == 50
    want = nic.decap(lost[50:])
    assert want.status.tolist() == [Status.AUTH_FAILED] * 13 + [Status.OK]
    for other in natt.backends():
        with natt.Offload(backend=other) as o:
            mh, _ = add_in(o, GCM, esn=True, replay_seq=state[0], replay_bitmap=state[1],
                           replay_fail_run=run if carried else 0)
            assert o.sa_stats(mh)["replay_fail_run"] == (run if carried else 0)
            got = o.decap(lost[50:])
            if carried:
                assert np.array_equal(got.status, want.status) and np.array_equal(got.seq, want.seq), other
                assert o.replay_state(mh) == nic.replay_state(h), other
                assert o.sa_stats(mh)["replay_fail_run"] == nic.sa_stats(h)["replay_fail_run"] == 0
            else:
                assert (got.status == Status.AUTH_FAILED).all(), other
                assert o.sa_stats(mh)["replay_fail_run"] == 14


@pytest.mark.parametrize("kw, why", [
    ({"replay_fail_run": -1}, "negative"),
    ({"replay_fail_run": 1 << 32}, "wider than the count"),
    ({"replay_fail_run": "3"}, "not an int"),
    ({"replay_fail_run": 5}, "not ESN"),
    ({"replay_fail_run": 5, "esn": True, "direction": "out"}, "outbound"),
])
def test_replay_fail_run_validation(nic: natt.Offload, kw: dict[str, Any], why: str) -> None:
    args = dict(kw)
    direction = args.pop("direction", "in")
    with pytest.raises(natt.OffloadError) as ei:
        nic.add_sa(SPI, bytes(GCM.key_len), GCM.name, direction, src="198.51.100.2", dst="203.0.113.5", **args)
    assert ei.value.status == natt.NdisStatus.INVALID_PARAMETER, why
    assert str(ei.value).startswith("replay_fail_run:"), why
    assert nic.sa_handles() == []
    # Through the OID layer too: the status, nothing installed.
    req = natt.AddUdpEspSa(
        flags=natt.OFFLOAD_INBOUND_SA if direction == "in" else natt.OFFLOAD_OUTBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, SPI, integrity_algo=natt.AlgoInfo(GCM.integ_algo, GCM.integ_key_len),
            conf_algo=natt.AlgoInfo(GCM.conf_algo, GCM.conf_key_len))],
        key_mat=bytes(GCM.key_len), icv_len=GCM.icv_len, esn=args.get("esn", False),
        replay_fail_run=args["replay_fail_run"])
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.INVALID_PARAMETER
    assert nic.sa_handles() == []


def test_replay_state_refusals(nic: natt.Offload) -> None:
    h_out = nic.add_sa(SPI, bytes(GCM.key_len), GCM.name, "out", src="203.0.113.5", dst="198.51.100.2")
    h_off, _ = add_in(nic, SUITES["aes128-sha256"], spi=SPI + 1, replay_window=0)
    for h in (h_out, h_off, 999_999, "1"):
        with pytest.raises(natt.OffloadError) as ei:
            nic.replay_state(h)  # type: ignore[arg-type]
        assert ei.value.status == natt.NdisStatus.INVALID_PARAMETER
    nic.close()
    with pytest.raises(natt.OffloadError):
        nic.replay_state(h_off)


def test_reprs_survive_the_widest_bitmap(nic: natt.Offload) -> None:
    """repr() of a request or of a lane state holding a 65536-bit bitmap must not raise
    (Python refuses int-to-decimal conversions past 4300 digits)."""
    from natt import dask as ndask

    full = (1 << 65536) - 1
    assert "replay_bitmap" not in repr(natt.AddUdpEspSa(replay_window=65536, replay_bitmap=full))
    assert "windows" not in repr(ndask._LaneState("t", {0: (7, full)}))
    h, _ = add_in(nic, GCM, replay_window=65536, replay_seq=70000, replay_bitmap=full >> 1)
    assert nic.replay_state(h) == (70000, full >> 1)
