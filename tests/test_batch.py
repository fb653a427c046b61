"""PacketBatch validation and result-buffer behaviour (DESIGN "Packet batches", "Data path").

A batch is validated once, when it is built, so that the kernels can trust
bounds and dtypes: every malformed batch must be refused there with a
``ValueError`` that names the field at fault, and nothing may reach a kernel.
The data-path tests run on both backends through the ``nic`` fixture.
"""

from __future__ import annotations

import array
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import natt
from _packets import checksum
from natt import PacketBatch, Status, _batch

I64 = np.int64


def _arr(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


# --------------------------------------------------------------------------- packets

def inner_udp(payload: bytes = b"hello, natt", src: int = 0x0A010002, dst: int = 0x0A020007) -> bytes:
    """A well-formed inner IPv4/UDP datagram (UDP checksum 0: not under test here)."""
    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(udp), 7, 0, 64, 17, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + udp


SUITE = "aes128gcm16"
KEY = bytes(range(0x40, 0x40 + 20))      # 16-octet AES key + 4-octet salt


def sa_pair(nic: natt.Offload, *, replay_window: int = 64) -> tuple[int, int]:
    """An outbound SA and the inbound SA that accepts what it produces (same SPI and key)."""
    kw = dict(mode="tunnel", src="198.51.100.2", dst="203.0.113.5")
    out = nic.add_sa(0x1001, KEY, SUITE, "out", **kw)
    inb = nic.add_sa(0x1001, KEY, SUITE, "in", replay_window=replay_window, **kw)
    return out, inb


# --------------------------------------------------------------------------- construction

def test_valid_batch_indexing_and_repr():
    data = np.frombuffer(b"aaaabbbbbbcc", dtype=np.uint8)
    b = PacketBatch(data, _arr(0, 4, 10), _arr(4, 6, 2))
    assert len(b) == 3
    assert [b[0], b[1], b[2]] == [b"aaaa", b"bbbbbb", b"cc"]
    assert b[-1] == b"cc"
    assert list(b) == [b"aaaa", b"bbbbbb", b"cc"]
    assert repr(b) == "PacketBatch(3 packets, 12 octets)"


def test_bytes_like_data_is_accepted():
    b = PacketBatch(b"abcdef", _arr(0, 3), _arr(3, 3))
    assert list(b) == [b"abc", b"def"]
    b = PacketBatch(bytearray(b"abcdef"), _arr(1), _arr(2))
    assert b[0] == b"bc"


@pytest.mark.parametrize("data, hint", [
    ([b"abc", b"def"], r"got list \(a list of packets\? use PacketBatch\.from_packets\(\[\.\.\.\]\)\)$"),
    ((b"abc", b"def"), r"got tuple \(a tuple of packets\? use PacketBatch\.from_packets\(\[\.\.\.\]\)\)$"),
    ([0x45, 0, 0, 20, 1, 2], r"got list \(the octets of the buffer\? use np\.array\(data, dtype=np\.uint8\)\)$"),
    ("abcdef", r"got str$"),        # no guess to offer
], ids=["list of packets", "tuple of packets", "list of octets", "str"])
def test_data_of_the_wrong_kind_gets_a_hint_at_what_was_meant(data, hint):
    # PacketBatch([pkt1, pkt2], offsets, lengths) is the natural first try; the constructor wraps
    # a buffer already laid out, and from_packets is the call that builds one from packets.
    with pytest.raises(ValueError, match=r"^data: expected a numpy uint8 array, " + hint):
        PacketBatch(data, _arr(0, 3), _arr(3, 3))


def test_segments_in_any_order_and_adjacent_are_accepted():
    data = np.arange(10, dtype=np.uint8)
    b = PacketBatch(data, _arr(6, 0, 3), _arr(4, 3, 3))   # [6,10) [0,3) [3,6): touching, not overlapping
    assert b[0] == bytes(range(6, 10)) and b[1] == bytes(range(3)) and b[2] == bytes(range(3, 6))


def test_empty_segments_anywhere_in_the_buffer_are_accepted():
    data = np.arange(8, dtype=np.uint8)
    # Empty segments inside another segment, at offset 0 and at the very end of the buffer.
    b = PacketBatch(data, _arr(0, 2, 0, 8, 8), _arr(8, 0, 0, 0, 0))
    assert [len(p) for p in b] == [8, 0, 0, 0, 0]


def test_overlapping_segments_are_accepted():
    data = np.arange(10, dtype=np.uint8)
    b = PacketBatch(data, _arr(0, 7, 2, 0), _arr(8, 3, 4, 8))
    assert list(b) == [bytes(range(8)), bytes(range(7, 10)), bytes(range(2, 6)), bytes(range(8))]


@pytest.mark.parametrize("threads", [None, 2])
def test_one_packet_repeated_by_offset_is_decapped_as_copies(nic, threads):
    # The data path only reads a batch, so offsets all 0 are copies of one packet without the
    # copying (DESIGN.md lists bounds, dtypes and contiguity as what a batch must satisfy).
    out_h, in_h = sa_pair(nic)
    packet, = nic.encap([inner_udp(b"again")], out_h)
    n = 600                             # more than one 256-packet chunk of the threaded decap
    batch = PacketBatch(np.frombuffer(packet, np.uint8), np.zeros(n, np.int64), np.full(n, len(packet), np.int64))
    res = nic.decap(batch, threads=threads)
    assert res.status.tolist() == [Status.OK] + [Status.REPLAY] * (n - 1)
    assert res[0] == inner_udp(b"again") and nic.sa_stats(in_h)["replays"] == n - 1


def _misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of the int64 array ``a`` one octet off its alignment (as np.frombuffer at an odd offset)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    b = buf[1:].view(np.int64)
    b[:] = a
    assert not b.flags.aligned
    return b


def _bad_cases():
    d = np.zeros(16, np.uint8)
    o, n = _arr(0, 8), _arr(8, 8)
    big = np.zeros((2, 8), np.uint8)
    yield "data dtype int8", (d.astype(np.int8), o, n), r"^data: dtype"
    yield "data dtype uint16", (np.zeros(8, np.uint16), o, n), r"^data: dtype"
    yield "data 2-D", (big, o, n), r"^data: .*one-dimensional"
    yield "data not contiguous", (np.zeros(32, np.uint8)[::2], o, n), r"^data: .*C-contiguous"
    yield "data a list", (list(range(16)), o, n), r"^data: expected"
    yield "offsets dtype int32", (d, o.astype(np.int32), n), r"^offsets: dtype"
    yield "offsets dtype uint64", (d, o.astype(np.uint64), n), r"^offsets: dtype"
    yield "offsets dtype float", (d, o.astype(np.float64), n), r"^offsets: dtype"
    yield "offsets big-endian", (d, o.astype(">i8"), n), r"^offsets: dtype"
    yield "offsets misaligned", (d, _misaligned(o), n), r"^offsets: not aligned to 8 octets"
    yield "lengths misaligned", (d, o, _misaligned(n)), r"^lengths: not aligned to 8 octets"
    yield "offsets a list", (d, [0, 8], n), r"^offsets: expected"
    yield "offsets 2-D", (d, o.reshape(2, 1), n), r"^offsets: .*one-dimensional"
    yield "offsets not contiguous", (d, _arr(0, 99, 8, 99)[::2], n), r"^offsets: .*C-contiguous"
    yield "lengths dtype int32", (d, o, n.astype(np.int32)), r"^lengths: dtype"
    yield "lengths 2-D", (d, o, n.reshape(1, 2)), r"^lengths: .*one-dimensional"
    yield "lengths not contiguous", (d, o, _arr(8, 99, 8, 99)[::2]), r"^lengths: .*C-contiguous"
    yield "size mismatch", (d, o, _arr(8)), r"^offsets/lengths: sizes differ"
    yield "negative offset", (d, _arr(0, -1), n), r"^offsets: negative offset at index 1"
    yield "negative length", (d, o, _arr(8, -3)), r"^lengths: negative length at index 1"
    yield "length 2**31", (d, o, _arr(8, 2**31)), r"^lengths: segment 1 is 2\*\*31"
    yield "length int64 max", (d, o, _arr(8, 2**63 - 1)), r"^lengths: segment 1"
    yield "segment past the end", (d, o, _arr(8, 9)), r"^offsets/lengths: segment 1 ends at 17"
    yield "offset past the end, empty", (d, _arr(0, 17), _arr(8, 0)), r"^offsets: segment 1 starts at 17"
    # An offset near 2**63 must not wrap offsets + lengths round to a negative end.
    yield "offset wraps int64", (d, _arr(0, 2**63 - 1), _arr(8, 1)), r"^offsets: segment 1"
    yield "offset wraps int64 (2)", (d, _arr(0, 2**63 - 5), _arr(8, 10)), r"^offsets: segment 1"


@pytest.mark.parametrize("args,match", [pytest.param(a, m, id=i) for i, a, m in _bad_cases()])
def test_invalid_batch_raises_value_error_naming_the_field(args, match):
    with pytest.raises(ValueError, match=match):
        PacketBatch(*args)


def test_empty_batch():
    b = PacketBatch(np.zeros(0, np.uint8), _arr(), _arr())
    assert len(b) == 0 and list(b) == [] and repr(b) == "PacketBatch(0 packets, 0 octets)"
    assert len(PacketBatch.from_packets([])) == 0
    # An empty batch ignores the contents of data entirely.
    assert len(PacketBatch(np.zeros(5, np.uint8), _arr(), _arr())) == 0


# --------------------------------------------------------------------------- from_packets

def test_from_packets_mixed_bytes_like_inputs():
    backing = np.arange(40, dtype=np.uint8)
    packets = [
        b"\x01\x02\x03",
        bytearray(b"\x04\x05"),
        memoryview(b"xxabcxx")[2:5],
        np.array([9, 8, 7], dtype=np.uint8),
        backing[::3],                                   # non-contiguous ndarray: copied, not viewed
        array.array("B", [250, 251]),
        memoryview(array.array("H", [0x0102, 0x0304])),  # multi-octet items: taken as raw octets
        b"",
    ]
    b = PacketBatch.from_packets(iter(packets))          # any iterable, consumed once
    expected = [bytes(memoryview(p).cast("B")) if not isinstance(p, np.ndarray) else p.tobytes()
                for p in packets]
    assert list(b) == expected
    assert b.data.dtype == np.uint8 and b.offsets.dtype == I64 and b.lengths.dtype == I64
    assert b.lengths.tolist() == [len(e) for e in expected]
    # The batch owns a copy: changing the sources afterwards changes nothing.
    packets[1][0] = 0xEE
    backing[:] = 0
    assert b[1] == b"\x04\x05" and b[4] == bytes(range(0, 40, 3))


def test_from_packets_takes_raw_octets_of_any_numpy_array():
    # The octets the buffer protocol gives, as for bytes(p): never a value cast to uint8.
    wide = np.array([0x4500, 0x001C], dtype=">u2")
    floats = np.array([1.5, -2.0])
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4)[:, 1:3]      # 2-D and non-contiguous
    b = PacketBatch.from_packets([wide, floats, grid])
    assert list(b) == [bytes.fromhex("4500001c"), floats.tobytes(), grid.tobytes()]


