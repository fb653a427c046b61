"""Property-based round trips: encap on an outbound SA, decap on its inbound twin.

Random inner datagrams (ICMP, UDP, TCP over IPv4 with random header fields and options; IPv6 in
tunnel mode; optional link padding) × every suite × both modes × both framings × ESN × the
starting sequence number (including right below 2**32 and right below the end of the sequence
space) must come back unchanged: the inner datagram exactly in tunnel mode, the original datagram
in transport mode (docs/semantics.md §1 "Outputs": the outer header with protocol, total length
and checksum restored — which, for a packet natt itself encapsulated, is the original header).

Beyond the round trip, encap's output is checked against the rules it must follow (semantics §2)
and, for the suites whose IV is the sequence number, octet for octet against
``natt.traffic.EspSealer`` — an ESP implementation written separately from both data paths.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natt
from natt import Status, UdpEncapType
from natt import traffic
from natt._suites import SUITES, Cipher

SPI = 0x2A2A0001
PEER, LOCAL = "198.51.100.20", "203.0.113.40"
MAX32, MAX64 = (1 << 32) - 1, (1 << 64) - 1

# Hypothesis explores on the data; the backend fixture only names the path (no state to leak).
ROUNDTRIP_SETTINGS = settings(max_examples=150, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow])


@st.composite
def ipv4_inner(draw) -> bytes:
    src = draw(st.integers(1, MAX32))
    dst = draw(st.integers(1, MAX32))
    ip = dict(tos=draw(st.integers(0, 255)), ip_id=draw(st.integers(0, 0xFFFF)), ttl=draw(st.integers(1, 255)),
              ip_flags=draw(st.sampled_from([0, traffic.IP_FLAG_DF])),
              options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", b"\x01" * 39 + b"\x00"])))
    payload = draw(st.one_of(st.binary(max_size=64), st.binary(min_size=500, max_size=1500)))
    kind = draw(st.sampled_from(["icmp", "udp", "tcp", "udp0"]))
    sport, dport = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    if kind == "icmp":
        return traffic.icmp_echo(src, dst, ident=sport, seq=dport, payload=payload, **ip)
    if kind == "tcp":
        return traffic.tcp_segment(src, dst, sport, dport, payload, seq=draw(st.integers(0, MAX32)), **ip)
    return traffic.udp_datagram(src, dst, sport, dport, payload, checksum=kind == "udp", **ip)


@st.composite
def ipv6_inner(draw) -> bytes:
    src = draw(st.integers(1, (1 << 128) - 1))
    dst = draw(st.integers(1, (1 << 128) - 1))
    payload = draw(st.binary(max_size=1400))
    tc = draw(st.integers(0, 255))
    if draw(st.booleans()):
        return traffic.icmp6_echo(src, dst, ident=draw(st.integers(0, 0xFFFF)), payload=payload, traffic_class=tc)
    return traffic.udp6_datagram(src, dst, draw(st.integers(0, 0xFFFF)), 53, payload, traffic_class=tc)


def _start(esn: bool) -> st.SearchStrategy[int]:
    """``replay_oseq``: fresh SAs, arbitrary positions, the 2**32 edge, and the end of the space."""
    top = MAX64 if esn else MAX32
    return st.one_of(st.just(0), st.integers(0, top), st.integers(MAX32 - 8, MAX32 + 8).filter(lambda x: x <= top),
                     st.integers(top - 8, top))


@st.composite
def scenario(draw):
    suite = draw(st.sampled_from(sorted(SUITES)))
    tunnel = draw(st.booleans())
    framing = draw(st.sampled_from(list(UdpEncapType)))
    esn = draw(st.booleans())
    oseq = draw(_start(esn))
    window = draw(st.sampled_from([32, 64, 1024] if esn else [0, 32, 64, 1024]))
    inner = st.one_of(ipv4_inner(), ipv6_inner()) if tunnel else ipv4_inner()
    packets = draw(st.lists(inner, min_size=1, max_size=6))
    padding = draw(st.lists(st.integers(0, 20), min_size=len(packets), max_size=len(packets)))
    return suite, tunnel, framing, esn, oseq, window, packets, padding


def _expected_output(p: bytes, tunnel: bool) -> bytes:
    """What decap must return for inner ``p`` (link padding after the datagram dropped)."""
    if p[0] >> 4 == 6:
        return p[:40 + struct.unpack_from("!H", p, 4)[0]]
    return p[:struct.unpack_from("!H", p, 2)[0]]


def _check_encap_format(w: bytes, p: bytes, seq: int, tunnel: bool, framing: UdpEncapType, port: int) -> None:
    """Semantics §2.6-2.7 on one encapsulated packet."""
    ihl = (w[0] & 15) * 4
    assert w[0] >> 4 == 4 and w[9] == 17 and struct.unpack_from("!H", w, 2)[0] == len(w)
    assert traffic.internet_checksum(w[:ihl]) == 0
    sport, dport, ulen, csum = struct.unpack_from("!HHHH", w, ihl)
    assert (sport, dport, ulen, csum) == (port, port, len(w) - ihl, 0)
    esp = w[ihl + 8:]
    if framing == UdpEncapType.IKE:
        assert esp[:8] == bytes(8)
        esp = esp[8:]
    assert struct.unpack_from("!II", esp) == (SPI, seq & MAX32)
    if tunnel:
        tos = p[1] if p[0] >> 4 == 4 else ((p[0] & 15) << 4 | p[1] >> 4)
        assert ihl == 20
        assert w[1] == tos and struct.unpack_from("!H", w, 4)[0] == seq & 0xFFFF
        df = struct.unpack_from("!H", p, 6)[0] & 0x4000 if p[0] >> 4 == 4 else 0    # copied (RFC 4301 §8.1)
        assert struct.unpack_from("!H", w, 6)[0] == df and w[8] == 64
        assert w[12:20] == traffic.ipv4(PEER, LOCAL, 17, b"")[12:20]
    else:
        # The inner header, options kept, with protocol 17 and new length/checksum.
        assert w[:ihl][:2] == p[:2] and w[4:9] == p[4:9] and w[12:ihl] == p[12:ihl]


@ROUNDTRIP_SETTINGS
@given(scenario())
def test_roundtrip(backend, case):
    suite, tunnel, framing, esn, oseq, window, packets, padding = case
    s = SUITES[suite]
    port = traffic.DEFAULT_PORT[framing]
    key = bytes((i * 29 + len(suite)) & 0xFF for i in range(s.key_len))
    mode = "tunnel" if tunnel else "transport"
    inputs = [p + bytes(n) for p, n in zip(packets, padding)]
    top = MAX64 if esn else MAX32
    n_ok = min(len(inputs), top - oseq)      # RFC 4303 §3.3.3: the counter never cycles
    with natt.Offload(backend=backend) as nic:
        h_out = nic.add_sa(SPI, key, suite, "out", mode=mode, src=PEER, dst=LOCAL if tunnel else None,
                           encap=framing, sport=port, dport=port, esn=esn, replay_oseq=oseq)
        h_in = nic.add_sa(SPI, key, suite, "in", mode=mode, src=PEER if tunnel else None,
                          dst=LOCAL if tunnel else None, encap=framing, port=port, esn=esn,
                          replay_window=window, replay_seq=oseq)
        enc = nic.encap(inputs, h_out)
        assert enc.status.tolist() == [Status.OK] * n_ok + [Status.SEQ_OVERFLOW] * (len(inputs) - n_ok)
        assert enc.seq.tolist()[:n_ok] == [oseq + 1 + i for i in range(n_ok)]
        assert enc.sa.tolist()[:n_ok] == [h_out] * n_ok
        # SEQ_OVERFLOW: empty output, and seq/sa/next_header 0 (semantics §2 "Encap results").
        assert all(enc[i] == b"" for i in range(n_ok, len(inputs)))
        assert enc.seq.tolist()[n_ok:] == enc.sa.tolist()[n_ok:] == enc.next_header.tolist()[n_ok:] == \
            [0] * (len(inputs) - n_ok)
        out_stats = nic.sa_stats(h_out)
        assert out_stats["replay_oseq"] == oseq + n_ok
        assert out_stats["seq_overflows"] == len(inputs) - n_ok
        # Encap counts input segments, link padding included.
        assert (out_stats["packets"], out_stats["bytes"]) == (n_ok, sum(map(len, inputs[:n_ok])))
        wire = [enc[i] for i in range(n_ok)]
        for i, (w, p) in enumerate(zip(wire, packets)):
            nh = (4 if p[0] >> 4 == 4 else 41) if tunnel else p[9]
            assert enc.next_header[i] == nh
            _check_encap_format(w, p, oseq + 1 + i, tunnel, framing, port)
            if s.cipher not in (Cipher.AES_CBC, Cipher.TRIPLE_DES_CBC):
                # Deterministic IV (the sequence number): an independent sealer must agree exactly.
                sealer = traffic.EspSealer(s, key, SPI, esn=esn)
                ref = traffic.esp_in_udp(sealer, oseq + 1 + i, _expected_output(p, tunnel), tunnel=tunnel,
                                         src=PEER if tunnel else None, dst=LOCAL if tunnel else None,
                                         sport=port, dport=port, framing=framing)
                assert w == ref
        dec = nic.decap(wire)
        assert dec.status.tolist() == [Status.OK] * n_ok
        assert dec.sa.tolist() == [h_in] * n_ok
        assert dec.seq.tolist() == [oseq + 1 + i if esn else (oseq + 1 + i) & MAX32 for i in range(n_ok)]
        assert dec.next_header.tolist() == enc.next_header.tolist()[:n_ok]
        for i, p in enumerate(packets[:n_ok]):
            assert dec[i] == _expected_output(p, tunnel)
        in_stats = nic.sa_stats(h_in)
        assert (in_stats["packets"], in_stats["bytes"]) == (n_ok, sum(len(dec[i]) for i in range(n_ok)))
        if n_ok:
            assert in_stats["replay_seq"] == oseq + n_ok
        # Sending the same packets again: anti-replay refuses every one (unless it is off).
        again = nic.decap(wire)
        assert again.status.tolist() == [Status.REPLAY if window else Status.OK] * n_ok


@ROUNDTRIP_SETTINGS
@given(suite=st.sampled_from(sorted(SUITES)), seed=st.integers(0, 2**32), n=st.integers(1, 5),
       mode=st.sampled_from(["tunnel", "transport"]), framing=st.sampled_from(list(UdpEncapType)),
       cross=st.booleans(), df_bit=st.sampled_from(["copy", "set", "clear"]))
def test_make_sa_pair_across_instances(backend, suite, seed, n, mode, framing, cross, df_bit):
    """traffic.make_sa_pair with the two ends on separate Offloads (optionally different backends);
    in tunnel mode the outbound SA's df_bit (RFC 4301 §8.1) gives the outer DF esp_in_udp gives."""
    if mode == "transport":
        df_bit = "copy"             # the only one a transport SA takes
    s = SUITES[suite]
    key = bytes(range(s.key_len))
    other = ("fast" if backend == "reference" else "reference") if cross else backend
    # Transport: the inbound SA is keyed on the destination host, which is the inner header's.
    packets = traffic.inner_traffic(seed, n, src=PEER, dst=LOCAL, ipv6=mode == "tunnel")
    with natt.Offload(backend=backend) as a, natt.Offload(backend=other) as b:
        pair = traffic.make_sa_pair(a, b, suite=suite, mode=mode, framing=framing, key=key, spi=SPI,
                                    src=PEER, dst=LOCAL, df_bit=df_bit)
        assert key.hex() not in repr(pair) and repr(key) not in repr(pair)
        assert a.sa_stats(pair.out_handle)["df_bit"] == df_bit
        enc = pair.encap(packets)
        assert enc.status.tolist() == [Status.OK] * len(packets)
        if mode == "tunnel" and s.cipher not in (Cipher.AES_CBC, Cipher.TRIPLE_DES_CBC):
            sealer = pair.sealer()
            assert list(enc) == [traffic.esp_in_udp(sealer, 1 + i, p, tunnel=True, src=PEER, dst=LOCAL,
                                                    sport=pair.port, dport=pair.port, framing=framing,
                                                    df_bit=df_bit) for i, p in enumerate(packets)]
        # A NAT between the peers rewrites nothing the transport SA depends on (dst is the key).
        dec = b.decap([enc[i] for i in range(len(enc))])
        assert dec.status.tolist() == [Status.OK] * len(packets)
        assert dec.sa.tolist() == [pair.in_handle] * len(packets)
        assert [dec[i] for i in range(len(dec))] == [_expected_output(p, mode == "tunnel") for p in packets]


