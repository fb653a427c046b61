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
  and the high 32 bits (``esn=``) explicitly, for sealing and for opening alike. Across a carry
  they are set on the SA per packet, not passed to ``encrypt()``, which drops a 0 (scapy bug, see
  ``_scapy_seal_at``).
* AES-GCM ICV length. scapy's AES-GCM goes through ``cryptography``'s AESGCM AEAD API, which always
  writes and expects a 16-octet tag (its ``crypt_icv_size`` only changes where scapy slices), so
  scapy cannot produce or read the 8- and 12-octet ICVs of ``aes*gcm8``/``aes*gcm12``; those suites
  are interop-tested against the test-vector files and the differential test instead.
* UDP checksum. scapy writes 0 (RFC 3948 §2.1 SHOULD); a NAT or a stack may fill it in, and natt
  must then ignore it (semantics §1.4): one test recomputes it before decap.
* Framing. scapy knows only RFC 3948 framing; the legacy non-IKE marker (UdpEncapType.IKE) is
  added/removed by hand in one test per direction.

Beyond the suite × mode × sequence-number matrix: every padding length (and padding up to 255
octets), ESN carries with reordering, non-4500 ports, TFC padding, dummy packets and
confidentiality-only SAs. natt makes neither TFC padding nor dummy packets, so those are tested
scapy -> natt only.
"""

from __future__ import annotations

import copy
import math
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw, raw

import natt
from natt import Status, traffic
from natt._suites import SUITES, Cipher, Mac, Suite, suite_for_algos

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
             tunnel_src: str = PEER, tunnel_dst: str = LOCAL, sport: int = 4500,
             dport: int = 4500) -> SecurityAssociation:
    """scapy's view of the SA natt has with ``key``: first packet numbered ``start``."""
    enc_len = s.enc_key_len + s.salt_len
    return SecurityAssociation(
        ESP, spi=SPI, seq_num=start & 0xFFFFFFFF,
        crypt_algo=_SCAPY_CRYPT[s.cipher], crypt_key=key[:enc_len] if enc_len else None,
        auth_algo=_SCAPY_AUTH[s.mac], auth_key=key[enc_len:] or None,
        tunnel_header=IP(src=tunnel_src, dst=tunnel_dst) if tunnel else None,
        nat_t_header=UDP(sport=sport, dport=dport), esn_en=esn, esn=start >> 32)


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
                encap: natt.UdpEncapType = natt.UdpEncapType.OTHER, sport: int = 4500, dport: int = 4500) -> int:
    return nic.add_sa(SPI, key, s.name, "out", mode="tunnel" if tunnel else "transport",
                      src=PEER if tunnel else None, dst=LOCAL if tunnel else None, encap=encap,
                      sport=sport, dport=dport, esn=esn, replay_oseq=start - 1)


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
    h_out = install_out(nic, s, key, tunnel=tunnel, start=1, esn=False, encap=ike, sport=500, dport=500)
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
# Padding, ESN carries, ports, TFC padding and dummy packets
# --------------------------------------------------------------------------------------------------

def _esp_of(w: bytes) -> bytes:
    """The ESP packet inside an RFC 3948 ESP-in-UDP datagram."""
    return w[(w[0] & 15) * 4 + 8:]


def _as_scapy_esp(w: bytes) -> IP:
    """natt's datagram dissected with ESP after UDP whatever the ports: scapy binds ESP to 4500 only."""
    ihl = (w[0] & 15) * 4
    pkt = IP(w[:ihl + 8]) / ESP(w[ihl + 8:])      # dissected lengths are kept, so the octets are w's
    assert raw(pkt) == w
    return pkt


def _pad_past_minimum(sa: SecurityAssociation, align: int) -> None:
    """Make ``sa`` pad as much as the Pad Length octet can say (RFC 4303 §2.4: a sender MAY add
    0 to 255 octets of padding, e.g. to hide lengths): scapy's own minimal padding plus whole
    alignment units, with the default contents 1, 2, 3, …; scapy's encryption does the rest."""
    algo = copy.copy(sa.crypt_algo)              # scapy's algorithm objects are shared module globals
    minimal = type(algo).pad

    def pad(esp):
        esp = minimal(algo, esp)
        esp.padlen += (255 - esp.padlen) // align * align
        esp.padding = bytes(range(1, esp.padlen + 1))
        return esp

    algo.pad = pad
    sa.crypt_algo = algo