def test_from_packets_refuses_non_bytes_naming_the_packet():
    with pytest.raises(TypeError, match=r"^packets\[1\]: expected a bytes-like packet, got str$"):
        PacketBatch.from_packets([b"ok", "text is not a packet"])
    with pytest.raises(TypeError, match=r"^packets\[1\]: expected a bytes-like packet, got int"):
        PacketBatch.from_packets([b"ok", 17])
    with pytest.raises(TypeError, match=r"^packets\[0\]: a numpy array of Python objects"):
        PacketBatch.from_packets([np.array([b"ab"], dtype=object)])

    class Frame:            # a packet library's object (scapy's Ether(), IP()): bytes() gives its octets
        def __bytes__(self) -> bytes:
            return b"\x45" + bytes(19)
    with pytest.raises(TypeError, match=r"^packets\[1\]: expected a bytes-like packet, got Frame \(convert it: "
                                        r"bytes\(\) of the IPv4 datagram, e\.g\. bytes\(p\[IP\]\) for a scapy packet\)$"):
        PacketBatch.from_packets([b"ok", Frame()])


@pytest.mark.parametrize("packets, kind", [("abc", "str"), (None, "NoneType"), (17, "int")])
def test_decap_of_something_not_a_batch_names_packets(nic, packets, kind):
    message = f"^packets: expected a PacketBatch or an iterable of bytes-like packets, got {kind}$"
    with pytest.raises(TypeError, match=message):
        nic.decap(packets)
    # from_packets, the call the constructor's hint sends readers to, says the same (it used to
    # let iter() speak: "'NoneType' object is not iterable", or blame packets[0] for a str).
    with pytest.raises(TypeError, match=message):
        PacketBatch.from_packets(packets)