def _l4_ok(ip: bytes) -> bool:
    """Does the TCP/UDP checksum of IPv4 datagram ``ip`` verify against its own header's addresses?"""
    ihl = (ip[0] & 15) * 4
    seg = ip[ihl:]
    if ip[9] == 17 and seg[6:8] == b"\0\0":
        return True
    pseudo = ip[12:20] + bytes((0, ip[9])) + struct.pack("!H", len(seg))
    return traffic.internet_checksum(pseudo + seg) == 0


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("rewrite", ["src", "dst", "both"])
def test_nat_oa_roundtrip_through_a_nat(backend, proto, rewrite):
    """RFC 3948 §3.1.2: a NAT rewrites the outer addresses of a transport-mode packet; the inner
    checksum the sender computed over its real addresses (learned by IKE as NAT-OA) no longer
    matches; decap with nat_oa_src/nat_oa_dst must hand up a segment whose checksum verifies
    against the addresses in the IPv4 header it hands up."""
    real_src, real_dst = "10.0.0.2", "192.168.1.9"       # what each host sees itself as
    pub_src = "198.51.100.77" if rewrite in ("src", "both") else real_src
    pub_dst = "203.0.113.8" if rewrite in ("dst", "both") else real_dst
    build = traffic.tcp_segment if proto == "tcp" else traffic.udp_datagram
    inner = [build(real_src, real_dst, 40000 + i, 443, bytes(range(i * 37 % 200))) for i in range(4)]
    assert all(_l4_ok(p) for p in inner)
    s = SUITES["aes128gcm16"]
    key = bytes(range(s.key_len))
    with natt.Offload(backend=backend) as nic:
        h_out = nic.add_sa(SPI, key, s.name, "out", mode="transport")
        nic.add_sa(SPI, key, s.name, "in", mode="transport", nat_oa_src=real_src,
                   nat_oa_dst=real_dst if rewrite != "src" else None)
        enc = nic.encap(inner, h_out)
        nat = []
        for i in range(len(enc)):
            w = bytearray(enc[i])
            w[12:16] = traffic.ipv4(pub_src, pub_dst, 0, b"")[12:16]
            w[16:20] = traffic.ipv4(pub_src, pub_dst, 0, b"")[16:20]
            w[10:12] = b"\0\0"
            w[10:12] = struct.pack("!H", traffic.internet_checksum(bytes(w[:20])))
            nat.append(bytes(w))
        dec = nic.decap(nat)
        assert dec.status.tolist() == [Status.OK] * len(inner)
        for i in range(len(dec)):
            out = dec[i]
            assert out[12:20] == nat[i][12:20]           # received addresses kept (semantics §4)
            assert _l4_ok(out), f"packet {i}: inner checksum not repaired for {rewrite} rewrite"


