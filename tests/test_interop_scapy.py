"""Interoperability with scapy's IPsec implementation (scapy.layers.ipsec.SecurityAssociation).

scapy is an independent ESP implementation: packets it seals with ``nat_t_header=UDP(4500, 4500)``
must decap in natt (status OK, the inner packet back), and packets natt encaps must decrypt in
scapy — for every transform the two have in common, tunnel and transport mode, with and without
ESN, on both backends.

Conventions that differ between the two (each is handled below):

* Keys. natt takes one ``key`` = encryption key ‖ salt (AEAD) ‖ integrity key. scapy takes
  ``crypt_key`` and ``auth_key`` apart, and for AES-GCM, AES-GMAC and ChaCha20-Poly1305 it splits
  the 4-octet salt off the *end* of ``crypt_key`` (``SecurityAssociation.__init__``), which is
  exactly RFC 4106 §8.1's KEYMAT layout and natt's: so ``crypt_key = key[:enc+salt]``.
* ESN. scapy does not infer the high half of the sequence number: the SA is given ``esn_en=True``
  and the high 32 bits (``esn=``) explicitly, for sealing and for opening alike.
* AES-GCM ICV length. scapy's AES-GCM goes through ``cryptography``'s AESGCM AEAD API, which always
  writes and expects a 16-octet tag (its ``crypt_icv_size`` only changes where scapy slices), so
  scapy cannot produce or read the 8- and 12-octet ICVs of ``aes*gcm8``/``aes*gcm12``; those suites
  are interop-tested against the test-vector files and the differential test instead.
* UDP checksum. scapy writes 0 (RFC 3948 §2.1 SHOULD); a NAT or a stack may fill it in, and natt
  must then ignore it (semantics §1.4): one test recomputes it before decap.
* Framing. scapy knows only RFC 3948 framing; the legacy non-IKE marker (UdpEncapType.IKE) is
  added/removed by hand in one test per direction.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw, raw

import natt
from natt import Status, traffic
from natt._suites import SUITES, Cipher, Mac, Suite

SPI = 0x0BADCAFE
PEER, LOCAL = "198.51.100.2", "203.0.113.5"

_SCAPY_CRYPT = {Cipher.AES_CBC: "AES-CBC", Cipher.TRIPLE_DES_CBC: "3DES", Cipher.NULL: "NULL",
                Cipher.AES_GCM: "AES-GCM", Cipher.AES_GMAC: "AES-NULL-GMAC",
                Cipher.CHACHA20_POLY1305: "CHACHA20-POLY1305"}
_SCAPY_AUTH = {Mac.NONE: None, Mac.HMAC_MD5_96: "HMAC-MD5-96", Mac.HMAC_SHA1_96: "HMAC-SHA1-96",
               Mac.HMAC_SHA256_128: "SHA2-256-128", Mac.HMAC_SHA384_192: "SHA2-384-192",
               Mac.HMAC_SHA512_256: "SHA2-512-256"}

# Every natt suite scapy can speak (see the module docstring for the GCM-8/12 exception).
SCAPY_SUITES = sorted(n for n, s in SUITES.items() if not (s.cipher is Cipher.AES_GCM and s.icv_len != 16))

# (replay position, ESN): the first packet's 64-bit sequence number is ``start``.
STARTS = {
    "seq1": (1, False),
    "seq-high": (0xFFFFFF00, False),
    "esn": ((3 << 32) | 7, True),
    "esn-hi0": (0xFFFFFFF0, True),
}


def _key(s: Suite) -> bytes:
    return bytes((7 * i + 3) & 0xFF for i in range(s.key_len))


def scapy_sa(s: Suite, key: bytes, *, tunnel: bool, start: int, esn: bool,
             tunnel_src: str = PEER, tunnel_dst: str = LOCAL) -> SecurityAssociation:
    """scapy's view of the SA natt has with ``key``: first packet numbered ``start``."""
    enc_len = s.enc_key_len + s.salt_len
    return SecurityAssociation(
        ESP, spi=SPI, seq_num=start & 0xFFFFFFFF,
        crypt_algo=_SCAPY_CRYPT[s.cipher], crypt_key=key[:enc_len] if enc_len else None,
        auth_algo=_SCAPY_AUTH[s.mac], auth_key=key[enc_len:] or None,
        tunnel_header=IP(src=tunnel_src, dst=tunnel_dst) if tunnel else None,
        nat_t_header=UDP(sport=4500, dport=4500), esn_en=esn, esn=start >> 32)