def test_reprs_count_in_the_singular_and_plural():
    assert repr(PacketBatch.from_packets([b"x"])) == "PacketBatch(1 packet, 1 octet)"
    assert repr(PacketBatch.from_packets([b"xy", b"z"])) == "PacketBatch(2 packets, 3 octets)"
    assert repr(natt.Offload().decap([b"x"])) == "DecapResult(1 packet: NOT_ESP=1)"
    with natt.Offload(backend="reference") as nic:
        assert repr(nic) == "<natt.Offload backend='reference' 0 SAs, 0 parser entries>"
        nic.add_sa(1, bytes(20), "aes128gcm16", "in", mode="transport")
        assert repr(nic) == "<natt.Offload backend='reference' 1 SA, 1 parser entry>"


# --------------------------------------------------------------------------- through the data path

def test_invalid_arguments_raise_before_any_kernel_runs(nic, monkeypatch):
    out_h, _ = sa_pair(nic)
    calls = []
    monkeypatch.setattr(nic._backend, "decap", lambda *a: calls.append("decap"))
    monkeypatch.setattr(nic._backend, "encap", lambda *a: calls.append("encap"))
    pkts = [inner_udp()]
    with pytest.raises(ValueError, match="^threads"):
        nic.decap(pkts, threads=0)
    with pytest.raises(ValueError, match="^threads"):
        nic.encap(pkts, out_h, threads=True)
    with pytest.raises(TypeError, match="^out"):
        nic.decap(pkts, out=natt.EncapResult())
    with pytest.raises(TypeError, match="^out"):
        nic.encap(pkts, out_h, out=natt.DecapResult())
    with pytest.raises(ValueError, match="^packets"):
        nic.decap(b"one packet, not an iterable of packets")
    with pytest.raises(TypeError):
        nic.decap([inner_udp(), 42])
    with pytest.raises(natt.OffloadError):
        nic.encap(pkts, 987654)
    assert calls == []


def test_empty_batch_through_decap_and_encap(nic):
    out_h, _ = sa_pair(nic)
    for packets in ([], PacketBatch(np.zeros(0, np.uint8), _arr(), _arr())):
        res = nic.decap(packets)
        assert len(res) == 0 and res.counts() == {} and list(res) == []
        assert res.status.dtype == np.uint8 and res.sa.dtype == I64
        assert res.seq.dtype == np.uint64 and res.next_header.dtype == np.uint8
        enc = nic.encap(packets, out_h)
        assert len(enc) == 0 and enc.counts() == {}
    assert nic.sa_stats(out_h)["replay_oseq"] == 0


def test_zero_length_segments_and_segment_at_end_of_buffer(nic):
    out_h, in_h = sa_pair(nic)
    enc = nic.encap([inner_udp(b"a"), inner_udp(b"bb")], out_h)
    assert enc.counts() == {Status.OK: 2}
    p0, p1 = enc[0], enc[1]
    # Layout: empty at 0, p0, empty between, p1 flush with the end, empty at data.size.
    data = np.frombuffer(p0 + p1, dtype=np.uint8)
    n = data.size
    b = PacketBatch(data, _arr(0, 0, len(p0), len(p0), n), _arr(0, len(p0), 0, len(p1), 0))
    res = nic.decap(b)
    assert res.status.tolist() == [Status.NOT_ESP, Status.OK, Status.NOT_ESP, Status.OK, Status.NOT_ESP]
    assert [res[i] for i in (0, 2, 4)] == [b"", b"", b""]
    assert res[1] == inner_udp(b"a") and res[3] == inner_udp(b"bb")
    assert res.sa.tolist() == [0, in_h, 0, in_h, 0]
    assert res.seq.tolist() == [0, 1, 0, 2, 0]