# One suite per trailer alignment (RFC 4303 §2.4: payload ‖ padding ‖ pad length ‖ next header fills
# whole cipher blocks and ends on a 4-octet boundary): AES-CBC, block 16 (RFC 3602 §2.4), once per
# key size; 3DES, block 8; and the transforms of block size 1, aligned to 4 only: AES-GCM (RFC 4106),
# ChaCha20-Poly1305 (RFC 7634), AES-GMAC (RFC 4543), NULL (RFC 2410 §2).
PAD_SUITES = ["aes128-sha1", "aes192-sha384", "aes256-md5", "3des-sha256", "aes192gcm16", "chacha20poly1305",
              "aes256gmac", "null-sha512"]


@pytest.mark.parametrize("suite", PAD_SUITES)
def test_every_pad_length_both_ways(nic, suite):
    """Inner packets one octet apart, so that the minimal padding takes every value from 0 to
    alignment - 1: scapy -> natt and natt -> scapy (natt pads minimally, semantics §2 step 3); and
    scapy's packets padded to (nearly) 255 octets, which natt must strip as well."""
    s = SUITES[suite]
    key = _key(s)
    align = math.lcm(s.block_size, 4)
    inner = [IP(raw(IP(src="10.1.0.2", dst="10.2.0.7") / ICMP(seq=n) / Raw(bytes(range(n)))))
             for n in range(align)]
    pads = [-(len(p) + 2) % align for p in inner]
    assert sorted(pads) == list(range(align))
    overhead = 8 + s.iv_len + s.icv_len + 2       # ESP header, IV, ICV, pad length and next header
    # scapy -> natt, minimal and maximal padding: 2 * align packets numbered 1, 2, ...
    install_in(nic, s, key, tunnel=True, start=1, esn=False)
    sa = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    wire = [raw(sa.encrypt(p)) for p in inner]
    _pad_past_minimum(sa, align)
    wire += [raw(sa.encrypt(p)) for p in inner]
    sent = [len(_esp_of(w)) - overhead - len(p) for w, p in zip(wire, inner * 2)]
    assert sent == pads + [pad + (255 - pad) // align * align for pad in pads]
    assert max(sent) == 255
    res = nic.decap(wire)
    assert res.status.tolist() == [Status.OK] * len(wire)
    assert res.seq.tolist() == list(range(1, len(wire) + 1))
    assert [res[i] for i in range(len(wire))] == [raw(p) for p in inner * 2]
    # natt -> scapy
    h = install_out(nic, s, key, tunnel=True, start=1, esn=False)
    out = nic.encap([raw(p) for p in inner], h)
    assert out.status.tolist() == [Status.OK] * len(inner)
    assert out.seq.tolist() == list(range(1, len(inner) + 1))
    rx = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    for i, p in enumerate(inner):
        assert len(_esp_of(out[i])) - overhead - len(p) == pads[i], f"packet {i}"
        assert raw(rx.decrypt(IP(out[i]), verify=True)) == raw(p), f"packet {i}"


def _scapy_seal_at(sa: SecurityAssociation, p, seq: int) -> bytes:
    """scapy seals ``p`` as the packet numbered ``seq`` (64 bits).

    Set on the SA, not passed to encrypt(): scapy 2.8 reads ``seq_num or self.seq_num`` and
    ``esn or self.esn``, so a low half of 0 — the very packet after each carry — or a high half of
    0 passed per call is silently replaced by the SA's own (a scapy bug: 0 is a valid value of both,
    RFC 4303 §2.2, §2.2.1)."""
    sa.seq_num, sa.esn = seq & 0xFFFFFFFF, seq >> 32
    return raw(sa.encrypt(p))


# The high halves before a carry: the first, one in the middle, and the last carry into 0xFFFFFFFF
# (2**64 - 1 is the last number an SA may send, RFC 4303 §3.3.3).
@pytest.mark.parametrize("hi", [0, 0x7FFFFFFF, 0xFFFFFFFE], ids=["hi0", "hi-mid", "hi-top"])
@pytest.mark.parametrize("suite", ["aes256-sha512", "aes128gcm16", "aes192gmac", "chacha20poly1305", "3des-md5",
                                   "null-sha1"])
def test_esn_carry_both_ways(nic, suite, hi):
    """ESN across the carry of the low 32 bits into the high half (RFC 4303 §2.2.1): the high half
    is never sent, only fed to the ICV (§3.3.2.1) or the AEAD's AAD (RFC 4106 §5, RFC 7634 §2.1),
    so each side must infer it. scapy -> natt with reordering across the carry: after packets of
    the new high half, late ones of the old half still inside the window keep the old high half
    (Appendix A2.2, case B: Tl < W - 1 and Seql >= Tl - W + 1); natt -> scapy in order."""
    s = SUITES[suite]
    key = _key(s)
    first = (hi << 32) | 0xFFFFFFFA              # six packets before the carry, six after it
    seqs = [first + i for i in range(12)]
    inner = (inner_packets(True) * 2)[:12]
    order = [0, 1, 2, 6, 7, 8, 9, 10, 11, 3, 4, 5]
    install_in(nic, s, key, tunnel=True, start=first, esn=True)
    sa = scapy_sa(s, key, tunnel=True, start=first, esn=True)
    wire = [_scapy_seal_at(sa, p, q) for p, q in zip(inner, seqs)]
    assert [struct.unpack_from("!I", _esp_of(w), 4)[0] for w in wire] == [q & 0xFFFFFFFF for q in seqs]
    res = nic.decap([wire[j] for j in order])
    assert res.status.tolist() == [Status.OK] * len(order)
    assert res.seq.tolist() == [seqs[j] for j in order]
    assert [res[i] for i in range(len(order))] == [raw(inner[j]) for j in order]
    # natt -> scapy
    h = install_out(nic, s, key, tunnel=True, start=first, esn=True)
    out = nic.encap([raw(p) for p in inner], h)
    assert out.status.tolist() == [Status.OK] * len(inner)
    assert out.seq.tolist() == seqs
    rx = scapy_sa(s, key, tunnel=True, start=first, esn=True)
    for i, (p, q) in enumerate(zip(inner, seqs)):
        pkt = IP(out[i])
        assert pkt[ESP].seq == q & 0xFFFFFFFF
        rx.esn = q >> 32                         # set, not passed: see _scapy_seal_at
        assert raw(rx.decrypt(pkt, verify=True)) == raw(p), f"packet {i}: seq {q:#x}"


# ESP-in-UDP is told apart by the parser entry's port, not by 4500: its ports are those of the IKE
# traffic (RFC 3948 §2.1), whose source port a NAT maps to any other, and an implementation may be
# configured to float IKE to a port other than 4500 (strongSwan's charon.port_nat_t).
@pytest.mark.parametrize("sport,dport", [(61034, 4500), (4500, 14500), (14500, 14500)],
                         ids=["nat-sport", "custom-dport", "custom-both"])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256"])
def test_nondefault_ports_both_ways(nic, suite, mode, sport, dport):
    s, tunnel = SUITES[suite], mode == "tunnel"
    key = _key(s)
    inner = inner_packets(tunnel)
    # scapy -> natt: the inbound SA's parser entry listens on dport.
    h_in = install_in(nic, s, key, tunnel=tunnel, start=1, esn=False, port=dport)
    sa = scapy_sa(s, key, tunnel=tunnel, start=1, esn=False, sport=sport, dport=dport)
    wire = [raw(sa.encrypt(p)) for p in inner]
    for w in wire:
        assert struct.unpack_from("!HH", w, (w[0] & 15) * 4) == (sport, dport)
    res = nic.decap(wire)
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert res.sa.tolist() == [h_in] * len(inner)
    assert res.seq.tolist() == list(range(1, len(inner) + 1))
    assert [res[i] for i in range(len(inner))] == [raw(p) for p in inner]
    # natt -> scapy: the outbound SA writes sport -> dport.
    h_out = install_out(nic, s, key, tunnel=tunnel, start=1, esn=False, sport=sport, dport=dport)
    out = nic.encap([raw(p) for p in inner], h_out)
    assert out.status.tolist() == [Status.OK] * len(inner)
    assert out.seq.tolist() == list(range(1, len(inner) + 1))
    rx = scapy_sa(s, key, tunnel=tunnel, start=1, esn=False, sport=sport, dport=dport)
    for i, p in enumerate(inner):
        pkt = _as_scapy_esp(out[i])
        assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].chksum) == (sport, dport, 0)
        assert raw(rx.decrypt(pkt, verify=True)) == raw(p), f"packet {i}: {p.summary()}"


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha384", "3des-sha1", "null-sha256"])
def test_scapy_tfc_padding_tunnel(nic, suite):
    """Traffic flow confidentiality padding (RFC 4303 §2.7): in tunnel mode a sender may append
    octets after the inner datagram, whose own length field (IPv4 total length, IPv6 payload
    length) delimits it. scapy encrypts the datagram with TFC octets after it; natt hands up the
    payload exactly, TFC octets included, for the stack to trim like link padding (semantics §1,
    outputs), so the inner header's length recovers the original."""
    s = SUITES[suite]
    key = _key(s)
    install_in(nic, s, key, tunnel=True, start=1, esn=False)
    sa = scapy_sa(s, key, tunnel=True, start=1, esn=False)
    inner = inner_packets(True)
    tfc = [bytes(17 * i + 1) for i in range(len(inner))]   # 1 to 103 zero octets
    # scapy dissects the octets after the length as a Padding layer and encrypts them with the rest.
    padded = [(IP if p.version == 4 else IPv6)(raw(p) + t) for p, t in zip(inner, tfc)]
    res = nic.decap([raw(sa.encrypt(q)) for q in padded])
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert res.seq.tolist() == list(range(1, len(inner) + 1))
    for i, (p, t) in enumerate(zip(inner, tfc)):
        assert res[i] == raw(p) + t, f"packet {i}: {p.summary()}"
        out = res[i]
        length = struct.unpack_from("!H", out, 2)[0] if p.version == 4 else 40 + struct.unpack_from("!H", out, 4)[0]
        assert out[:length] == raw(p)


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("suite", ["aes256gcm16", "aes128-sha512", "chacha20poly1305"])
def test_scapy_dummy_packets(nic, suite, mode):
    """Dummy packets (RFC 4303 §2.6, next header 59): the receiver must discard them, and does
    so after the ICV check, so they advance the replay window (§3.4.3) and a replay of one is
    still refused. scapy has no dummy-packet option; its transport-mode SA seals an IPv4 packet
    of protocol 59 from PEER to LOCAL, which is octet for octet what a tunnel-mode sender with
    tunnel ends PEER -> LOCAL emits as a dummy, so one scapy SA serves both modes. (natt does
    not generate dummy packets: encap takes IP datagrams only, so there is no other direction.)"""
    s, tunnel = SUITES[suite], mode == "tunnel"
    key = _key(s)
    h = install_in(nic, s, key, tunnel=tunnel, start=1, esn=False)
    sa = scapy_sa(s, key, tunnel=False, start=1, esn=False)
    real = inner_packets(tunnel)[0]
    wire = [raw(sa.encrypt(IP(src=PEER, dst=LOCAL, proto=59) / Raw(bytes(n)))) for n in (0, 1, 40)]
    if tunnel:
        wire.append(raw(scapy_sa(s, key, tunnel=True, start=4, esn=False).encrypt(real)))
    else:
        wire.append(raw(sa.encrypt(real)))
    res = nic.decap(wire + wire[:1])
    assert res.status.tolist() == [Status.DUMMY] * 3 + [Status.OK, Status.REPLAY]
    assert res.seq.tolist() == [1, 2, 3, 4, 1]
    assert res.sa.tolist() == [h] * 5
    assert res.next_header.tolist()[:3] == [59] * 3
    assert [res[i] for i in range(3)] == [b""] * 3
    assert res[3] == raw(real)


