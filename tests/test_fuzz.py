"""Structure-aware fuzzing of decap/encap with hypothesis, on both backends.

Valid packets of every suite, both modes and both framings (with and without
ESN) come from ``Offload.encap`` (fuzz/mutate.py ``build_corpus``); the
mutations of fuzz/mutate.py aim at every length field and decision point of
docs/semantics.md §1. Three kinds of assertion:

* outcomes that are certain for a given mutation (a fragment is FRAGMENT, a
  flipped ICV is AUTH_FAILED, link padding and IP options change nothing, ...);
* invariants that hold for any input (no exception, a valid status, the
  output-length rules of semantics §1 "Outputs", sa/seq/next_header only where
  the decision reached them);
* agreement of the two backends on every fuzzed batch (status, output, seq,
  next header, SA).

The default run is bounded (NATT_FUZZ_EXAMPLES, default 40 examples per test);
fuzz/run_fuzz.py is the long-running fuzzer.
"""

from __future__ import annotations

import functools
import os
import random
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import natt
from natt import Status, UdpEncapType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import mutate  # noqa: E402  (fuzz/mutate.py: shared with the standalone fuzzer)

EXAMPLES = int(os.environ.get("NATT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@functools.cache
def corpus() -> tuple[mutate.Case, ...]:
    return tuple(mutate.build_corpus(seed=1))


N_CASES = len(corpus())
U32 = st.integers(0, 2**32 - 1)
STEP = st.tuples(st.sampled_from(mutate.MUTATION_NAMES), U32, U32)


def _nic(backend: str, cases) -> tuple[natt.Offload, dict[int, int]]:
    """A fresh Offload with the inbound SAs of ``cases`` (indices into the corpus) installed."""
    nic = natt.Offload(backend=backend)
    return nic, {i: mutate.install(nic, corpus()[i]) for i in sorted(set(cases))}


def _decap_one(backend: str, case_idx: int, packet: bytes):
    nic, handles = _nic(backend, [case_idx])
    with nic:
        res = nic.decap([packet])
        problems = mutate.check_result(natt.PacketBatch.from_packets([packet]), res, set(handles.values()))
        assert problems == [], problems
        return Status(res.status[0]), res[0], handles[case_idx], res


# --------------------------------------------------------------------------- valid packets

def test_every_case_decaps_ok_then_replays(backend):
    cases = corpus()
    assert {c.suite for c in cases} == set(natt.suite_names())
    nic, handles = _nic(backend, range(N_CASES))
    with nic:
        packets = [p for c in cases for p in c.packets]
        res = nic.decap(packets)
        assert res.counts() == {Status.OK: len(packets)}
        k = 0
        for i, c in enumerate(cases):
            for j, (p, inner) in enumerate(zip(c.packets, c.inners)):
                assert res[k] == mutate.expected_output(c, p, inner), c.name
                assert res.sa[k] == handles[i]
                assert res.seq[k] == (mutate.ESN_START + 1 + j if c.esn else 1 + j)
                if c.tunnel:
                    assert res.next_header[k] == (41 if inner[0] >> 4 == 6 else 4)
                else:
                    assert res.next_header[k] == inner[9]
                k += 1
        assert nic.decap(packets).counts() == {Status.REPLAY: len(packets)}


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), pad=U32, pad_octet=U32, opts=U32, opt_kind=U32,
       toggle=U32)
def test_link_padding_options_and_df_change_nothing(backend, case, j, pad, pad_octet, opts, opt_kind, toggle):
    c = corpus()[case]
    p = c.packets[j]
    q = mutate.mutate(c, p, [("ip_options", opts, opt_kind), ("df_reserved", toggle, 0),
                             ("link_padding", pad, pad_octet)])
    status, out, h, res = _decap_one(backend, case, q)
    assert status is Status.OK
    assert out == mutate.expected_output(c, q, c.inners[j])
    assert res.sa[0] == h


# --------------------------------------------------------------------------- certain outcomes