def test_encap_of_zero_length_segment_is_malformed(nic):
    out_h, _ = sa_pair(nic)
    enc = nic.encap([b"", inner_udp(), b""], out_h)
    assert enc.status.tolist() == [Status.MALFORMED, Status.OK, Status.MALFORMED]
    assert enc[0] == b"" and enc[2] == b""
    assert enc.seq[1] == 1                   # the rejected packets consumed no sequence number
    assert nic.sa_stats(out_h)["replay_oseq"] == 1


def test_batch_mutated_after_validation_gives_error_not_a_crash(nic):
    """The caller keeps write access to the arrays; the kernels re-check each segment."""
    out_h, _ = sa_pair(nic)
    enc = nic.encap([inner_udp(), inner_udp()], out_h)
    b = PacketBatch.from_packets([enc[0], enc[1]])
    b.lengths[0] = b.data.size + 1000           # now runs past the buffer
    res = nic.decap(b)
    assert res.status[0] == Status.ERROR and res[0] == b""
    assert res.status[1] == Status.OK


@pytest.mark.parametrize("bad", [2**40, 2**62, -1, -(2**62)])
def test_rewritten_lengths_cost_one_error_not_an_allocation(nic, bad):
    """Slots are sized from the caller's lengths: a length rewritten to anything must not make
    decap/encap allocate (or fail to allocate) a huge output buffer."""
    out_h, _ = sa_pair(nic)
    enc = nic.encap([inner_udp(), inner_udp()], out_h)
    b = PacketBatch.from_packets([enc[0], enc[1]])
    b.lengths[0] = bad
    res = nic.decap(b)
    assert res.status.tolist() == [Status.ERROR, Status.OK]
    assert res.data.size <= 2 * b.data.size
    e = PacketBatch.from_packets([inner_udp(), inner_udp()])
    e.lengths[1] = bad
    enc = nic.encap(e, out_h)
    assert enc.status.tolist() == [Status.OK, Status.ERROR]


def _decoded(res) -> list:
    return [(int(res.status[i]), int(res.sa[i]), int(res.seq[i]), int(res.next_header[i]), res[i])
            for i in range(len(res))]


def test_out_reuse_grows_and_shrinks(nic):
    out_h, _ = sa_pair(nic, replay_window=0)    # no anti-replay: the same packets decap again
    inner = [inner_udp(bytes([i]) * (i * 37 % 300)) for i in range(40)]
    enc = nic.encap(inner, out_h)
    assert enc.counts() == {Status.OK: 40}
    ciphertexts = list(enc)
    big, small = ciphertexts, ciphertexts[:3]

    res = nic.decap(big)
    first = _decoded(res)
    assert [r[4] for r in first] == inner
    buffer = res.data.base if res.data.base is not None else res.data

    again = nic.decap(small, out=res)
    assert again is res and len(res) == 3
    assert _decoded(res) == first[:3]
    # Shrinking reuses the same memory.
    assert np.shares_memory(res.data, buffer) and res.data.size <= buffer.size

    huge = big * 3
    again = nic.decap(huge, out=res)
    assert again is res and len(res) == 120
    assert _decoded(res) == first * 3
    assert res.counts() == {Status.OK: 120}

    # Encap results reuse the same way.
    eres = nic.encap(inner[:2], out_h)
    eres2 = nic.encap(inner, out_h, out=eres)
    assert eres2 is eres and len(eres) == 40 and eres.counts() == {Status.OK: 40}
    assert nic.decap(list(eres)).counts() == {Status.OK: 40}
    nic.encap(inner[:1], out_h, out=eres)
    assert len(eres) == 1 and nic.decap([eres[0]]).status.tolist() == [Status.OK]


@pytest.mark.parametrize("rebind", [
    lambda r: setattr(r, "offsets", r.offsets.copy()),           # a stale copy of the layout
    lambda r: setattr(r, "next_header", r.status),               # two results in one array
])
def test_out_whose_views_the_caller_rebound_is_laid_out_again(nic, rebind):
    # Same packet count and total size as the last batch, so _prepare's steady-state shortcut
    # applies: it once kept a rebound offsets array, and packet 0's 90 octets, written at the
    # old slot of 10, were overwritten by packet 1's (status NOT_ESP, "input unchanged").
    first = [b"\x11" * 10, b"\x22" * 90]
    second = [b"\x33" * 90, b"\x44" * 10]
    res = nic.decap(first)
    rebind(res)
    assert nic.decap(second, out=res) is res
    assert res.status.tolist() == [Status.NOT_ESP] * 2 and list(res) == second
    assert res.next_header.tolist() == [0, 0] and res.sa.tolist() == [0, 0]
    assert res.offsets.tolist() == [0, 90] and res.lengths.tolist() == [90, 10]
    ours = [res.status, res.sa, res.seq, res.next_header, res.offsets, res.lengths, res.data]
    assert not any(np.shares_memory(a, b) for k, a in enumerate(ours) for b in ours[k + 1:])