def inner_packets(tunnel: bool) -> list:
    """Inner datagrams built by scapy: ping, DNS-ish UDP, a near-MTU TCP segment, options, IPv6."""
    pkts = [
        IP(src="10.1.0.2", dst="10.2.0.7", id=0x1234, ttl=61) / ICMP(id=3, seq=1) / Raw(bytes(range(56))),
        IP(src="10.1.0.2", dst="10.2.0.7", tos=0xB8, flags="DF") / UDP(sport=5060, dport=5060) / Raw(b"v" * 200),
        IP(src="10.1.0.2", dst="10.2.0.7") / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=77)
        / Raw(bytes(i & 0xFF for i in range(1380))),
        IP(src="10.1.0.2", dst="10.2.0.7") / UDP(sport=53, dport=53),
        IP(src="10.1.0.2", dst="10.2.0.7", options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(),
                                                    IPOption_EOL()]) / ICMP() / Raw(b"opt"),
    ]
    if tunnel:
        pkts += [IPv6(src="2001:db8::1", dst="2001:db8:1::2", tc=0x28) / ICMPv6EchoRequest(data=b"z" * 40),
                 IPv6(src="2001:db8::1", dst="2001:db8:1::2") / UDP(sport=1, dport=2) / Raw(b"w" * 333)]
    return [IP(raw(p)) if p.version == 4 else IPv6(raw(p)) for p in pkts]  # freeze computed fields


def install_in(nic: natt.Offload, s: Suite, key: bytes, *, tunnel: bool, start: int, esn: bool,
               encap: natt.UdpEncapType = natt.UdpEncapType.OTHER, port: int = 4500) -> int:
    return nic.add_sa(SPI, key, s.name, "in", mode="tunnel" if tunnel else "transport",
                      src=PEER if tunnel else None, dst=LOCAL if tunnel else None, encap=encap, port=port,
                      replay_window=64, esn=esn, replay_seq=start - 1)


def install_out(nic: natt.Offload, s: Suite, key: bytes, *, tunnel: bool, start: int, esn: bool,
                encap: natt.UdpEncapType = natt.UdpEncapType.OTHER, port: int = 4500) -> int:
    return nic.add_sa(SPI, key, s.name, "out", mode="tunnel" if tunnel else "transport",
                      src=PEER if tunnel else None, dst=LOCAL if tunnel else None, encap=encap,
                      sport=port, dport=port, esn=esn, replay_oseq=start - 1)


@pytest.mark.parametrize("start", list(STARTS), ids=list(STARTS))
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("suite", SCAPY_SUITES)
def test_scapy_encrypts_natt_decaps(nic, suite, mode, start):
    s, tunnel = SUITES[suite], mode == "tunnel"
    first, esn = STARTS[start]
    key = _key(s)
    h = install_in(nic, s, key, tunnel=tunnel, start=first, esn=esn)
    sa = scapy_sa(s, key, tunnel=tunnel, start=first, esn=esn)
    inner = inner_packets(tunnel)
    wire = [raw(sa.encrypt(p)) for p in inner]
    # scapy's packets really are RFC 3948 ESP-in-UDP: UDP to 4500 carrying our SPI.
    for w in wire:
        ihl = (w[0] & 15) * 4
        assert w[9] == 17 and struct.unpack_from("!H", w, ihl + 2)[0] == 4500
        assert struct.unpack_from("!I", w, ihl + 8)[0] == SPI
    res = nic.decap(wire)
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert res.sa.tolist() == [h] * len(inner)
    assert res.seq.tolist() == [first + i for i in range(len(inner))]
    for i, p in enumerate(inner):
        # Tunnel: the inner datagram exactly. Transport: scapy's outer header is the inner one with
        # protocol 17; natt restores protocol, length and checksum, so the original comes back.
        assert res[i] == raw(p), f"packet {i}: {p.summary()}"
        assert res.next_header[i] == ((4 if p.version == 4 else 41) if tunnel else p.proto)