@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), a=U32, b=U32)
def test_fragments_are_not_processed(backend, case, j, a, b):
    c = corpus()[case]
    status, out, _, res = _decap_one(backend, case, mutate.m_fragment(c, c.packets[j], a, b))
    assert status is Status.FRAGMENT and res.sa[0] == 0 and res.seq[0] == 0


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), cut=U32)
def test_truncated_buffer_is_not_esp_or_malformed(backend, case, j, cut):
    c = corpus()[case]
    p = c.packets[j]
    q = p[: cut % len(p)]
    status, out, _, _ = _decap_one(backend, case, q)
    # The IP total length still claims the whole packet: semantics §1 steps 1-2.
    assert status is (Status.NOT_ESP if len(q) < 20 else Status.MALFORMED)
    assert out == q


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), pos=U32, bit=st.integers(0, 7))
def test_any_bit_flip_after_the_esp_header_fails_authentication(backend, case, j, pos, bit):
    c = corpus()[case]
    p = c.packets[j]
    off = c.esp_offset(p) + 8
    i = off + pos % (len(p) - off)
    q = p[:i] + bytes([p[i] ^ (1 << bit)]) + p[i + 1:]
    status, out, h, res = _decap_one(backend, case, q)
    assert status is Status.AUTH_FAILED and out == q and res.sa[0] == h


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), pos=st.integers(0, 31), seq_field=st.booleans())
def test_flipped_spi_or_sequence_number(backend, case, j, pos, seq_field):
    c = corpus()[case]
    p = c.packets[j]
    i = c.esp_offset(p) + (4 if seq_field else 0) + pos // 8
    q = p[:i] + bytes([p[i] ^ (1 << (pos % 8))]) + p[i + 1:]
    status, _, _, _ = _decap_one(backend, case, q)
    if seq_field:
        # A new number authenticates nothing; 0, or (ESN) one inferred below the window, is a replay.
        assert status in (Status.AUTH_FAILED, Status.REPLAY)
    else:
        assert status is Status.NO_SA


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), which=st.integers(0, len(mutate._PAYLOADS) - 1),
       b=U32)
def test_keepalive_ike_and_marker_confusion(backend, case, j, which, b):
    c = corpus()[case]
    p = c.packets[j]
    q = mutate.m_udp_payload(c, p, which, b)
    ihl = (q[0] & 15) * 4
    u = q[ihl + 8:]
    status, out, _, res = _decap_one(backend, case, q)
    # Semantics §1.5, written out for the payloads the mutation builds.
    if len(u) == 1 and u[0] == 0xFF:
        assert status is Status.KEEPALIVE
    elif c.framing is UdpEncapType.OTHER:
        if len(u) == 0:
            assert status is Status.MALFORMED
        elif len(u) >= 4 and u[:4] == bytes(4):
            assert status is Status.IKE
        elif len(u) < 8:
            assert status is Status.MALFORMED
        else:
            assert status is not Status.IKE
    else:
        if len(u) > 16 and u[:8] == bytes(8):
            assert status is not Status.IKE
        else:
            assert status is Status.IKE
    if status in (Status.KEEPALIVE, Status.IKE):
        assert out == q and res.sa[0] == 0 and res.seq[0] == 0


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), version=st.integers(0, 15),
       protocol=st.integers(0, 255), port=st.integers(0, 65535))
def test_not_esp(backend, case, j, version, protocol, port):
    c = corpus()[case]
    p = c.packets[j]
    for q in (mutate.m_version(c, p, version, 0) if version != 4 else None,
              mutate.m_protocol(c, p, protocol, 0) if protocol != 17 else None,
              mutate.m_udp_port(c, p, port, 0) if port not in (mutate.PORT_OTHER, mutate.PORT_IKE) else None):
        if q is not None:
            status, out, _, _ = _decap_one(backend, case, q)
            assert status is Status.NOT_ESP and out == q


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), a=U32, b=U32)
def test_length_field_edits(backend, case, j, a, b):
    c = corpus()[case]
    p = c.packets[j]
    ihl = (p[0] & 15) * 4
    q = mutate.m_ip_total_length(c, p, a, b)
    tl = struct.unpack("!H", q[2:4])[0]
    status, _, _, _ = _decap_one(backend, case, q)
    if tl < ihl or tl > len(q):
        assert status is Status.MALFORMED
    elif tl < len(p):
        # Shorter than the packet: the UDP length no longer matches (or the UDP header is cut).
        assert status is Status.MALFORMED
    else:
        assert status is Status.OK
    q = mutate.m_udp_length(c, p, a, b)
    status, _, _, _ = _decap_one(backend, case, q)
    ulen = struct.unpack("!H", q[ihl + 4: ihl + 6])[0]
    assert status is (Status.OK if ulen == len(p) - ihl else Status.MALFORMED)
    q = mutate.m_ihl(c, p, a, b)
    status, _, _, _ = _decap_one(backend, case, q)
    if q[0] & 15 < 5:
        assert status is Status.MALFORMED
    elif q[0] & 15 != 5:
        # The UDP header is now read from the wrong place: anything but OK.
        assert status is not Status.OK