def test_a_new_results_slot_tails_hold_nothing_but_the_packets_own_trailer(nic):
    # A decap slot is as long as its input; the octets after the output belong to no packet,
    # and a buffer fresh from the allocator may hold anything the process freed before. The
    # fast path decrypts in place, so its output may be followed by the packet's own padding,
    # pad length and next header (RFC 4303 §2.4); nothing else.
    out_h, _ = sa_pair(nic, replay_window=0)
    inner = inner_udp(bytes(range(200)))
    sent = list(nic.encap([inner] * 5, out_h))
    pad = -(len(inner) + 2) % 4
    trailer = bytes(range(1, pad + 1)) + bytes([pad, 4])
    for _ in range(3):
        junk = np.full(1 << 20, 0xA5, np.uint8)      # freed memory that a new buffer may reuse
        del junk
        res = nic.decap(sent)
        assert res.counts() == {Status.OK: 5}
        ends = res.offsets.tolist()[1:] + [res.data.size]
        for o, n, end in zip(res.offsets.tolist(), res.lengths.tolist(), ends):
            tail = res.data[o + n:end].tobytes()
            assert len(tail) == len(sent[0]) - len(inner)
            assert tail[:len(trailer)] in (trailer, bytes(len(trailer))) and not any(tail[len(trailer):])


def test_a_call_that_raises_once_its_batch_is_laid_out_leaves_its_result_empty(nic):
    # It would otherwise show a batch laid out but never filled: statuses of the last batch,
    # lengths of whatever the buffers held. Refused before that, the result stays as it was.
    out_h, in_h = sa_pair(nic, replay_window=0)
    sent = list(nic.encap([inner_udp(b"A" * 100)] * 2, out_h))
    res, eres = nic.decap(sent), nic.encap([inner_udp()], out_h)
    with pytest.raises(natt.OffloadError, match="handle"):
        nic.encap([inner_udp()] * 5, in_h, out=eres)              # an inbound SA: refused first
    assert len(eres) == 1 and nic.decap(list(eres)).counts() == {Status.OK: 1}
    nic.close()
    for r, call in ((res, lambda: nic.decap(sent * 3, out=res)),
                    (eres, lambda: nic.encap([inner_udp()] * 4, out_h, out=eres))):
        before = (r.status.tolist(), list(r))
        with pytest.raises(natt.OffloadError, match="closed"):
            call()
        empty = len(r) == 0 and r.status.size == r.lengths.size == r.offsets.size == r.data.size == 0
        assert empty or (r.status.tolist(), list(r)) == before


def test_a_released_memoryview_is_named():
    m = memoryview(b"packet")
    m.release()
    with pytest.raises(ValueError, match=r"^packets\[1\]: cannot be read \(a released memoryview\?\)$"):
        PacketBatch.from_packets([b"ok", m])
    with pytest.raises(ValueError, match=r"^data: cannot be read \(a released memoryview\?\)$"):
        PacketBatch(m, _arr(0), _arr(1))


def test_a_strided_memoryview_as_data_is_named():
    # np.frombuffer raises BufferError for it, which named no field.
    with pytest.raises(ValueError, match=r"^data: must be C-contiguous \(pass bytes\(data\)\)$"):
        PacketBatch(memoryview(b"abcdef")[::2], _arr(0), _arr(1))


def test_out_holding_the_input_is_refused(nic):
    # res.batch() views res's own buffers: laying res out again for it would overwrite the
    # packets before the kernel reads them, so the call names ``out`` instead.
    out_h, in_h = sa_pair(nic, replay_window=0)
    enc = nic.encap([inner_udp(b"a"), inner_udp(b"b")], out_h)
    res = nic.decap(list(enc))
    assert res.counts() == {Status.OK: 2}
    for call in (lambda: nic.decap(res.batch(), out=res),
                 lambda: nic.encap(enc.batch(), out_h, out=enc)):
        with pytest.raises(ValueError, match="^out: "):
            call()
    # Both results are untouched and still usable; a different result is fine.
    assert res.counts() == {Status.OK: 2} and enc.counts() == {Status.OK: 2}
    again = nic.decap(enc.batch(), out=res)
    assert again.counts() == {Status.OK: 2} and list(again) == [inner_udp(b"a"), inner_udp(b"b")]



def test_out_overlapping_the_input_through_a_view_is_refused(nic):
    # A batch built on a view into res's buffer (here 4 octets in, through a memoryview, so it
    # has another base object) overlaps res as much as res.batch() does: the kernels would copy
    # between overlapping ranges (ASan: memcpy-param-overlap). Both backends refuse it alike.
    out_h, in_h = sa_pair(nic, replay_window=0)
    enc = nic.encap([inner_udp(b"a"), inner_udp(b"b")], out_h)
    res = nic.decap([b"\0" * 4] + list(enc))           # not ESP: passed through, so res holds them
    assert res.status.tolist()[1:] == [Status.OK, Status.OK]
    res2 = nic.decap([b"\0" * 4] + list(enc))
    res2.data[4:] = res.data[4:]
    for base, shift in ((memoryview(res2.data)[4:], 4), (memoryview(res2.data), 0)):
        view = PacketBatch(np.frombuffer(base, np.uint8), res2.offsets[1:] - shift, res2.lengths[1:].copy())
        before = res2.data.copy()
        with pytest.raises(ValueError, match="^out: .*a view into them"):
            nic.decap(view, out=res2)
        assert np.array_equal(res2.data, before)
    # A copy is fine, and gives what a fresh result gives.
    assert list(nic.decap(PacketBatch.from_packets(list(enc)), out=res2)) == list(nic.decap(list(enc)))