@pytest.mark.parametrize("start", list(STARTS), ids=list(STARTS))
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("suite", SCAPY_SUITES)
def test_natt_encaps_scapy_decrypts(nic, suite, mode, start):
    s, tunnel = SUITES[suite], mode == "tunnel"
    first, esn = STARTS[start]
    key = _key(s)
    h = install_out(nic, s, key, tunnel=tunnel, start=first, esn=esn)
    inner = inner_packets(tunnel)
    out = nic.encap([raw(p) for p in inner], h)
    assert out.status.tolist() == [Status.OK] * len(inner)
    assert out.seq.tolist() == [first + i for i in range(len(inner))]
    sa = scapy_sa(s, key, tunnel=tunnel, start=first, esn=esn)
    for i, p in enumerate(inner):
        pkt = IP(out[i])
        # The outer header's checksum and length as scapy computes them (RFC 791): natt sums the
        # header from its field values rather than reading the written header back.
        rebuilt = pkt.copy()
        del rebuilt.chksum, rebuilt.len
        assert IP(raw(rebuilt)).chksum == pkt.chksum and pkt.len == len(out[i])
        assert pkt.haslayer(UDP) and pkt[UDP].sport == pkt[UDP].dport == 4500
        assert pkt[UDP].chksum == 0          # RFC 3948 §2.1
        assert pkt[ESP].spi == SPI and pkt[ESP].seq == (first + i) & 0xFFFFFFFF
        if tunnel:
            assert (pkt.src, pkt.dst) == (PEER, LOCAL)
        # verify=True: scapy checks the HMAC ICV itself; AEAD tags are checked by decryption.
        clear = sa.decrypt(pkt, verify=True)
        assert raw(clear) == raw(p), f"packet {i}: {p.summary()}"


@pytest.mark.parametrize("df_bit", ["copy", "set", "clear"])
@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256"])
def test_outer_df_bit_as_scapy_reads_it(nic, suite, df_bit):
    """RFC 4301 §8.1, per SA: scapy reads the outer flags natt wrote (DF only: set, clear, or the
    inner IPv4 packet's; clear for IPv6), the header checksum over them, and decrypts the inner
    packet unchanged."""
    s = SUITES[suite]
    key = _key(s)
    h = nic.add_sa(SPI, key, s.name, "out", src=PEER, dst=LOCAL, df_bit=df_bit)
    inner = inner_packets(True)
    out = nic.encap([raw(p) for p in inner], h)
    assert out.status.tolist() == [Status.OK] * len(inner)
    sa = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    for i, p in enumerate(inner):
        pkt = IP(out[i])
        inner_df = p.version == 4 and "DF" in p.flags
        want_df = {"copy": inner_df, "set": True, "clear": False}[df_bit]
        assert pkt.flags == ("DF" if want_df else 0) and pkt.frag == 0, f"packet {i}: {p.summary()}"
        rebuilt = pkt.copy()
        del rebuilt.chksum
        assert IP(raw(rebuilt)).chksum == pkt.chksum
        assert raw(sa.decrypt(pkt, verify=True)) == raw(p)
    # Both kinds of inner packet were there to copy from.
    assert {p.version == 4 and "DF" in p.flags for p in inner} == {True, False}


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256", "chacha20poly1305", "3des-sha1"])
def test_nonzero_udp_checksum_accepted(nic, suite):
    """A NAT may fill in the UDP checksum scapy leaves at 0; natt does not verify it (semantics §1.4)."""
    s = SUITES[suite]
    key = _key(s)
    install_in(nic, s, key, tunnel=True, start=1, esn=False)
    sa = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    inner = inner_packets(True)
    wire = []
    for p in inner:
        pkt = IP(raw(sa.encrypt(p)))
        del pkt[UDP].chksum                  # let scapy compute the real one
        w = raw(pkt)
        assert struct.unpack_from("!H", w, 26)[0] != 0   # 20-octet outer header: checksum at 26
        wire.append(w)
    res = nic.decap(wire)
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert [res[i] for i in range(len(inner))] == [raw(p) for p in inner]


def _add_marker(w: bytes) -> bytes:
    """Turn RFC 3948 ESP-in-UDP into the legacy framing: 8 zero octets before ESP, port 500."""
    ihl = (w[0] & 15) * 4
    esp = w[ihl + 8:]
    # Built by hand: scapy would dissect port 500 as ISAKMP and might rebuild it differently.
    hdr = IP(w[:ihl])
    hdr.len = ihl + 16 + len(esp)
    del hdr.chksum
    return raw(hdr)[:ihl] + struct.pack("!HHHH", 500, 500, 16 + len(esp), 0) + bytes(8) + esp


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes192-sha1", "aes256gmac"])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_legacy_framing_both_ways(nic, suite, mode):
    s, tunnel = SUITES[suite], mode == "tunnel"
    key = _key(s)
    ike = natt.UdpEncapType.IKE
    install_in(nic, s, key, tunnel=tunnel, start=1, esn=False, encap=ike, port=500)
    h_out = install_out(nic, s, key, tunnel=tunnel, start=1, esn=False, encap=ike, port=500)
    inner = inner_packets(tunnel)
    # scapy -> natt
    sa = scapy_sa(s, key, tunnel=tunnel, start=1, esn=False)
    res = nic.decap([_add_marker(raw(sa.encrypt(p))) for p in inner])
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert [res[i] for i in range(len(inner))] == [raw(p) for p in inner]
    # natt -> scapy: strip the marker, hand scapy the RFC 3948 form.
    out = nic.encap([raw(p) for p in inner], h_out)
    assert out.status.tolist() == [Status.OK] * len(inner)
    rx = scapy_sa(s, key, tunnel=tunnel, start=1, esn=False)
    for i, p in enumerate(inner):
        w = out[i]
        ihl = (w[0] & 15) * 4
        assert struct.unpack_from("!HH", w, ihl) == (500, 500) and w[ihl + 8: ihl + 16] == bytes(8)
        pkt = IP(w[:ihl]) / UDP(sport=4500, dport=4500) / ESP(w[ihl + 16:])
        pkt = IP(raw(pkt))
        assert raw(rx.decrypt(pkt)) == raw(p)