@FUZZ
@given(case=st.integers(0, N_CASES - 1), j=st.integers(0, 3), a=U32, b=U32)
def test_trailer_edits(backend, case, j, a, b):
    """pad_len / padding / next-header edits; for NULL suites the ICV is recomputed so the
    trailer checks (semantics §1.10-11) decide, otherwise authentication fails first."""
    c = corpus()[case]
    p = c.packets[j]
    q = mutate.m_resign_trailer(c, p, a, b)
    status, out, _, res = _decap_one(backend, case, q)
    if q == p:
        assert status is Status.OK
    elif not c.suite.startswith("null-"):
        assert status is Status.AUTH_FAILED
    else:
        assert status in (Status.OK, Status.MALFORMED, Status.DUMMY, Status.PROTOCOL)
        nh = res.next_header[0]
        assert nh == q[len(q) - natt.parse_suite(c.suite)[0].icv_len - 1]
        if nh == 59 and status is not Status.MALFORMED:
            assert status is Status.DUMMY and out == b""
        if status is Status.PROTOCOL:
            assert c.tunnel and nh not in (4, 41)


# --------------------------------------------------------------------------- invariants on any batch

PACKET = st.one_of(
    st.tuples(st.integers(0, N_CASES - 1), st.integers(0, 3), st.lists(STEP, max_size=3)),
    st.just(b""),
    st.binary(max_size=80),
)


def _build(items) -> tuple[list[bytes], list[int]]:
    packets, cases = [], []
    for item in items:
        if isinstance(item, bytes):
            packets.append(item)
        else:
            i, j, steps = item
            cases.append(i)
            packets.append(mutate.mutate(corpus()[i], corpus()[i].packets[j], steps))
    return packets, cases


@FUZZ
@given(items=st.lists(PACKET, min_size=1, max_size=10), gaps=st.lists(st.integers(0, 7), max_size=4),
       threads=st.sampled_from([None, 1, 2, 3]))
def test_fuzzed_batches_hold_the_output_invariants(backend, items, gaps, threads):
    packets, cases = _build(items)
    batch = mutate.layout_batch(packets, gaps)
    nic, handles = _nic(backend, cases)
    with nic:
        res = nic.decap(batch, threads=threads)
        problems = mutate.check_result(batch, res, set(handles.values()))
        assert problems == [], problems
        # The input batch is never written to.
        assert [batch[i] for i in range(len(batch))] == packets


@FUZZ
@given(items=st.lists(PACKET, min_size=1, max_size=10), gaps=st.lists(st.integers(0, 7), max_size=4),
       split=st.integers(1, 10), threads=st.sampled_from([None, 2]))
def test_backends_agree_on_fuzzed_batches(items, gaps, split, threads):
    if "fast" not in natt.backends():
        pytest.fail(f"backend 'fast' is not available: {natt.backends()}")
    packets, cases = _build(items)
    batch = mutate.layout_batch(packets, gaps)
    results = {}
    for name in ("reference", "fast"):
        nic, _ = _nic(name, cases)
        with nic:
            results[name] = nic.decap(batch, threads=threads if name == "fast" else None)
    assert mutate.compare_results(results["reference"], results["fast"]) == []
    # A packet's result never depends on how the input was split into batches (semantics §3).
    nic, _ = _nic("fast", cases)
    with nic:
        pieces = [packets[k: k + split] for k in range(0, len(packets), split)]
        split_results = [nic.decap(piece) for piece in pieces]
    ref = results["reference"]
    k = 0
    for r in split_results:
        for i in range(len(r)):
            assert (int(r.status[i]), int(r.sa[i]), int(r.seq[i]), int(r.next_header[i]), r[i]) == \
                (int(ref.status[k]), int(ref.sa[k]), int(ref.seq[k]), int(ref.next_header[k]), ref[k])
            k += 1


# --------------------------------------------------------------------------- encap

@FUZZ
@given(case=st.integers(0, N_CASES - 1), inners=st.lists(
    st.one_of(st.binary(max_size=64),
              st.tuples(st.integers(0, 3), st.lists(STEP, max_size=2))), min_size=1, max_size=8),
       df_bit=st.sampled_from(["copy", "set", "clear"]))