@pytest.mark.parametrize("rebind,message", [
    (lambda b: setattr(b, "lengths", np.full(5, 30, np.int64)), r"^batch\.lengths: has 5 elements, the batch has 3"),
    (lambda b: setattr(b, "lengths", np.full(2, 30, np.int64)), r"^batch\.lengths: has 2 elements, the batch has 3"),
    (lambda b: setattr(b, "data", b.data.astype(np.float64)), r"^batch\.data: wrong dtype float64"),
    (lambda b: setattr(b, "data", np.zeros((3, 30), np.uint8)), r"^batch\.data: must be one-dimensional"),
    (lambda b: setattr(b, "offsets", b.offsets.astype(">i8")), r"^batch\.offsets: wrong dtype >i8"),
    (lambda b: setattr(b, "lengths", [30, 30, 30]), r"^batch\.lengths: expected a numpy array, got list"),
    (lambda b: setattr(b, "offsets", _misaligned(b.offsets)), r"^batch\.offsets: not aligned to its dtype"),
    (lambda b: setattr(b, "lengths", _misaligned(b.lengths)), r"^batch\.lengths: not aligned to its dtype"),
])
@pytest.mark.parametrize("call", ["decap", "encap"])
def test_batch_arrays_rebound_after_validation_are_refused_alike(nic, rebind, message, call):
    # PacketBatch checks its arrays when made; rebinding one afterwards skips that. Both
    # backends check again, with the same message, before sizing anything by them (the
    # reference once sized its result by lengths and looped over offsets: garbage statuses).
    out_h, _ = sa_pair(nic)
    batch = PacketBatch.from_packets([inner_udp(b"x")] * 3)
    rebind(batch)
    with pytest.raises(ValueError, match=message):
        nic.decap(batch) if call == "decap" else nic.encap(batch, out_h)


@pytest.mark.parametrize("slot_extra", [0, 128])
def test_compiled_slot_layout_equals_numpy_layout(slot_extra):
    """natt._fastpath.layout_slots and the numpy layout it stands in for (installs without the
    extension) agree: same offsets and total for lengths rewritten out of range after validation
    (clamped to the buffer), for the empty batch, and both refuse a result's own buffers."""
    from natt._fastpath import layout_slots
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 37):
        batch = PacketBatch(np.zeros(500, np.uint8), np.arange(n, dtype=np.int64), np.ones(n, np.int64))
        batch.lengths[:] = rng.integers(-10, 700, n)       # rewritten after validation
        got = []
        for layout in (layout_slots, _batch._layout_slots_numpy):
            offsets = np.full(n + 3, -1, np.int64)
            total = layout(batch.offsets, batch.lengths, batch.data, np.zeros(0, np.uint8), offsets,
                           np.zeros(0, np.int64), slot_extra)
            got.append((total, offsets.tolist()))
        assert got[0] == got[1]
        sizes = np.clip(batch.lengths, 0, 500) + slot_extra
        assert got[0][0] == int(sizes.sum()) and got[0][1][:n] == [0, *np.cumsum(sizes)[:-1].tolist()][:n]
    res = natt.DecapResult()
    res._prepare(PacketBatch.from_packets([b"abc", b"de"]), 0)
    res.lengths[:] = [3, 2]                                  # as a decap would have left them
    for layout in (layout_slots, _batch._layout_slots_numpy):
        with pytest.raises(ValueError, match="^out: "):
            mine = res.batch()
            layout(mine.offsets, mine.lengths, mine.data, res._data, res._offsets, res._lengths, 0)
    # The same checks of rebound arrays, in the same words.
    bad = [PacketBatch.from_packets([b"abc", b"de"]) for _ in range(4)]
    bad[0].lengths = np.ones(3, np.int64)
    bad[1].data = np.zeros(5, np.int16)
    bad[2].offsets = np.zeros((2, 1), np.int64)
    bad[3].data = np.frombuffer(memoryview(res._data)[1:], np.uint8)
    for b in bad:
        messages = []
        for layout in (layout_slots, _batch._layout_slots_numpy):
            with pytest.raises(ValueError) as e:
                layout(b.offsets, b.lengths, b.data, res._data, res._offsets, res._lengths, 0)
            messages.append(str(e.value))
        assert messages[0] == messages[1]


def test_slot_layout_refuses_what_it_cannot_write_or_sum():
    # layout_slots writes the offsets through int64_t *: a read-only array was written anyway
    # (one on a read-only mmap killed the process); a negative slot_extra made negative slots.
    from natt._fastpath import layout_slots
    batch = PacketBatch.from_packets([b"abc", b"de"])
    ro = np.full(2, -1, np.int64)
    ro.flags.writeable = False
    for layout in (layout_slots, _batch._layout_slots_numpy):
        with pytest.raises(ValueError, match="^offsets: must be a writable"):
            layout(batch.offsets, batch.lengths, batch.data, np.zeros(0, np.uint8), ro, np.zeros(0, I64), 0)
        assert ro.tolist() == [-1, -1]
        for extra in (-1, 2**31, 2**63 - 1):
            with pytest.raises(ValueError, match="^slot_extra: "):
                layout(batch.offsets, batch.lengths, batch.data, np.zeros(0, np.uint8), np.zeros(2, I64),
                       np.zeros(0, I64), extra)