@pytest.mark.parametrize("suite", ["aes256gcm16-esn", "aes128-sha1", "chacha20poly1305"])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("framing", list(UdpEncapType))
def test_encapsulated_traffic_helper(backend, suite, mode, framing):
    """traffic.encapsulated_traffic: the helper the CLI demo and benchmarks use, end to end."""
    with natt.Offload(backend=backend) as a, natt.Offload(backend=backend) as b:
        pair, wire = traffic.encapsulated_traffic(a, b, 40, seed=5, suite=suite, mode=mode, framing=framing)
        assert pair.esn == suite.endswith("-esn") and len(wire) == 40
        port = traffic.DEFAULT_PORT[framing]
        assert all(struct.unpack_from("!H", w, (w[0] & 15) * 4 + 2)[0] == port for w in wire)
        dec = b.decap(wire)
        assert dec.status.tolist() == [Status.OK] * 40
        inner = traffic.inner_traffic(5, 40, src=pair.src, dst=pair.dst, ipv6=mode == "tunnel")
        assert list(dec) == [_expected_output(p, mode == "tunnel") for p in inner]
        # A datagram encap must refuse is reported, not silently dropped.
        with pytest.raises(ValueError, match="MALFORMED=1"):
            traffic.encapsulated_traffic(a, b, inner=[inner[0], b"\x45junk"], suite=suite, mode=mode,
                                         framing=framing, spi=0x77)
        assert a.sa_handles() == [pair.out_handle] and b.sa_handles() == [pair.in_handle]