@pytest.mark.parametrize("suite", ["aes128-sha256", "aes256gcm16"])
def test_scapy_replay_and_tamper_rejected(nic, suite):
    """The statuses a scapy peer provokes: a resent packet is REPLAY, a tampered one AUTH_FAILED."""
    s = SUITES[suite]
    key = _key(s)
    install_in(nic, s, key, tunnel=True, start=1, esn=False)
    sa = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    p = inner_packets(True)[0]
    w1, w2 = raw(sa.encrypt(p)), raw(sa.encrypt(p))
    tampered = bytearray(sa.encrypt(p).__bytes__())
    tampered[-1] ^= 0x01                     # last ICV octet
    res = nic.decap([w1, w2, w1, bytes(tampered)])
    assert res.status.tolist() == [Status.OK, Status.OK, Status.REPLAY, Status.AUTH_FAILED]
    assert res.seq.tolist() == [1, 2, 1, 3]


# --------------------------------------------------------------------------------------------------
# natt.traffic (the generator the differential test and the benchmarks rely on) against scapy
# --------------------------------------------------------------------------------------------------

def test_traffic_builders_match_scapy():
    """natt.traffic's inner-packet builders produce what scapy builds for the same fields."""
    data = bytes(range(99))
    ip = dict(tos=0x10, ip_id=0x4321, ttl=33)
    sc = dict(src="10.1.0.2", dst="10.2.0.7", tos=0x10, id=0x4321, ttl=33, flags="DF")
    assert traffic.icmp_echo("10.1.0.2", "10.2.0.7", ident=9, seq=4, payload=data, **ip) == \
        raw(IP(**sc) / ICMP(id=9, seq=4) / Raw(data))
    assert traffic.udp_datagram("10.1.0.2", "10.2.0.7", 1234, 53, data, **ip) == \
        raw(IP(**sc) / UDP(sport=1234, dport=53) / Raw(data))
    assert traffic.tcp_segment("10.1.0.2", "10.2.0.7", 1234, 80, data, seq=5, ack=6, window=1000, **ip) == \
        raw(IP(**sc) / TCP(sport=1234, dport=80, seq=5, ack=6, flags="PA", window=1000) / Raw(data))
    assert traffic.icmp6_echo("2001:db8::1", "2001:db8::2", ident=9, seq=4, payload=data) == \
        raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=9, seq=4, data=data))
    assert traffic.udp6_datagram("2001:db8::1", "2001:db8::2", 7, 53, data) == \
        raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=7, dport=53) / Raw(data))


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("esn", [False, True], ids=["noesn", "esn"])
@pytest.mark.parametrize("suite", SCAPY_SUITES)
def test_traffic_sealer_matches_scapy(suite, mode, esn):
    """natt.traffic.EspSealer/esp_in_udp, given scapy's IV, build the same octets as scapy."""
    s, tunnel = SUITES[suite], mode == "tunnel"
    key = _key(s)
    start = (5 << 32) | 0xFFFFFFF0 if esn else 77   # scapy cannot carry into the high half itself
    sa = scapy_sa(s, key, tunnel=tunnel, start=start, esn=esn)
    sealer = traffic.EspSealer(s, key, SPI, esn=esn)
    for i, p in enumerate(inner_packets(tunnel)):
        iv = bytes((i + j * 13) & 0xFF for j in range(s.iv_len))
        ours = traffic.esp_in_udp(sealer, start + i, raw(p), tunnel=tunnel, src=PEER if tunnel else None,
                                  dst=LOCAL if tunnel else None, iv=iv)
        theirs = sa.encrypt(p, iv=iv)
        if tunnel:
            # Only the outer header differs: scapy's has id=1 and TTL 64, natt's ID = seq (semantics §2.7).
            ours, theirs_b = ours[20:], raw(theirs)[20:]
        else:
            theirs_b = raw(theirs)
        assert ours == theirs_b, f"packet {i}: {p.summary()}"