def test_slot_layout_refuses_a_total_past_int64(tmp_path):
    # Overlapping segments: 2**20 + 1 slots, each of a whole 8 TiB buffer (a sparse file), add
    # up to more than 2**63 octets. The sum wrapped to a negative (or a small) total before.
    from natt._fastpath import layout_slots
    size = 1 << 43
    path = tmp_path / "sparse"
    try:
        with open(path, "wb") as f:
            f.truncate(size)
        data = np.memmap(path, np.uint8, "r", shape=(size,))
    except (OSError, ValueError, OverflowError) as e:
        pytest.skip(f"no 8 TiB sparse file here: {e}")
    n = (1 << 20) + 1
    offsets, lengths = np.zeros(n, I64), np.full(n, size, I64)
    for layout in (layout_slots, _batch._layout_slots_numpy):
        with pytest.raises(ValueError, match=r"^batch: its output slots add up to 2\*\*63"):
            layout(offsets, lengths, data, np.zeros(0, np.uint8), np.zeros(n, I64), np.zeros(0, I64), 0)
    del data


def test_counts_and_indexing(nic):
    out_h, in_h = sa_pair(nic)
    enc = nic.encap([inner_udp(b"x"), inner_udp(b"y")], out_h)
    # RFC 3948 §2.3 NAT keepalive: IPv4/UDP to port 4500 carrying the single octet 0xFF.
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 29, 0, 0, 64, 17, 0, 0xC0000201, 0xCB007105)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    keepalive = ip + struct.pack("!HHHH", 4500, 4500, 9, 0) + b"\xff"
    packets = [enc[0], b"\x60" + bytes(39), keepalive, enc[0], enc[1], b"junk"]
    res = nic.decap(packets)
    assert res.counts() == {Status.OK: 2, Status.NOT_ESP: 2, Status.KEEPALIVE: 1, Status.REPLAY: 1}
    assert all(isinstance(k, Status) for k in res.counts())
    assert sum(res.counts().values()) == len(res) == 6
    # A status no packet ended with is left out, yet reads as 0; what is no status stays a KeyError.
    counts = res.counts()
    assert Status.AUTH_FAILED not in counts and counts[Status.AUTH_FAILED] == 0 and counts[np.int64(Status.AUTH_FAILED)] == 0
    assert counts[Status.REPLAY] == counts[int(Status.REPLAY)] == 1 and repr(counts).startswith("{<Status.")
    for key in ("OK", 99, -1, None, float(Status.AUTH_FAILED)):
        with pytest.raises(KeyError):
            counts[key]
    assert counts.get(Status.AUTH_FAILED) is None and len(counts) == 4
    assert res[0] == inner_udp(b"x") and res[4] == inner_udp(b"y")
    assert res[-1] == b"junk" and res[1] == packets[1] and res[2] == keepalive
    assert res[3] == enc[0]                              # REPLAY: input unchanged
    assert list(res) == [res[i] for i in range(6)]
    assert res.sa.tolist() == [in_h, 0, 0, in_h, in_h, 0]
    with pytest.raises(IndexError, match=r"^packet index 6 out of range for 6 packets$"):
        res[6]
    # The output batch is a valid PacketBatch over the result's buffer.
    ob = res.batch()
    assert list(ob) == list(res)
    assert "OK=2" in repr(res) and "REPLAY=1" in repr(res)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 70), st.integers(-2, 70), st.integers(-1, 20)), max_size=12),
       st.integers(0, 64), st.integers(0, 64))
def test_compiled_segment_copy_equals_python_copy(segments, out_size, src_size):
    """natt._fastpath.gather and the Python copy it stands in for (what PcapWriter assembles
    records with, and natt.dask packs lane packets with) copy the same octets, and refuse the
    same out-of-bounds segment before copying anything."""
    src = np.frombuffer(bytes(range(src_size)), dtype=np.uint8)
    out_off, src_off, length = (np.array(c, np.int64) for c in zip(*segments)) if segments else \
        (np.zeros(0, np.int64),) * 3
    results = []
    for copy in (_batch.copy_segments, _batch._copy_segments_py):
        out = np.full(out_size, 0xEE, np.uint8)
        try:
            copy(out, out_off, src, src_off, length)
            results.append(("ok", out.tobytes()))
        except ValueError as e:
            results.append(("error", str(e), out.tobytes()))
    assert _batch.copy_segments is not _batch._copy_segments_py
    assert results[0] == results[1]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_segment_copy_refuses_misaligned_index_arrays_alike(which):
    # The compiled copy reads them through int64_t *, at whatever address a typed memoryview
    # takes (UBSan: "load of misaligned address"); both copies refuse them, as PacketBatch does.
    arrays = [np.zeros(2, np.int64), np.zeros(2, np.int64), np.ones(2, np.int64)]
    arrays[which] = _misaligned(arrays[which])
    assert not arrays[which].flags.aligned
    src = np.arange(8, dtype=np.uint8)
    for copy in (_batch.copy_segments, _batch._copy_segments_py):
        out = np.full(4, 0xEE, np.uint8)
        with pytest.raises(ValueError, match="^gather: out_off, src_off and length must be aligned"):
            copy(out, arrays[0], src, arrays[1], arrays[2])
        assert out.tolist() == [0xEE] * 4


@pytest.mark.parametrize("o,s,ln", [(0, 3, 10), (3, 0, 10), (5, 5, 4), (0, 10, 10)])
def test_compiled_segment_copy_of_overlapping_ranges_equals_python_copy(o, s, ln):
    results = []
    for copy in (_batch.copy_segments, _batch._copy_segments_py):
        buf = np.arange(20, dtype=np.uint8)
        copy(buf, _arr(o), buf, _arr(s), _arr(ln))
        results.append(buf.tobytes())
    assert results[0] == results[1]