# Confidentiality-only ESP (RFC 4303 §3.2 allows it, a MAY): natt offers it through the OID layer
# only (no strongSwan keyword names it), scapy with ``auth_algo=None``.
@pytest.mark.parametrize("conf", [natt.ConfAlgo.AES_CBC_128, natt.ConfAlgo.AES_CBC_192, natt.ConfAlgo.AES_CBC_256,
                                  natt.ConfAlgo.TRIPLE_DES], ids=lambda c: c.name)
def test_confidentiality_only_both_ways(nic, conf):
    s = suite_for_algos(conf, natt.IntegrityAlgo.NONE)
    assert s.icv_len == 0
    key = _key(s)
    handles = []
    for flags in (natt.OFFLOAD_INBOUND_SA, natt.OFFLOAD_OUTBOUND_SA):    # transport: no tunnel addresses
        req = natt.AddUdpEspSa(flags=flags, key_mat=key, sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, SPI, integrity_algo=natt.AlgoInfo(natt.IntegrityAlgo.NONE, 0),
            conf_algo=natt.AlgoInfo(conf, s.enc_key_len))])
        assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.SUCCESS
        handles.append(req.offload_handle)
    h_in, h_out = handles
    inner = inner_packets(False)
    # scapy -> natt
    sa = scapy_sa(s, key, tunnel=False, start=1, esn=False)
    assert sa.auth_algo.icv_size == 0
    res = nic.decap([raw(sa.encrypt(p)) for p in inner])
    assert res.status.tolist() == [Status.OK] * len(inner)
    assert res.sa.tolist() == [h_in] * len(inner)
    assert res.seq.tolist() == list(range(1, len(inner) + 1))
    assert [res[i] for i in range(len(inner))] == [raw(p) for p in inner]
    # natt -> scapy: no ICV after the ciphertext.
    out = nic.encap([raw(p) for p in inner], h_out)
    assert out.status.tolist() == [Status.OK] * len(inner)
    assert out.seq.tolist() == list(range(1, len(inner) + 1))
    rx = scapy_sa(s, key, tunnel=False, start=1, esn=False)
    for i, p in enumerate(inner):
        payload = raw(p)[(raw(p)[0] & 15) * 4:]
        assert len(_esp_of(out[i])) == 8 + s.iv_len + len(payload) + 2 + (-(len(payload) + 2) % s.block_size)
        assert raw(rx.decrypt(IP(out[i]), verify=True)) == raw(p), f"packet {i}: {p.summary()}"


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