def test_encapsulated_traffic_deletes_its_pair_whatever_fails(backend):
    with natt.Offload(backend=backend) as nic:
        for bad in (dict(max_payload=70_000), dict(inner=[12345])):
            with pytest.raises((ValueError, TypeError)):
                traffic.encapsulated_traffic(nic, n=5, spi=0x91, **bad)
            assert nic.sa_handles() == []


def test_a_failed_pair_keeps_the_parser_entry_it_found(backend):
    # UDP 4500's entry, left without SAs by an OID delete with entry handle 0, must survive a pair
    # helper that fails after installing its inbound SA on it (a failed outbound add, a failed encap).
    with natt.Offload(backend=backend) as nic:
        h = nic.add_sa(0x90, bytes(20), "aes128gcm16", mode="transport")
        entry = nic.sa_stats(h)["entry_handle"]
        assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA, natt.DeleteUdpEspSa(h, 0)) == 0
        keepalive = traffic.udp_encapsulate(b"\xff", "198.51.100.2", "203.0.113.5")
        with pytest.raises(natt.OffloadError, match="replay_oseq"):
            traffic.make_sa_pair(nic, spi=0x91, replay_oseq=-1)
        with pytest.raises(ValueError, match="encap did not accept"):
            traffic.encapsulated_traffic(nic, inner=[b"\x45junk"], spi=0x92)
        assert nic.sa_handles() == []
        assert nic.decap([keepalive]).status.tolist() == [natt.Status.KEEPALIVE]
        assert nic.sa_stats(nic.add_sa(0x93, bytes(20), "aes128gcm16", mode="transport"))["entry_handle"] == entry


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256gmac", "chacha20poly1305-esn", "null-sha256",
                                   "aes128-sha1", "3des-sha256"])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_encapsulated_traffic_is_as_deterministic_as_documented(backend, suite, mode):
    """natt.traffic's docs: a seed fixes encapsulated_traffic's key and inner datagrams, and its packets
    too unless the suite is CBC, whose IVs natt's encap draws from the system's random generator."""
    runs = []
    for _ in range(2):
        with natt.Offload(backend=backend) as a, natt.Offload(backend=backend) as b:
            pair, wire = traffic.encapsulated_traffic(a, b, 30, seed=7, suite=suite, mode=mode)
            runs.append((pair.key, wire, list(b.decap(wire))))
    (key1, wire1, inner1), (key2, wire2, inner2) = runs
    assert key1 == key2 and inner1 == inner2
    s = SUITES[suite.removesuffix("-esn")]
    if s.cipher not in (Cipher.AES_CBC, Cipher.TRIPLE_DES_CBC):
        assert wire1 == wire2
        return
    for x, y in zip(wire1, wire2, strict=True):
        iv_at = (x[0] & 15) * 4 + 8 + 8          # outer IPv4, UDP, SPI and sequence number
        assert len(x) == len(y) and x[:iv_at] == y[:iv_at]
        assert x[iv_at:iv_at + s.iv_len] != y[iv_at:iv_at + s.iv_len]