_REWRITTEN_WHILE_COPYING = """
import sys, threading
import numpy as np
from natt._fastpath import gather

n = 4_000_000
src, out = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
off, length = np.arange(n, dtype=np.int64), np.ones(n, np.int64)
src_off = off.copy()
stop = False

def rewrite():                  # gets the GIL while gather's copy loop runs without it
    while not stop:
        src_off[n // 2:] = 1 << 44
        src_off[n // 2:] = off[n // 2:]

sys.setswitchinterval(1e-6)
threading.Thread(target=rewrite, daemon=True).start()
for _ in range(60):
    try:
        gather(out, off, src, src_off, length)
    except ValueError as e:
        assert "is out of bounds" in str(e) or "was rewritten out of bounds while the copy ran" in str(e), e
stop = True
print("done")
"""


def test_segments_rewritten_while_the_compiled_copy_runs_are_never_copied_unchecked(tmp_path):
    # gather checked every segment with the GIL held, then read the arrays again for the copy:
    # a thread rewriting them in between made it copy from an unchecked offset (SIGSEGV).
    done = subprocess.run([sys.executable, "-c", _REWRITTEN_WHILE_COPYING], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "done\n", (done.returncode, done.stderr[-2000:])


def test_batches_and_results_index_and_slice_like_lists():
    packets = [b"ab", b"cde", b"", b"f"]
    batch = PacketBatch.from_packets(packets)
    assert [batch[i] for i in range(-4, 4)] == packets + packets
    assert batch[np.int64(1)] == b"cde"
    for s in (slice(None), slice(1, 3), slice(None, None, -1), slice(3, 0, -2), slice(9, 12)):
        assert batch[s] == packets[s], s
    # One index past the end is named as an index array's is, not as numpy's "axis 0".
    for i in (4, -5, np.int64(4)):
        with pytest.raises(IndexError, match=rf"^packet index {int(i)} out of range for 4 packets$"):
            batch[i]
    with pytest.raises(TypeError, match="packet index: an integer, a slice, indices or a boolean mask, got str"):
        batch["0"]
    res = natt.Offload(backend="reference").decap(batch)      # not ESP: each packet comes back as it was
    assert res[1:] == packets[1:] and res[-1] == b"f"
    # Indices and masks, numpy's way: a list of packets.
    assert batch[[3, 0, -3]] == [b"f", b"ab", b"cde"] and batch[np.array([1, 1])] == [b"cde", b"cde"]
    assert batch[np.array([True, False, False, True])] == [b"ab", b"f"] == batch[[True, False, False, True]]
    assert batch[[]] == [] and batch[np.array(2)] == b""
    assert res[res.lengths > 1] == [b"ab", b"cde"]
    with pytest.raises(IndexError, match=r"^packet index 4 out of range for 4 packets$"):
        batch[[0, 4]]
    with pytest.raises(IndexError, match=r"^packet mask: one flag per packet \(4\), got shape \(3,\)$"):
        batch[np.ones(3, bool)]
    with pytest.raises(TypeError, match=r"^packet indices: a 1-D sequence of integers or a boolean mask, got 1-D float64$"):
        batch[[0.0]]


def test_decap_result_mask_picks_the_packets_that_decapped(nic):
    out_h, in_h = sa_pair(nic)
    sealed = nic.encap([inner_udp(b"one"), inner_udp(b"two")], out_h)
    res = nic.decap([sealed[0], b"not a packet", sealed[1]])
    assert res[res.status == Status.OK] == [inner_udp(b"one"), inner_udp(b"two")]


def test_one_packet_where_packets_belong_is_refused_not_split_into_octets(nic):
    # Iterated, a bytes object or a 1-D numpy array (a result's data, say) gives one-octet packets.
    one = np.frombuffer(inner_udp(), np.uint8)
    for packets in (inner_udp(), bytearray(inner_udp()), memoryview(inner_udp()), one, nic.decap([b"x"]).data):
        with pytest.raises(ValueError, match=r"^packets: expected a PacketBatch or an iterable of packets, got one "):
            nic.decap(packets)
        with pytest.raises(ValueError, match=r"^packets: expected a PacketBatch or an iterable of packets, got one "):
            PacketBatch.from_packets(packets)
    with pytest.raises(ValueError, match=r"got one 1-D numpy array of uint8 \(one packet: pass \[packet\]\)$"):
        nic.encap(one, sa_pair(nic)[0])
    with pytest.raises(TypeError, match=r"^packets\[1\]: a numpy uint8 scalar is not a packet$"):
        PacketBatch.from_packets([one, one[0]])
    assert len(nic.decap(np.stack([one, one]))) == 2                 # rows of a 2-D array are packets


def test_help_on_a_result_says_what_each_field_and_status_means():
    """A REPL user reads ``help(res)``: the public result classes inherit their fields from
    BatchResult, so the fields' own docs are all that help() shows of them."""
    import inspect
    import pydoc
    for cls in (natt.DecapResult, natt.EncapResult):
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        for field in ("status", "sa", "seq", "next_header", "data", "offsets", "lengths"):
            doc = inspect.getdoc(getattr(cls, field))
            assert doc and doc.startswith("numpy ") and doc in text.replace("\n |      ", " "), (cls, field)
        assert "Status.OK" in (cls.__doc__ or "") and "unchanged" in (cls.__doc__ or "")
    doc = Status.__doc__ or ""
    for s in Status:
        assert f"``{s.name}`` ({s.value}): " in doc, s