# Found by CI's random run: a transport SA's inner packet with protocol 59 comes back DUMMY.
@example(case=1, inners=[(0, [("protocol", 59, 0)])], df_bit="copy")
def test_fuzzed_inner_packets_through_encap(backend, case, inners, df_bit):
    """Encap of arbitrary inner packets: OK or MALFORMED (input unchanged); what is OK decaps back.
    A tunnel SA's outer DF is as its df_bit says (RFC 4301 §8.1), whatever the inner packet holds."""
    c = corpus()[case]
    if not c.tunnel:
        df_bit = "copy"             # the only one a transport SA takes (docs/semantics.md §2 step 7)
    packets = []
    for item in inners:
        if isinstance(item, bytes):
            packets.append(item)
        else:
            j, steps = item
            packets.append(mutate.mutate(c, c.inners[j], steps))
    with natt.Offload(backend=backend) as nic:
        out = nic.add_sa(c.spi, c.key, c.suite, "out", mode="tunnel" if c.tunnel else "transport",
                         src=mutate.TUNNEL_SRC, dst=mutate.TUNNEL_DST, encap=c.framing,
                         dport=c.port, esn=c.esn, df_bit=df_bit)
        inb = mutate.install(nic, c, any_dst=True)   # inner mutations may change the address
        res = nic.encap(packets, out)
        assert set(res.counts()) <= {Status.OK, Status.MALFORMED}
        ok = [i for i in range(len(res)) if res.status[i] == Status.OK]
        for i in range(len(res)):
            if res.status[i] == Status.MALFORMED:
                assert res[i] == packets[i] and res.sa[i] == 0
            else:
                assert res.sa[i] == out
                p, w = packets[i], res[i]
                if c.tunnel:        # DF alone: never MF, an offset or the reserved bit
                    inner_df = p[6] & 0x40 if p[0] >> 4 == 4 else 0
                    assert w[6:8] == bytes(({"copy": inner_df, "set": 0x40, "clear": 0}[df_bit], 0))
                else:               # the datagram's own header
                    assert w[6:8] == p[6:8]
        assert res.seq[ok].tolist() == list(range(1, len(ok) + 1))
        if not c.esn:      # ESN cases expect the sequence numbers of the corpus (2**32 - 2, ...)
            back = nic.decap([res[i] for i in ok])
            for k, i in enumerate(ok):
                # Transport mode keeps the inner header's flags (semantics §2.7): an inner
                # fragment becomes an outer fragment, which decap does not process.
                frag = not c.tunnel and struct.unpack("!H", packets[i][6:8])[0] & 0x3FFF
                # Transport mode carries the inner protocol as the next header: 59 makes a dummy
                # packet, which decap verifies and drops (RFC 4303 §2.6).
                dummy = not c.tunnel and packets[i][9] == 59
                assert back.status[k] == (Status.FRAGMENT if frag else Status.DUMMY if dummy else Status.OK)
                assert back.sa[k] == (0 if frag else inb)


@pytest.mark.parametrize("name", mutate.MUTATION_NAMES)
def test_every_mutation_accepts_any_prefix(name):
    """The mutators themselves must not fail on short or already-mangled packets."""
    for c in corpus()[:4] + corpus()[-4:]:
        p = c.packets[0]
        for n in list(range(0, 64)) + [len(p) - 1, len(p)]:
            for a, b in ((0, 0), (1, 1), (255, 7), (2**32 - 1, 2**31), (65536, 3)):
                assert isinstance(mutate.MUTATIONS[name](c, p[:n], a, b), bytes)


def test_corpus_is_deterministic():
    """A finding must be rebuildable from its seed alone (CBC IVs aside, the keys and inners are)."""
    a = mutate.build_corpus(seed=7, packets_per_case=1, suites=["aes128gcm16", "null-sha1"])
    b = mutate.build_corpus(seed=7, packets_per_case=1, suites=["aes128gcm16", "null-sha1"])
    assert [(x.name, x.spi, x.key, x.packets) for x in a] == [(x.name, x.spi, x.key, x.packets) for x in b]
    rng = random.Random(3)
    steps = mutate.random_mutations(rng, 5)
    assert steps == mutate.random_mutations(random.Random(3), 5)
    assert all(name in mutate.MUTATIONS for name, _, _ in steps)