@pytest.mark.parametrize("suite", ["aes128-sha1", "3des-md5", "aes256gcm16"])
def test_sealer_ivs_are_reproducible_only_from_a_seeded_rng(suite):
    """EspSealer.seal / esp_in_udp: ``rng=random.Random(seed)`` repeats, no rng draws os.urandom (CBC)."""
    sealer = traffic.EspSealer(suite, bytes(range(SUITES[suite].key_len)), 0x1234)
    inner = traffic.inner_traffic(3, 1)[0]

    def build(**seal):
        return traffic.esp_in_udp(sealer, 9, inner, tunnel=True, src=PEER, dst=LOCAL, **seal)

    assert build(rng=random.Random(4)) == build(rng=random.Random(4))
    assert sealer.seal(9, b"x", 4, rng=random.Random(4)) == sealer.seal(9, b"x", 4, rng=random.Random(4))
    counter_iv = SUITES[suite].cipher is Cipher.AES_GCM        # the IV is the sequence number
    assert (build() == build()) is counter_iv
    assert (sealer.seal(9, b"x", 4) == sealer.seal(9, b"x", 4)) is counter_iv


_UDP = traffic.udp_datagram("10.1.0.1", "10.1.0.2", 1, 2, 8)      # a well-formed inner datagram


@pytest.mark.parametrize("build, field", [
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, bytes(65_516)), "payload"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 300, b""), "protocol"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", ttl=-1), "ttl"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", tos=256), "tos"),
    (lambda: traffic.udp_datagram("10.0.0.1", "10.0.0.2", 70_000, 53), "sport"),
    (lambda: traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 53, -5), "payload"),
    (lambda: traffic.tcp_segment("10.0.0.1", "10.0.0.2", 1, 80, window=1 << 16), "window"),
    (lambda: traffic.ipv6("::1", "::2", 17, bytes(70_000)), "payload"),
    (lambda: traffic.udp6_datagram("::1", "::2", 1, 53, 65_530), "payload"),
    (lambda: traffic.inner_traffic(1, -3), "n"),
    (lambda: traffic.inner_traffic(1, 5, max_payload=100_000), "max_payload"),
    (lambda: traffic.EspSealer("aes128gcm16-esn", bytes(20), 5).seal(2**64, b"x", 4), "seq"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), 5).seal(-1, b"x", 4), "seq"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, b"", tunnel=False), "inner"),
    # Header fields that used to be masked into range (8192 became offset 0, ip_flags=9 set MF and
    # cleared DF, traffic class 256 became 0) or reached struct.error, which names no parameter.
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", frag_offset=8192), "frag_offset"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", frag_offset=-1), "frag_offset"),
    (lambda: traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 2, 8, ip_flags=9), "ip_flags"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", ip_flags=-1), "ip_flags"),
    (lambda: traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", ip_id=1 << 16), "ip_id"),
    (lambda: traffic.ipv6("::1", "::2", 17, b"", traffic_class=256), "traffic_class"),
    (lambda: traffic.icmp6_echo("::1", "::2", flow_label=1 << 20), "flow_label"),
    (lambda: traffic.udp6_datagram("::1", "::2", 1, 53, flow_label=-1), "flow_label"),
    (lambda: traffic.icmp_echo("10.0.0.1", "10.0.0.2", ident=1 << 16), "ident"),
    (lambda: traffic.icmp_echo("10.0.0.1", "10.0.0.2", seq=-1), "seq"),
    (lambda: traffic.icmp6_echo("::1", "::2", seq=1 << 16), "seq"),
    (lambda: traffic.tcp_segment("10.0.0.1", "10.0.0.2", 1, 80, seq=1 << 32), "seq"),
    (lambda: traffic.tcp_segment("10.0.0.1", "10.0.0.2", 1, 80, ack=-1), "ack"),
    (lambda: traffic.udp_encapsulate(b"x", "10.0.0.1", "10.0.0.2", sport=70_000), "sport"),
    (lambda: traffic.udp_encapsulate(b"x", "10.0.0.1", "10.0.0.2", dport=-1), "dport"),
    (lambda: traffic.udp_encapsulate(bytes(65_508), "10.0.0.1", "10.0.0.2"), "esp"),
    (lambda: traffic.udp_encapsulate(bytes(65_500), "10.0.0.1", "10.0.0.2", framing=UdpEncapType.IKE), "esp"),
    (lambda: traffic.udp_encapsulate(b"x", "10.0.0.1", "10.0.0.2", ttl=256), "ttl"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), 1 << 32), "spi"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), -1), "spi"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), 5).seal(1, b"x", 256), "next_header"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), 5).seal(1, b"x", 4, pad_len=256), "pad_len"),
    (lambda: traffic.EspSealer("null-sha1", bytes(20), 5).seal(1, b"x", 4, padding=bytes(256)), "padding"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, bytes(65_480), tunnel=True,
                                src="10.0.0.1", dst="10.0.0.2"), "inner"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("null-sha1", bytes(20), 5), 1,
                                traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 2, 65_480), tunnel=False), "inner"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, traffic.udp_datagram("10.1.0.1", "10.1.0.2", 1, 2),
                                tunnel=True, src="10.0.0.1", dst="10.0.0.2", sport=1 << 16), "sport"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("null-sha1", bytes(20), 5), 1,
                                traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 2), tunnel=False, dport=-5), "dport"),
    (lambda: traffic.esp_in_udp(traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, traffic.udp_datagram("10.1.0.1", "10.1.0.2", 1, 2),
                                tunnel=True, src="10.0.0.1", dst="10.0.0.2", df_bit="sometimes"), "df_bit"),
    # What natt's encap refuses as MALFORMED (docs/semantics.md §2 step 1), named.
    *[(lambda inner=inner, tunnel=tunnel: traffic.esp_in_udp(
        traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, inner, tunnel=tunnel, src="10.0.0.1", dst="10.0.0.2"),
       "inner") for inner, tunnel in [
        (b"", True), (b"\x45", True), (b"\x60" + bytes(38), True),               # empty, short, short IPv6
        (traffic.ipv6("::1", "::2", 17, bytes(16))[:50], True),                     # IPv6 payload length > octets
        (b"\x44" + _UDP[1:], False), (b"\x40" + _UDP[1:], False),                   # IHL 4 and 0
        (_UDP[:2] + b"\x00\x00" + _UDP[4:], False), (_UDP[:2] + b"\x00\x13" + _UDP[4:], True),   # total length < IHL
        (_UDP[:2] + b"\x01\x00" + _UDP[4:], False),                                 # total length > octets
        (traffic.udp_datagram("10.1.0.1", "10.1.0.2", 1, 2, ip_flags=1), False),    # MF: a fragment
        (traffic.udp_datagram("10.1.0.1", "10.1.0.2", 1, 2, frag_offset=3), False)]],
    (lambda: traffic.tcp_segment("10.0.0.1", "10.0.0.2", 1, 80, 65_520), "payload"),
    (lambda: traffic.EspSealer("aes128gcm16", bytes(20), 0), "spi"),
    (lambda: traffic.default_padding(10, 0), "payload_len, block_size"),
    (lambda: traffic.default_padding(-7, 16), "payload_len, block_size"),
    (lambda: traffic.mixed_traffic(1, 10, max_payload=-5), "max_payload"),
    (lambda: traffic.mixed_traffic(1, 10, max_payload=70_000), "max_payload"),
    (lambda: traffic.mixed_traffic(1, 10, kinds={"ok": 1, "ike": -5}), "kinds"),
    # RFC 4301 §8.1 is about the tunnel header; a transport packet keeps the datagram's own.
    (lambda: traffic.esp_in_udp(traffic.EspSealer("null-sha1", bytes(20), 5), 1,
                                traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 2), tunnel=False, df_bit="set"),
     "df_bit"),
])
def test_packet_builders_name_the_field_that_does_not_fit(build, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        build()


def test_a_tunnel_inner_ipv4_packet_is_carried_up_to_its_total_length():
    # As natt's encap does (payload = p[:tl]): octets past the total length are not sealed.
    sealer = traffic.EspSealer("null-sha1", bytes(20), 5)
    sent = traffic.esp_in_udp(sealer, 1, _UDP + b"link padding", tunnel=True, src="10.0.0.1", dst="10.0.0.2")
    assert sent == traffic.esp_in_udp(sealer, 1, _UDP, tunnel=True, src="10.0.0.1", dst="10.0.0.2")
    with natt.Offload(backend="reference") as nic:
        h = nic.add_sa(5, bytes(20), "null-sha1", "out", src="10.0.0.1", dst="10.0.0.2")
        assert nic.encap([_UDP + b"link padding"], h)[0] == sent


def test_internet_checksum_leaves_its_argument_as_it_was():
    odd = bytearray(b"\x01\x02\x03")
    assert traffic.internet_checksum(odd) == traffic.internet_checksum(b"\x01\x02\x03\x00") == 0xFBFD
    assert odd == b"\x01\x02\x03"
    assert traffic.internet_checksum(memoryview(b"\x01\x02\x03")) == 0xFBFD


@pytest.mark.parametrize("build", [
    lambda **kw: traffic.udp_encapsulate(b"esp", "10.0.0.1", "10.0.0.2", **kw),
    lambda **kw: traffic.esp_in_udp(traffic.EspSealer("aes128gcm16", bytes(20), 5), 1, _UDP, tunnel=True,
                                    src="10.0.0.1", dst="10.0.0.2", **kw)])
def test_ports_default_to_the_framings(build):
    # Legacy framing is UDP 500's (make_sa_pair installs its entry there): a packet on 4500 with
    # the 8-octet marker is an IKE message to an RFC 3948 receiver.
    for framing, port in ((UdpEncapType.OTHER, 4500), (UdpEncapType.IKE, 500)):
        p = build(framing=framing)
        assert struct.unpack_from("!HH", p, 20) == (port, port)
        assert struct.unpack_from("!HH", build(framing=framing, sport=1, dport=2), 20) == (1, 2)


def test_packet_builders_take_every_field_at_its_limits():
    """The range checks reject only what does not fit: each field's largest value is written as given."""
    p = traffic.ipv4("10.0.0.1", "10.0.0.2", 17, b"", ip_id=0xFFFF, ip_flags=7, frag_offset=0x1FFF)
    assert p[4:8] == b"\xff\xff\xff\xff"
    q = traffic.icmp6_echo("::1", "::2", traffic_class=255, flow_label=(1 << 20) - 1, ident=0xFFFF, seq=0xFFFF)
    assert q[:4] == b"\x6f\xff\xff\xff" and q[44:48] == b"\xff" * 4
    t = traffic.tcp_segment("10.0.0.1", "10.0.0.2", 1, 80, seq=MAX32, ack=MAX32)
    assert t[24:32] == b"\xff" * 8
    u = traffic.udp_encapsulate(bytes(65_507), "10.0.0.1", "10.0.0.2", sport=0xFFFF, dport=0)
    assert len(u) == 65_535 and u[20:24] == b"\xff\xff\x00\x00"
    esp = traffic.EspSealer("null-sha1", bytes(20), MAX32).seal(1, b"x", 255, padding=bytes(300), pad_len=255)
    assert esp[:4] == b"\xff" * 4
