"""Realistic NAT-T test traffic, built without any I/O.

Three layers, each usable on its own:

* **Inner packets** — :func:`ipv4`, :func:`ipv6`, :func:`icmp_echo`, :func:`udp_datagram`,
  :func:`tcp_segment`, :func:`icmp6_echo`, :func:`udp6_datagram`, :func:`inner_traffic` (one at a
  time: :func:`iter_inner_traffic`): well-formed IPv4 (and, for tunnel mode, IPv6) datagrams with
  correct checksums.
* **ESP-in-UDP by hand** — :class:`EspSealer` seals an ESP payload for one SA with the ``cryptography``
  package (independently of natt's own data paths), and :func:`esp_in_udp` wraps it into the
  UDP-encapsulated IPv4 packet a NAT-T peer sends (RFC 3948 §2, either framing). Sealer options build
  what a conforming peer never sends — bad padding, bad pad length, odd next headers — with valid ICVs.
* **Scenarios** — :func:`make_sa_pair` installs a matched outbound/inbound SA pair on one or two
  :class:`natt.Offload` instances and :func:`encapsulated_traffic` also returns packets encapsulated
  with it; :func:`mixed_traffic` builds a deterministic mixed batch (every
  suite, both modes, both framings, ESN, corruptions, replays, reorderings, truncations, length edits,
  IKE, keepalives, fragments, non-ESP, unknown SPIs, padding errors, dummy packets) together with the
  inbound SA set it is meant for and the status and SA docs/semantics.md §1 gives every packet
  (from a small model of the decap rules that decides authentication by what was sealed, not by
  running crypto).

What a seed determines (each function draws from its own ``random.Random(seed)``):

* :func:`inner_traffic` and :func:`mixed_traffic` return the same octets for the same arguments,
  in any process. :func:`mixed_traffic` seals every packet itself with :class:`EspSealer` and
  draws the CBC IVs from that same generator, so a failing differential or fuzzing case can be
  rebuilt from its seed alone.
* :func:`make_sa_pair`'s default key, and :func:`encapsulated_traffic`'s key and inner datagrams.
  The packets of :func:`encapsulated_traffic` are natt's own encap output: byte for byte the same
  for a seed with the suites whose IV is the sequence number (AES-GCM, AES-GMAC,
  ChaCha20-Poly1305) or that have none (NULL encryption); a CBC suite (AES-CBC, 3DES) gets a
  fresh unpredictable IV per packet from the system's random generator (``os.urandom`` on the
  reference backend, OpenSSL's ``RAND_bytes`` on the fast one), as RFC 3602 §3 requires, so its
  ciphertext and ICV differ run to run while the headers (outer IPv4 and UDP, SPI, sequence
  number), lengths and decapsulated datagrams repeat.
* :meth:`EspSealer.seal` and :func:`esp_in_udp` take no seed: a CBC IV is ``iv``, else drawn from
  ``rng`` (deterministic when that is a seeded ``random.Random``), else from ``os.urandom``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import math
import os
import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher as _CryptoCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ._backend import ESN_RESYNC_LIMIT, ESN_RESYNC_TRIGGER
from ._batch import PacketBatch
from ._constants import (
    OFFLOAD_INBOUND_SA,
    OFFLOAD_OUTBOUND_SA,
    OID_TCP_TASK_IPSEC_ADD_UDPESP_SA,
    NdisStatus,
    Operation,
    Status,
    UdpEncapType,
)
from ._oid import AddUdpEspSa, AlgoInfo, EncapTypeEntry, OffloadError, OffloadSecurityAssociation
from ._suites import SUITES, Cipher, Mac, Suite, parse_suite

if TYPE_CHECKING:
    from ._batch import EncapResult
    from ._offload import Offload

__all__ = [
    "Address",
    "IP_FLAG_DF",
    "IP_FLAG_MF",
    "DEFAULT_PORT",
    "default_padding",
    "internet_checksum",
    "ipv4",
    "ipv6",
    "icmp_echo",
    "udp_datagram",
    "tcp_segment",
    "icmp6_echo",
    "udp6_datagram",
    "inner_traffic",
    "iter_inner_traffic",
    "EspSealer",
    "esp_in_udp",
    "udp_encapsulate",
    "SaPair",
    "make_sa_pair",
    "encapsulated_traffic",
    "SaSpec",
    "MixedTraffic",
    "mixed_traffic",
    "MIXED_KINDS",
]

Address = Union[int, str, ipaddress.IPv4Address]

PROTO_ICMP = 1
PROTO_IPIP = 4      # next header of an IPv4 datagram in tunnel mode (RFC 4303 §2.6)
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41     # next header of an IPv6 datagram in tunnel mode
PROTO_ESP = 50
PROTO_ICMPV6 = 58
PROTO_NONE = 59     # "no next header": an ESP dummy packet (RFC 4303 §2.6)

IP_FLAG_DF = 0b010
IP_FLAG_MF = 0b001

#: Default UDP port per framing: RFC 3948 on 4500; the legacy non-IKE-marker framing
#: (draft-ietf-ipsec-udp-encaps-00/01) shared IKE's port 500.
DEFAULT_PORT = {UdpEncapType.OTHER: 4500, UdpEncapType.IKE: 500}


# --------------------------------------------------------------------------------------------------
# Inner packets
# --------------------------------------------------------------------------------------------------

def _v4(a: Address) -> int:
    if isinstance(a, int):
        if not 0 <= a <= 0xFFFFFFFF:
            raise ValueError(f"address: {a} is not a 32-bit value")
        return a
    if isinstance(a, str):
        return _parse_v4(a)
    return int(ipaddress.IPv4Address(a))


@functools.lru_cache(maxsize=4096)
def _parse_v4(a: str) -> int:
    # Generators reuse a few hundred addresses; ipaddress parsing was their largest single cost.
    return int(ipaddress.IPv4Address(a))


def _v6(a: Union[int, str, ipaddress.IPv6Address]) -> bytes:
    return ipaddress.IPv6Address(a).packed


def internet_checksum(data: Union[bytes, bytearray, memoryview]) -> int:
    """RFC 1071 one's-complement checksum of ``data`` (as if zero-padded to an even length)."""
    data = bytes(data)      # a copy, so that the padding never lands in the caller's bytearray
    if len(data) & 1:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _payload(p: Union[bytes, int], fill: int = 0) -> bytes:
    # An int asks for that many octets of a recognisable counting pattern (like ping's -p).
    if isinstance(p, int):
        if p < 0:
            raise ValueError(f"payload: {p} octets")
        return bytes((fill + i) & 0xFF for i in range(p))
    return bytes(p)


def _uint(name: str, value: int, bits: int) -> int:
    """``value`` if it fits its ``bits``-bit header field, else ValueError naming the field
    (struct's own error names neither the field nor the builder's parameter)."""
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name}: {value} does not fit in {bits} bits")
    return value


def _length(total: int, name: str = "payload") -> int:
    """An IPv4 total length, IPv6 payload length or UDP length: at most 65535 (RFC 791, 8200, 768);
    else ValueError naming the parameter ``name`` whose size made it too long."""
    if total > 0xFFFF:
        raise ValueError(f"{name}: the datagram would be {total} octets, a length field holds at most 65535")
    return total


def ipv4(src: Address, dst: Address, protocol: int, payload: bytes, *, tos: int = 0, ip_id: int = 0,
         ip_flags: int = IP_FLAG_DF, frag_offset: int = 0, ttl: int = 64, options: bytes = b"") -> bytes:
    """An IPv4 datagram (RFC 791) with a correct header checksum.

    ``options`` must be a multiple of 4 octets (at most 40); ``ip_flags`` is the 3-bit flags field
    (``IP_FLAG_DF``, ``IP_FLAG_MF``); ``frag_offset`` is in 8-octet units (13 bits). A value that
    does not fit its header field raises ValueError naming the parameter. The packet builders
    below pass these keywords through (``**ip``).
    """
    if len(options) % 4 or len(options) > 40:
        raise ValueError("options: length must be a multiple of 4, at most 40 octets")
    ihl = 5 + len(options) // 4
    flags_fragment = _uint("ip_flags", ip_flags, 3) << 13 | _uint("frag_offset", frag_offset, 13)
    hdr = struct.pack("!BBHHHBBHII", 0x40 | ihl, _uint("tos", tos, 8), _length(ihl * 4 + len(payload)),
                      _uint("ip_id", ip_id, 16), flags_fragment, _uint("ttl", ttl, 8),
                      _uint("protocol", protocol, 8), 0, _v4(src), _v4(dst))
    hdr += options
    return hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:] + payload


def ipv6(src: Union[int, str, ipaddress.IPv6Address], dst: Union[int, str, ipaddress.IPv6Address],
         next_header: int, payload: bytes, *, traffic_class: int = 0, flow_label: int = 0,
         hop_limit: int = 64) -> bytes:
    """An IPv6 datagram (RFC 8200) with no extension headers (``traffic_class``: 8 bits,
    ``flow_label``: 20 bits)."""
    first = 6 << 28 | _uint("traffic_class", traffic_class, 8) << 20 | _uint("flow_label", flow_label, 20)
    return (struct.pack("!IHBB", first, _length(len(payload)), _uint("next_header", next_header, 8),
                        _uint("hop_limit", hop_limit, 8)) + _v6(src) + _v6(dst) + payload)


def _pseudo4(src: Address, dst: Address, proto: int, length: int) -> bytes:
    return struct.pack("!IIBBH", _v4(src), _v4(dst), 0, proto, length)


def _pseudo6(src: Any, dst: Any, proto: int, length: int) -> bytes:
    return _v6(src) + _v6(dst) + struct.pack("!I3xB", length, proto)


def _l4_checksum(pseudo: bytes, segment: bytes, offset: int, *, udp: bool) -> bytes:
    c = internet_checksum(pseudo + segment)
    if udp and c == 0:
        c = 0xFFFF  # RFC 768: a computed zero is sent as all ones (zero means "no checksum")
    return segment[:offset] + struct.pack("!H", c) + segment[offset + 2:]


def icmp_echo(src: Address, dst: Address, *, ident: int = 1, seq: int = 1,
              payload: Union[bytes, int] = 56, reply: bool = False, **ip: Any) -> bytes:
    """An IPv4 ICMP echo request (or reply) as ``ping`` sends it (RFC 792)."""
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, _uint("ident", ident, 16), _uint("seq", seq, 16))
    body += _payload(payload)
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    return ipv4(src, dst, PROTO_ICMP, body, **ip)


def udp_datagram(src: Address, dst: Address, sport: int, dport: int, payload: Union[bytes, int] = 0, *,
                 checksum: bool = True, **ip: Any) -> bytes:
    """An IPv4 UDP datagram (RFC 768); ``checksum=False`` sends the checksum as 0."""
    data = _payload(payload)
    seg = struct.pack("!HHHH", _uint("sport", sport, 16), _uint("dport", dport, 16), _length(8 + len(data)), 0) + data
    if checksum:
        seg = _l4_checksum(_pseudo4(src, dst, PROTO_UDP, len(seg)), seg, 6, udp=True)
    return ipv4(src, dst, PROTO_UDP, seg, **ip)


def tcp_segment(src: Address, dst: Address, sport: int, dport: int, payload: Union[bytes, int] = 0, *,
                seq: int = 0, ack: int = 0, flags: int = 0x18, window: int = 65535, **ip: Any) -> bytes:
    """An IPv4 TCP segment (RFC 9293) without options; ``flags`` defaults to PSH|ACK."""
    data = _payload(payload)
    # Before the pseudo-header packs the length: an oversized payload is named, not a struct.error.
    _length(20 + len(ip.get("options", b"")) + 20 + len(data), "payload")
    seg = struct.pack("!HHIIBBHHH", _uint("sport", sport, 16), _uint("dport", dport, 16), _uint("seq", seq, 32),
                      _uint("ack", ack, 32), 5 << 4, _uint("flags", flags, 8), _uint("window", window, 16), 0, 0) + data
    seg = _l4_checksum(_pseudo4(src, dst, PROTO_TCP, len(seg)), seg, 16, udp=False)
    return ipv4(src, dst, PROTO_TCP, seg, **ip)


def icmp6_echo(src: Any, dst: Any, *, ident: int = 1, seq: int = 1, payload: Union[bytes, int] = 56,
               **ip6: Any) -> bytes:
    """An ICMPv6 echo request (RFC 4443) in an IPv6 datagram (for tunnel mode)."""
    body = struct.pack("!BBHHH", 128, 0, 0, _uint("ident", ident, 16), _uint("seq", seq, 16))
    body += _payload(payload)
    body = _l4_checksum(_pseudo6(src, dst, PROTO_ICMPV6, len(body)), body, 2, udp=False)
    return ipv6(src, dst, PROTO_ICMPV6, body, **ip6)


def udp6_datagram(src: Any, dst: Any, sport: int, dport: int, payload: Union[bytes, int] = 0,
                  **ip6: Any) -> bytes:
    """An IPv6 UDP datagram (the checksum is mandatory over IPv6, RFC 8200 §8.1)."""
    data = _payload(payload)
    seg = struct.pack("!HHHH", _uint("sport", sport, 16), _uint("dport", dport, 16), _length(8 + len(data)), 0) + data
    seg = _l4_checksum(_pseudo6(src, dst, PROTO_UDP, len(seg)), seg, 6, udp=True)
    return ipv6(src, dst, PROTO_UDP, seg, **ip6)


# Typical sizes of real traffic: TCP ACKs, DNS, VoIP, ping, MSS-sized segments near the MTU.
_SIZES = (0, 1, 20, 32, 56, 64, 100, 160, 200, 512, 536, 1000, 1200, 1300, 1380, 1400)


def _random_inner(rng: random.Random, src: Address, dst: Address, *, ipv6_ok: bool,
                  max_payload: int = 1400, options_ok: bool = False) -> bytes:
    """One random but well-formed inner datagram between ``src`` and ``dst`` (IPv4 addresses)."""
    size = min(rng.choice(_SIZES) if rng.random() < 0.7 else rng.randrange(0, max_payload + 1), max_payload)
    data = rng.randbytes(size)
    if ipv6_ok and rng.random() < 0.25:
        s6 = f"2001:db8:{_v4(src) & 0xFFFF:x}::{rng.randrange(1, 0xFFFF):x}"
        d6 = f"2001:db8:{_v4(dst) & 0xFFFF:x}::{rng.randrange(1, 0xFFFF):x}"
        ip6 = {"traffic_class": rng.choice((0, 0, 0x28, 0xB8)), "hop_limit": rng.choice((64, 255))}
        if rng.random() < 0.5:
            return icmp6_echo(s6, d6, ident=rng.getrandbits(16), seq=rng.getrandbits(16), payload=data, **ip6)
        return udp6_datagram(s6, d6, rng.getrandbits(16), rng.choice((53, 443, 5060)), data, **ip6)
    ip: dict[str, Any] = {"tos": rng.choice((0, 0, 0, 0x10, 0xB8)), "ip_id": rng.getrandbits(16),
                          "ttl": rng.choice((64, 128, 255)), "ip_flags": rng.choice((IP_FLAG_DF, 0))}
    if options_ok and rng.random() < 0.15:
        # NOP padding then an End of Options list: harmless options that must survive transport mode.
        n = rng.choice((4, 8, 40))
        ip["options"] = b"\x01" * (n - 1) + b"\x00"
    kind = rng.random()
    if kind < 0.4:
        return tcp_segment(src, dst, rng.getrandbits(16), rng.choice((80, 443, 22)), data,
                           seq=rng.getrandbits(32), ack=rng.getrandbits(32), **ip)
    if kind < 0.75:
        return udp_datagram(src, dst, rng.getrandbits(16), rng.choice((53, 123, 5060)), data,
                            checksum=rng.random() < 0.9, **ip)
    return icmp_echo(src, dst, ident=rng.getrandbits(16), seq=rng.getrandbits(16), payload=data, **ip)


def inner_traffic(seed: int, n: int, *, src: Address = "10.1.0.2", dst: Address = "10.2.0.7",
                  ipv6: bool = False, max_payload: int = 1400) -> list[bytes]:
    """``n`` random well-formed inner datagrams (TCP, UDP, ICMP echo; IPv6 too when ``ipv6``).

    Deterministic for ``seed``. IPv4 datagrams go from ``src`` to ``dst``; IPv6 ones use
    documentation addresses (2001:db8::/32). Payloads are at most ``max_payload`` octets.
    """
    return list(iter_inner_traffic(seed, n, src=src, dst=dst, ipv6=ipv6, max_payload=max_payload))


def iter_inner_traffic(seed: int, n: int, *, src: Address = "10.1.0.2", dst: Address = "10.2.0.7",
                       ipv6: bool = False, max_payload: int = 1400) -> Iterator[bytes]:
    """The datagrams of :func:`inner_traffic` (same arguments, same datagrams in the same order),
    one at a time: making many takes seconds, and a caller may want to show progress."""
    if n < 0:
        raise ValueError(f"n: {n} datagrams")
    _check_max_payload(max_payload)
    rng = random.Random(seed)
    for _ in range(n):
        yield _random_inner(rng, src, dst, ipv6_ok=ipv6, max_payload=max_payload)


# --------------------------------------------------------------------------------------------------
# ESP by hand (RFC 4303 §2), independent of natt's data paths
# --------------------------------------------------------------------------------------------------

_HASHES: dict[Mac, type[hashes.HashAlgorithm]] = {
    Mac.HMAC_MD5_96: hashes.MD5, Mac.HMAC_SHA1_96: hashes.SHA1, Mac.HMAC_SHA256_128: hashes.SHA256,
    Mac.HMAC_SHA384_192: hashes.SHA384, Mac.HMAC_SHA512_256: hashes.SHA512}


def _check_max_payload(max_payload: int) -> None:
    # The largest header natt.traffic puts before a payload: IPv4 with 40 octets of options + TCP.
    if not 0 <= max_payload <= 0xFFFF - 60 - 20:
        raise ValueError(f"max_payload: {max_payload} octets; 0 .. {0xFFFF - 80} fit in a datagram")


def default_padding(payload_len: int, block_size: int) -> bytes:
    """RFC 4303 §2.4 default padding 1, 2, 3, …: the fewest octets that make
    ``payload_len + padding + 2`` a multiple of both the cipher block and 4."""
    if payload_len < 0 or block_size < 1:
        raise ValueError(f"payload_len, block_size: {payload_len} and {block_size}; expected >= 0 and >= 1")
    align = block_size * 4 // math.gcd(block_size, 4)
    n = -(payload_len + 2) % align
    return bytes(range(1, n + 1))


class EspSealer:
    """Builds ESP packets (SPI through ICV) for one SA with the ``cryptography`` package.

    A third implementation of the ESP transforms, written from the RFCs and docs/semantics.md §1
    rather than from natt's code, so it can check both data paths. The key is held privately and
    never shown by ``repr``.

    ``suite`` is a :class:`natt.Suite` or a strongSwan keyword (``"aes128gcm16"``; a ``-esn``
    suffix sets ``esn``). ``key`` is laid out as for ``Offload.add_sa``: encryption key, salt
    (AEAD), integrity key. ``spi`` is 32 bits.
    """

    __slots__ = ("suite", "spi", "esn", "_enc", "_salt", "_auth", "_aead")

    def __init__(self, suite: Union[Suite, str], key: Union[bytes, bytearray, memoryview], spi: int, *,
                 esn: bool = False) -> None:
        if isinstance(suite, str):
            suite, esn_kw = parse_suite(suite)
            esn = esn or esn_kw
        n = key.nbytes if isinstance(key, memoryview) else len(key)   # octets, as add_sa counts them
        if n != suite.key_len:
            raise ValueError(f"key: {suite.name} needs {suite.key_len} octets, got {n}")
        self.suite = suite
        self.spi = _uint("spi", spi, 32)
        if self.spi == 0:
            # RFC 4303 §2.1: reserved, never sent; in RFC 3948 framing it is the non-ESP marker.
            raise ValueError("spi: 0 is reserved (RFC 4303 §2.1) and, in UDP, marks an IKE message")
        self.esn = esn
        k = bytes(key)
        self._enc = k[: suite.enc_key_len]
        self._salt = k[suite.enc_key_len: suite.enc_key_len + suite.salt_len]
        self._auth = k[suite.enc_key_len + suite.salt_len:]
        self._aead: Any = None
        if suite.cipher in (Cipher.AES_GCM, Cipher.AES_GMAC):
            self._aead = AESGCM(self._enc)
        elif suite.cipher is Cipher.CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(self._enc)

    def __repr__(self) -> str:
        return f"EspSealer(suite={self.suite.name!r}, spi=0x{self.spi:08x}, esn={self.esn})"

    def seal(self, seq: int, payload: bytes, next_header: int, *, iv: Optional[bytes] = None,
             padding: Optional[bytes] = None, pad_len: Optional[int] = None,
             rng: Optional[random.Random] = None) -> bytes:
        """ESP = SPI ‖ seq (low 32 bits) ‖ IV ‖ E(payload ‖ padding ‖ pad_len ‖ next_header) ‖ ICV.

        ``seq`` is the full sequence number (64-bit with ESN; its high half enters only the ICV or
        AAD, RFC 4303 §2.2.1). ``iv`` defaults to the 64-bit ``seq`` for the counter-IV suites
        (GCM, GMAC, ChaCha20-Poly1305, as natt's encap does, RFC 4106 §3.1) and to random octets
        from ``rng`` (or ``os.urandom``) for CBC. ``padding`` replaces the default padding and
        ``pad_len`` the value written in the pad length octet: both exist to build malformed
        trailers that still carry a valid ICV. With ``iv`` and ``rng`` left out, CBC output differs
        on every call; with ``rng`` a seeded ``random.Random``, it is reproducible.
        """
        s = self.suite
        if not 0 <= seq < 1 << (64 if self.esn else 32):
            raise ValueError(f"seq: {seq} is outside 0..2**{64 if self.esn else 32}-1 "
                             f"({'with' if self.esn else 'without'} ESN, RFC 4303 §2.2)")
        seql = seq & 0xFFFFFFFF
        seq_hi = struct.pack("!I", seq >> 32) if self.esn else b""
        header = struct.pack("!II", self.spi, seql)
        if padding is None:
            padding = default_padding(len(payload), s.block_size)
        if pad_len is None and len(padding) > 0xFF:
            raise ValueError(f"padding: {len(padding)} octets; the pad length octet holds at most 255 "
                             f"(pass pad_len to write another value)")
        trailer = padding + bytes((len(padding) if pad_len is None else _uint("pad_len", pad_len, 8),
                                   _uint("next_header", next_header, 8)))
        plain = payload + trailer
        if iv is None:
            if s.cipher in (Cipher.AES_GCM, Cipher.AES_GMAC, Cipher.CHACHA20_POLY1305):
                iv = struct.pack("!Q", seq)
            elif s.iv_len:
                iv = rng.randbytes(s.iv_len) if rng is not None else os.urandom(s.iv_len)
            else:
                iv = b""
        if len(iv) != s.iv_len:
            raise ValueError(f"iv: {s.name} needs {s.iv_len} octets, got {len(iv)}")
        if s.cipher in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305):
            # RFC 4106 §5 / RFC 7634 §2.1: AAD = SPI ‖ [seq_hi ‖] seql; nonce = salt ‖ IV.
            aad = header[:4] + seq_hi + header[4:]
            sealed: bytes = self._aead.encrypt(self._salt + iv, plain, aad)
            # A truncated GCM tag is the leading octets of the full one (NIST SP 800-38D §5.2.1.2).
            return header + iv + sealed[:-16] + sealed[-16:][: s.icv_len]
        if s.cipher is Cipher.AES_GMAC:
            # RFC 4543 §3.5: everything after the ESP header, IV included, is authenticated only.
            aad = header[:4] + seq_hi + header[4:] + iv + plain
            tag: bytes = self._aead.encrypt(self._salt + iv, b"", aad)
            return header + iv + plain + tag
        if s.cipher is Cipher.NULL:
            body = plain
        else:
            algo = algorithms.AES(self._enc) if s.cipher is Cipher.AES_CBC else TripleDES(self._enc)
            if len(plain) % s.block_size:
                raise ValueError(f"padding: plaintext of {len(plain)} octets is not a whole number of "
                                 f"{s.block_size}-octet blocks")
            enc = _CryptoCipher(algo, modes.CBC(iv)).encryptor()
            body = enc.update(plain) + enc.finalize()
        esp = header + iv + body
        if s.mac is Mac.NONE:
            return esp
        mac = hmac.HMAC(self._auth, _HASHES[s.mac]())
        mac.update(esp + seq_hi)  # RFC 4303 §2.2.1: seq_hi is authenticated after the payload, never sent
        return esp + mac.finalize()[: s.icv_len]


def udp_encapsulate(esp: bytes, src: Address, dst: Address, *, sport: Optional[int] = None,
                    dport: Optional[int] = None, framing: UdpEncapType = UdpEncapType.OTHER,
                    udp_checksum: bool = False, **ip: Any) -> bytes:
    """Wrap an ESP packet (or any UDP payload) in UDP and a fresh IPv4 header (``**ip``: see :func:`ipv4`).

    ``framing=IKE`` puts the 8-octet zero non-IKE marker in front (legacy draft framing). The
    ports default to the framing's (:data:`DEFAULT_PORT`: 4500, or 500 for ``IKE``).
    RFC 3948 §2.1 says the UDP checksum SHOULD be 0; ``udp_checksum=True`` sends a real one,
    which receivers must accept as well. Ports outside 0..65535, or an ``esp`` too long for the
    datagram, raise ValueError naming the parameter.
    """
    ip.setdefault("ip_flags", 0)
    _length(20 + len(ip.get("options", b"")) + 8 + (8 if framing == UdpEncapType.IKE else 0) + len(esp), "esp")
    return ipv4(src, dst, PROTO_UDP, _udp(esp, _v4(src), _v4(dst), sport, dport, framing, udp_checksum), **ip)


def _udp(esp: bytes, src: int, dst: int, sport: Optional[int], dport: Optional[int], framing: UdpEncapType,
         udp_checksum: bool) -> bytes:
    port = DEFAULT_PORT[UdpEncapType(framing)]
    sport = port if sport is None else sport
    dport = port if dport is None else dport
    if framing == UdpEncapType.IKE:
        esp = bytes(8) + esp
    seg = struct.pack("!HHHH", _uint("sport", sport, 16), _uint("dport", dport, 16), _length(8 + len(esp)), 0) + esp
    if udp_checksum:
        seg = _l4_checksum(_pseudo4(src, dst, PROTO_UDP, len(seg)), seg, 6, udp=True)
    return seg


def _transport_outer(inner_header: bytes, esp: bytes, src: Optional[Address], dst: Optional[Address],
                     sport: Optional[int], dport: Optional[int], framing: UdpEncapType,
                     udp_checksum: bool) -> bytes:
    # RFC 3948 §3.1: the transport-mode outer header is the original one with protocol UDP.
    hdr = bytearray(inner_header)
    if src is not None:
        hdr[12:16] = struct.pack("!I", _v4(src))
    if dst is not None:
        hdr[16:20] = struct.pack("!I", _v4(dst))
    seg = _udp(esp, _int(hdr[12:16]), _int(hdr[16:20]), sport, dport, framing, udp_checksum)
    hdr[2:4] = struct.pack("!H", len(hdr) + len(seg))
    hdr[9] = PROTO_UDP
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", internet_checksum(bytes(hdr)))
    return bytes(hdr) + seg


def _split_inner(inner: bytes, tunnel: bool) -> tuple[bytes, int, int]:
    """(ESP payload, next header, TOS) of an inner datagram, as natt's encap takes them
    (docs/semantics.md §2 step 1): what it refuses as MALFORMED is a ValueError naming ``inner``."""
    version = inner[0] >> 4 if inner else 0
    if tunnel and version == 6:
        plen = struct.unpack_from("!H", inner, 4)[0] if len(inner) >= 40 else -1
        if plen < 0 or 40 + plen > len(inner):
            raise ValueError(f"inner: an IPv6 packet of {len(inner)} octets, shorter than its header and "
                             f"payload length say")
        return inner[:40 + plen], PROTO_IPV6, (inner[0] & 0x0F) << 4 | inner[1] >> 4
    what = "tunnel mode carries an IPv4 or IPv6 packet" if tunnel else \
        "transport mode protects an IPv4 datagram's payload"
    if len(inner) < 20 or version != 4:
        raise ValueError(f"inner: {what}; these {len(inner)} octets are none")
    ihl = (inner[0] & 15) * 4
    tl = struct.unpack_from("!H", inner, 2)[0]
    if ihl < 20 or not ihl <= tl <= len(inner):
        raise ValueError(f"inner: IPv4 header length {ihl} and total length {tl} do not fit "
                         f"{len(inner)} octets (RFC 791)")
    if tunnel:
        return inner[:tl], PROTO_IPIP, inner[1]
    if struct.unpack_from("!H", inner, 6)[0] & 0x3FFF:
        raise ValueError("inner: a fragment; transport mode protects whole datagrams only (RFC 4303 §3.3.4)")
    return inner[ihl:tl], inner[9], inner[1]


def esp_in_udp(sealer: EspSealer, seq: int, inner: bytes, *, tunnel: bool,
               src: Optional[Address] = None, dst: Optional[Address] = None,
               sport: Optional[int] = None, dport: Optional[int] = None,
               framing: UdpEncapType = UdpEncapType.OTHER,
               udp_checksum: bool = False, next_header: Optional[int] = None, df_bit: str = "copy",
               **seal: Any) -> bytes:
    """The UDP-encapsulated ESP IPv4 packet a NAT-T peer sends for ``inner`` (RFC 3948 §2).

    Tunnel mode: ``inner`` (IPv4 or IPv6) is the ESP payload, next header 4 or 41, and the outer
    header is the one natt's encap writes (docs/semantics.md §2.7: TOS from the inner packet, DF
    as the SA's ``df_bit`` says -- ``"copy"`` from an inner IPv4 header, ``"set"``, ``"clear"``
    (RFC 4301 §8.1) --, ID = ``seq & 0xFFFF``, TTL 64, ``src`` → ``dst``). Transport mode: ``inner`` must be IPv4;
    its payload is protected and its header (options kept, DF too: ``df_bit`` must be ``"copy"``)
    becomes the outer one with protocol 17; ``src``/``dst`` when given replace its addresses, as a
    NAT on the path would.
    ``next_header`` overrides the value written in the trailer; ``seal`` goes to
    :meth:`EspSealer.seal`. The ports default to the framing's (:data:`DEFAULT_PORT`). An inner
    datagram natt's encap refuses as ``MALFORMED`` (docs/semantics.md §2 step 1: a bad IPv4
    header or total length, a short IPv6 packet, a fragment in transport mode) raises ValueError.
    """
    if df_bit not in ("copy", "set", "clear") or (not tunnel and df_bit != "copy"):
        raise ValueError(f"df_bit: {df_bit!r}; 'copy', 'set' or 'clear', and a transport SA keeps the "
                         f"inner header's own ('copy')")
    payload, nh, tos = _split_inner(inner, tunnel)
    esp = sealer.seal(seq, payload, nh if next_header is None else next_header, **seal)
    outer_header = 20 if tunnel else (inner[0] & 15) * 4
    _length(outer_header + 8 + (8 if framing == UdpEncapType.IKE else 0) + len(esp), "inner")
    if not tunnel:
        return _transport_outer(inner[: (inner[0] & 15) * 4], esp, src, dst, sport, dport, framing, udp_checksum)
    if src is None or dst is None:
        raise ValueError("src/dst: tunnel mode needs the outer (tunnel end point) addresses")
    # RFC 4301 §8.1: set, clear, or copied from an inner IPv4 header (an IPv6 one has no DF).
    if df_bit == "copy":
        df = inner[6] >> 5 & IP_FLAG_DF if inner[0] >> 4 == 4 else 0
    else:
        df = IP_FLAG_DF if df_bit == "set" else 0
    return udp_encapsulate(esp, src, dst, sport=sport, dport=dport, framing=framing,
                           udp_checksum=udp_checksum, tos=tos, ip_id=seq & 0xFFFF, ip_flags=df)


def _int(b: Union[bytes, bytearray]) -> int:
    return int.from_bytes(b, "big")


# --------------------------------------------------------------------------------------------------
# A matched SA pair on natt Offload instances
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class SaPair:
    """An outbound SA on ``out_nic`` and the inbound SA that receives it on ``in_nic``.

    Built by :func:`make_sa_pair`. ``key`` is excluded from ``repr``.
    """

    out_nic: Offload
    in_nic: Offload
    out_handle: int
    in_handle: int
    spi: int
    suite: str
    esn: bool
    tunnel: bool
    framing: UdpEncapType
    src: Optional[str]
    dst: Optional[str]
    port: int
    key: bytes = dataclasses.field(repr=False)

    def encap(self, packets: Union[PacketBatch, Iterable[bytes]], *,
              threads: Optional[int] = None) -> "EncapResult":
        """Encapsulate inner datagrams with the outbound SA (``out_nic.encap``)."""
        return self.out_nic.encap(packets, self.out_handle, threads=threads)

    def sealer(self) -> EspSealer:
        """An :class:`EspSealer` with this pair's SPI, suite and key (to forge packets by hand)."""
        return EspSealer(self.suite, self.key, self.spi, esn=self.esn)

    def delete(self) -> None:
        """Delete both SAs (and the inbound parser entry when it was the last SA on it)."""
        self.out_nic.delete_sa(self.out_handle)
        self.in_nic.delete_sa(self.in_handle)


def make_sa_pair(out_nic: Offload, in_nic: Optional[Offload] = None, *, suite: str = "aes128gcm16", mode: str = "tunnel",
                 framing: UdpEncapType = UdpEncapType.OTHER, esn: bool = False, spi: int = 0x1001,
                 key: Union[bytes, bytearray, memoryview, None] = None, seed: int = 0,
                 src: Optional[str] = "198.51.100.2", dst: Optional[str] = "203.0.113.5",
                 port: Optional[int] = None, replay_window: int = 64,
                 replay_seq: int = 0, replay_oseq: int = 0, df_bit: str = "copy") -> SaPair:
    """Install a matched outbound/inbound SA pair and return it.

    The outbound SA goes on ``out_nic`` and the inbound one on ``in_nic`` (the same Offload when
    ``in_nic`` is None, as a loopback). ``src``/``dst`` are the outer addresses (tunnel end points
    or transport hosts) of the outbound direction. In transport mode the outer header is the inner
    datagram's own, so the inbound SA only accepts packets addressed to ``dst`` (``dst=None``:
    any destination). ``port`` (default 4500 for RFC 3948 framing, 500
    for the legacy ``IKE`` framing) is both the parser entry port and the outer UDP ports. ``key``
    defaults to octets drawn from ``seed``. ``suite`` is a strongSwan keyword; a ``-esn`` suffix is
    the same as ``esn=True``. ``df_bit`` goes to the outbound SA (RFC 4301 §8.1; tunnel mode).
    """
    s, esn_kw = parse_suite(suite)
    esn = esn or esn_kw
    if in_nic is None:
        in_nic = out_nic
    if key is None:
        key = random.Random(seed).randbytes(s.key_len)
    if port is None:
        port = DEFAULT_PORT[UdpEncapType(framing)]
    common: dict[str, Any] = dict(spi=spi, key=key, suite=s.name, mode=mode, src=src, dst=dst, encap=UdpEncapType(framing),
                  port=port, esn=esn)
    # If the outbound add fails, the inbound SA goes, with its parser entry only if it made it.
    with in_nic._all_or_nothing() as added:
        added.append(in_nic.add_sa(direction="in", replay_window=replay_window, replay_seq=replay_seq, **common))
        h_out = out_nic.add_sa(direction="out", sport=port, dport=port, replay_window=replay_window,
                               replay_oseq=replay_oseq, df_bit=df_bit, **common)
    h_in = added[0]
    return SaPair(out_nic, in_nic, h_out, h_in, spi, s.name, esn, mode == "tunnel", UdpEncapType(framing),
                  src, dst, port, bytes(key))


def encapsulated_traffic(out_nic: Offload, in_nic: Optional[Offload] = None, n: int = 100, *, seed: int = 0,
                         inner: Optional[Sequence[bytes]] = None, max_payload: int = 1400,
                         **pair: Any) -> tuple[SaPair, list[bytes]]:
    """Install an SA pair (:func:`make_sa_pair`, which takes ``pair``) and encapsulate traffic with it.

    Returns the pair and the UDP-encapsulated ESP packets, ready for ``pair.in_nic.decap``. The
    inner datagrams are ``inner`` or ``n`` from :func:`inner_traffic` (seeded by ``seed``;
    IPv6 as well in tunnel mode), addressed from the pair's ``src`` to its ``dst`` so that a
    transport SA keyed on ``dst`` accepts them. Raises ``ValueError`` if encap refuses any packet
    (a malformed ``inner`` datagram, or the sequence space running out); whatever it raises, the
    pair is deleted first.

    ``seed`` fixes the key (unless ``key`` is given) and the inner datagrams. The packets are
    then the same for a seed except with a CBC suite, whose IVs natt's encap draws afresh from the
    system's random generator for every packet (RFC 3602 §3; see the module documentation).
    """
    # Whatever fails, the caller gets no pair to clean up, and the tables are as they were.
    with (out_nic if in_nic is None else in_nic)._all_or_nothing() as added:
        p = make_sa_pair(out_nic, in_nic, seed=seed, **pair)
        added.append(p.in_handle)
        try:
            if inner is None:
                inner = inner_traffic(seed, n, src=p.src or "10.1.0.2", dst=p.dst or "10.2.0.7", ipv6=p.tunnel,
                                      max_payload=max_payload)
            res = p.encap(inner)
            if int(res.status.max(initial=0)) != Status.OK:
                counts = ", ".join(f"{k.name}={v}" for k, v in res.counts().items())
                raise ValueError(f"inner: encap did not accept every packet ({counts})")
        except BaseException:
            out_nic.delete_sa(p.out_handle)      # an outbound SA uses no parser entry
            raise
    return p, list(res)


# --------------------------------------------------------------------------------------------------
# Mixed traffic for differential testing and fuzzing
# --------------------------------------------------------------------------------------------------

#: Relative weights of the packet kinds :func:`mixed_traffic` draws (override with ``kinds=``).
#: Valid traffic dominates, as on a real link; every other kind exercises one decap rule.
MIXED_KINDS: dict[str, float] = {
    "ok": 40.0,            # a valid packet with the next sequence number
    "reorder": 5.0,        # 2-6 valid packets with consecutive numbers, delivered shuffled
    "jump": 1.5,           # the sender skips ahead (lost packets), sometimes past the window
    "desync": 0.05,        # ESN SA: 2**32 or more packets lost, then a burst (RFC 4303 Appendix A3)
    "replay": 4.0,         # an exact copy of an earlier valid packet
    "old": 1.0,            # a fresh, valid packet numbered left of the receiver's window
    "seq_zero": 0.5,       # valid ICV over sequence number 0 (never sent, RFC 4303 §3.3.3)
    "dummy": 2.0,          # next header 59 (RFC 4303 §2.6)
    "protocol": 1.5,       # tunnel SA, next header neither 4 nor 41
    "tfc": 1.0,            # tunnel SA with TFC padding after the inner datagram (RFC 4303 §2.7)
    "long_padding": 1.0,   # valid padding longer than needed (up to 255 octets)
    "bad_padding": 1.5,    # padding octets not 1, 2, 3, … (valid ICV)
    "bad_pad_len": 1.5,    # pad length beyond the plaintext (valid ICV)
    "flip_spi": 1.0,       # one bit flipped in the SPI
    "flip_seq": 1.5,       # … in the sequence number
    "flip_iv": 1.0,        # … in the IV
    "flip_ct": 2.0,        # … in the ciphertext / trailer
    "flip_icv": 2.0,       # … in the ICV
    "flip_outer": 2.0,     # … in the outer IPv4 or UDP header
    "truncate_frame": 1.5, # buffer cut short, header lengths unchanged
    "truncate_esp": 2.0,   # ESP cut short, IPv4 and UDP lengths adjusted
    "ip_len": 1.0,         # IPv4 total length edited
    "udp_len": 1.0,        # UDP length edited
    "link_padding": 2.0,   # octets after the IPv4 total length (Ethernet minimum frame padding)
    "udp_checksum": 2.0,   # valid packet with a non-zero UDP checksum (RFC 3948 §2.1)
    "ike": 2.0,            # IKE message on an encapsulation port
    "keepalive": 1.5,      # NAT keepalive, one 0xFF octet (RFC 3948 §2.3)
    "empty_udp": 0.5,      # UDP with no payload on an encapsulation port
    "short_esp": 0.5,      # 1-7 octets that are neither keepalive nor IKE
    "fragment": 1.5,       # a valid packet fragmented by the path (both fragments)
    "non_udp": 1.5,        # TCP, ICMP, GRE, … instead of UDP
    "esp_in_ip": 0.5,      # plain ESP (protocol 50) carrying a valid packet
    "wrong_port": 1.0,     # a valid packet to a UDP port with no parser entry
    "unknown_spi": 2.0,    # an SPI no SA uses
    "wrong_dst": 1.0,      # a valid packet to a destination its SA does not match
    "not_ipv4": 1.0,       # IPv6, runts, junk
}

_M32 = 0xFFFFFFFF
_ENTRIES = ((UdpEncapType.OTHER, 4500), (UdpEncapType.OTHER, 4501), (UdpEncapType.IKE, 500))
_UNUSED_PORTS = (4499, 4502, 501, 1701, 53, 443)


@dataclasses.dataclass(frozen=True)
class SaSpec:
    """One SA of a mixed scenario, as the OID layer takes it (see :meth:`request`).

    Tunnel SAs have ``src``/``dst`` tunnel end points (``dst`` is the destination key); transport
    SAs have a destination key ``dst``/``dst_mask`` (``dst=None``: any destination) and may carry
    NAT-OA addresses. Addresses are dotted quads. ``key`` is excluded from ``repr``.
    """

    spi: int
    suite: str
    esn: bool
    tunnel: bool
    framing: UdpEncapType
    port: int
    src: Optional[str]
    dst: Optional[str]
    dst_mask: int
    replay_window: int
    replay_seq: int
    nat_oa_src: Optional[str]
    nat_oa_dst: Optional[str]
    key: bytes = dataclasses.field(repr=False)

    @property
    def mode(self) -> str:
        """``"tunnel"`` or ``"transport"``, as ``add_sa`` and key files spell it."""
        return "tunnel" if self.tunnel else "transport"

    def request(self, direction: str = "in", replay_oseq: int = 0) -> AddUdpEspSa:
        """An ``AddUdpEspSa`` installing this SA inbound (or, ``direction="out"``, its outbound twin)."""
        s = SUITES[self.suite]
        inbound = direction == "in"
        req = AddUdpEspSa(
            flags=OFFLOAD_INBOUND_SA if inbound else OFFLOAD_OUTBOUND_SA,
            sec_assoc=[OffloadSecurityAssociation(Operation.ENCRYPT, self.spi,
                                                  integrity_algo=AlgoInfo(s.integ_algo, s.integ_key_len),
                                                  conf_algo=AlgoInfo(s.conf_algo, s.conf_key_len))],
            encap_type_entry=EncapTypeEntry(self.framing, self.port),
            key_mat=self.key, replay_window=self.replay_window, esn=self.esn, icv_len=s.icv_len,
            encap_src_port=self.port, encap_dst_port=self.port,
            replay_seq=self.replay_seq if inbound else 0, replay_oseq=0 if inbound else replay_oseq)
        if self.tunnel:           # a tunnel SA has both end points
            req.src_tunnel_addr = 0 if self.src is None else self.src
            req.dst_tunnel_addr = 0 if self.dst is None else self.dst
        else:
            req.dst_addr = self.dst or 0
            req.dst_mask = self.dst_mask if self.dst else 0
            if inbound:
                req.nat_oa_src = self.nat_oa_src or 0
                req.nat_oa_dst = self.nat_oa_dst or 0
        return req

    def sealer(self) -> EspSealer:
        """An :class:`EspSealer` for this SA (what its peer would send)."""
        return EspSealer(SUITES[self.suite], self.key, self.spi, esn=self.esn)


@dataclasses.dataclass(eq=False)
class MixedTraffic:
    """A mixed batch and the inbound SA set it is meant for (built by :func:`mixed_traffic`).

    ``expected[i]`` is the :class:`~natt.Status` docs/semantics.md §1 gives packet ``i`` when
    ``sas`` are installed, in order, on an empty Offload and the packets are decapsulated in
    order (in any batch split); ``expected_sa[i]`` is the index in ``sas`` of the SA the lookup
    finds (-1: none), ``expected_seq[i]`` and ``expected_next_header[i]`` the ``res.seq`` and
    ``res.next_header`` values. ``kinds[i]`` names how packet ``i`` was made (a
    :data:`MIXED_KINDS` key).
    """

    seed: int
    sas: list[SaSpec]
    packets: list[bytes]
    kinds: list[str]
    expected: list[Status]
    expected_sa: list[int]
    expected_seq: list[int]
    expected_next_header: list[int]

    def __len__(self) -> int:
        return len(self.packets)

    def __repr__(self) -> str:
        return f"MixedTraffic(seed={self.seed}, {len(self.packets)} packets, {len(self.sas)} SAs)"

    def batch(self, start: int = 0, stop: Optional[int] = None) -> PacketBatch:
        """Packets ``start:stop`` as a :class:`natt.PacketBatch`."""
        return PacketBatch.from_packets(self.packets[start:stop])

    def install(self, nic: Any) -> list[int]:
        """Install :attr:`sas` inbound on ``nic`` through the OID layer; returns their handles in order.

        Raises :class:`natt.OffloadError` if the Offload refuses one; the SAs before it stay installed.
        """
        handles = []
        for spec in self.sas:
            req = spec.request("in")
            status = nic.set_oid(OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req)
            if status != NdisStatus.SUCCESS:
                raise OffloadError(status, f"SA spi=0x{spec.spi:08x} ({spec.suite}, {spec.mode}) refused")
            handles.append(req.offload_handle)
        return handles


class _Window:
    """Receiver anti-replay state of one SA, exactly as docs/semantics.md §3 states it."""

    __slots__ = ("w", "t", "bits", "esn")

    def __init__(self, window: int, replay_seq: int, esn: bool) -> None:
        self.w = window
        self.t = replay_seq
        self.esn = esn
        self.bits = (1 << window) - 1  # bit i: number t - i seen; every number <= replay_seq counts as seen

    def infer(self, seql: int) -> Optional[int]:
        """The full sequence number for ``seql`` (RFC 4303 Appendix A); None when unrepresentable."""
        if not self.esn:
            return seql
        w, tl, th = self.w, self.t & _M32, self.t >> 32
        if tl >= w - 1:
            hi = th if seql >= tl - w + 1 else th + 1
        else:
            hi = th - 1 if seql >= (tl - w + 1) & _M32 else th
        if hi < 0 or hi > _M32:
            return None
        return hi << 32 | seql

    def replayed(self, seq: int) -> bool:
        if not self.w:
            return False
        if seq == 0 or seq <= self.t - self.w:
            return True
        return seq <= self.t and bool(self.bits >> (self.t - seq) & 1)

    def accept(self, seq: int) -> None:
        if not self.w:
            self.t = max(self.t, seq)
            return
        if seq > self.t:
            # A jump past the window (a resynchronisation moves T by 2**32 or more) clears it
            # without building a (seq - t)-bit integer.
            shift = seq - self.t
            self.bits = (self.bits << shift) & ((1 << self.w) - 1) if shift < self.w else 0
            self.t = seq
        self.bits |= 1 << (self.t - seq)


class _Sa:
    """Generator-side state of one SA: the peer's sender and the receiver's window model."""

    __slots__ = ("index", "spec", "suite", "sealer", "window", "next_seq", "history", "key_addr", "key_mask",
                 "peer", "fail_run")

    def __init__(self, index: int, spec: SaSpec, peer: str) -> None:
        self.index = index
        self.spec = spec
        self.suite = SUITES[spec.suite]
        self.sealer = spec.sealer()
        self.window = _Window(spec.replay_window, spec.replay_seq, spec.esn)
        self.next_seq = spec.replay_seq + 1
        self.history: list[tuple[bytes, _Origin]] = []   # recent packets that authenticated
        if spec.tunnel:
            self.key_addr, self.key_mask = _v4(spec.dst or 0), _M32
        elif spec.dst:
            self.key_mask = spec.dst_mask
            self.key_addr = _v4(spec.dst) & self.key_mask
        else:
            self.key_addr = self.key_mask = 0
        self.peer = peer                  # the peer's public (post-NAT) address
        self.fail_run = 0                 # the receiver's consecutive AUTH_FAILED packets

    def exhausted(self, k: int = 1) -> bool:
        return self.next_seq + k - 1 > ((1 << 64) - 1 if self.spec.esn else _M32)

    def take(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


@dataclasses.dataclass
class _Origin:
    """What the generator sealed: lets the model decide authentication without any crypto."""

    sa: _Sa
    seq: int
    esp: bytes
    post: Status  # the status once the ICV verifies: OK, DUMMY, PROTOCOL or MALFORMED (trailer)
    next_header: int


class _Model:
    """Status (and SA) per docs/semantics.md §1 for generated packets, in order.

    Crypto is not redone: a packet authenticates iff its ESP octets are exactly what the generator
    sealed for the SA the lookup finds, with the sequence number the sender used.
    """

    def __init__(self, sas: list[_Sa]) -> None:
        # The parser entries the SA set creates, and no others: installing an SA adds its entry
        # (semantics §1), so a UDP port no SA uses is no encapsulation port (NOT_ESP).
        self.entries = {sa.spec.port: sa.spec.framing for sa in sas}
        self._authenticated = False
        self._seq = self._nh = 0
        self.by_spi: dict[tuple[int, int], list[_Sa]] = {}
        for sa in sas:
            self.by_spi.setdefault((sa.spec.port, sa.spec.spi), []).append(sa)

    def lookup(self, port: int, spi: int, dst: int) -> Optional[_Sa]:
        best: Optional[_Sa] = None
        for sa in self.by_spi.get((port, spi), ()):
            if dst & sa.key_mask == sa.key_addr and (best is None or sa.key_mask > best.key_mask):
                best = sa
        return best

    def decide(self, p: bytes, origin: Optional[_Origin]) -> tuple[Status, int, int, int, bool]:
        """(status, SA index or -1, res.seq, res.next_header, whether the packet authenticated)."""
        self._seq = self._nh = 0
        self._authenticated = False
        status, sa = self._decide(p, origin)
        return status, sa, self._seq, self._nh, self._authenticated

    def _decide(self, p: bytes, origin: Optional[_Origin]) -> tuple[Status, int]:
        if len(p) < 20 or p[0] >> 4 != 4:
            return Status.NOT_ESP, -1
        ihl = (p[0] & 15) * 4
        tl = p[2] << 8 | p[3]
        if ihl < 20 or tl < ihl or tl > len(p):
            return Status.MALFORMED, -1
        p = p[:tl]
        if p[9] != PROTO_UDP:
            return Status.NOT_ESP, -1
        if (p[6] << 8 | p[7]) & 0x3FFF:
            return Status.FRAGMENT, -1
        if tl - ihl < 8 or (p[ihl + 4] << 8 | p[ihl + 5]) != tl - ihl:
            return Status.MALFORMED, -1
        framing = self.entries.get(p[ihl + 2] << 8 | p[ihl + 3])
        if framing is None:
            return Status.NOT_ESP, -1
        u = p[ihl + 8:]
        if len(u) == 1 and u[0] == 0xFF:
            return Status.KEEPALIVE, -1
        if framing == UdpEncapType.OTHER:
            if len(u) >= 4 and u[:4] == b"\0\0\0\0":
                return Status.IKE, -1
            if not u:
                return Status.MALFORMED, -1
            esp = u
        else:
            if len(u) > 16 and u[:8] == bytes(8):
                esp = u[8:]
            else:
                return Status.IKE, -1
        if len(esp) < 8:
            return Status.MALFORMED, -1
        spi, seql = struct.unpack_from("!II", esp)
        self._seq = seql        # res.seq from here on: seql until an SA infers more (semantics §1.6)
        sa = self.lookup(p[ihl + 2] << 8 | p[ihl + 3], spi, _int(p[16:20]))
        if sa is None:
            return Status.NO_SA, -1
        # With ESN, res.seq is the inferred number as soon as the SA is known, even if step 7 then
        # finds the packet MALFORMED; an unrepresentable inference leaves it at seql (§1.6, §3).
        seq = sa.window.infer(seql)
        if seq is not None:
            self._seq = seq
        s = sa.suite
        if len(esp) < 8 + s.iv_len + s.icv_len + 2:
            return Status.MALFORMED, sa.index
        if (len(esp) - 8 - s.iv_len - s.icv_len) % s.block_size:
            return Status.MALFORMED, sa.index
        if seq is None:
            return Status.REPLAY, sa.index
        if sa.window.replayed(seq):
            return Status.REPLAY, sa.index
        if origin is None or origin.sa is not sa or origin.esp != esp:
            sa.fail_run += 1
            return Status.AUTH_FAILED, sa.index
        if origin.seq != seq:
            # Semantics §3, RFC 4303 Appendix A3: on an ESN SA every ESN_RESYNC_TRIGGER-th
            # consecutive failure is retried with the ESN_RESYNC_LIMIT seq_hi values above the
            # inferred one.
            sa.fail_run += 1
            if not (sa.spec.esn and sa.fail_run % ESN_RESYNC_TRIGGER == 0
                    and 0 < (origin.seq >> 32) - (seq >> 32) <= ESN_RESYNC_LIMIT):
                return Status.AUTH_FAILED, sa.index
            seq = self._seq = origin.seq
        sa.fail_run = 0
        sa.window.accept(seq)
        self._authenticated = True
        self._nh = origin.next_header
        return origin.post, sa.index


class _Generator:
    """Draws packet kinds and builds each packet, feeding every one through the model in order."""

    def __init__(self, seed: int, suites: Sequence[str], kinds: dict[str, float], max_payload: int) -> None:
        self.rng = random.Random(seed)
        self.max_payload = max_payload
        self.kind_names = list(kinds)
        self.kind_weights = list(itertools.accumulate(kinds.values()))
        self.sas = self._make_sas(suites)
        self.model = _Model(self.sas)
        # IKE, keepalives and other non-ESP payloads go to the entries the SA set has (all three
        # once there are 9 suites; only UDP 4500 with one), kept in _ENTRIES order so a given seed
        # draws the same packets as before whenever every entry exists.
        used = {(sa.spec.framing, sa.spec.port) for sa in self.sas}
        self.entries = tuple(e for e in _ENTRIES if e in used)
        self.packets: list[bytes] = []
        self.kinds: list[str] = []
        self.expected: list[Status] = []
        self.expected_sa: list[int] = []
        self.expected_seq: list[int] = []
        self.expected_next_header: list[int] = []

    # ---------------------------------------------------------------- the SA set

    def _make_sas(self, suites: Sequence[str]) -> list[_Sa]:
        r = self.rng
        specs: list[tuple[SaSpec, str]] = []
        used: set[int] = set()

        def fresh_spi() -> int:
            while True:
                spi = r.randrange(0x100, 1 << 32)
                if spi not in used:
                    used.add(spi)
                    return spi

        # Features cycle rather than being drawn, so every scenario covers all of them:
        # (mode, framing, ESN) by SA index, windows and starting numbers by counters.
        cycle = {"esn": 0, "plain": 0}

        def spec(suite: str, spi: int, *, tunnel: bool, entry: tuple[UdpEncapType, int], esn: bool,
                 dst: Optional[str] = None, mask: int = _M32, nat_oa: bool = False) -> tuple[SaSpec, str]:
            s = SUITES[suite]
            k = cycle["esn" if esn else "plain"]
            cycle["esn" if esn else "plain"] += 1
            if esn:
                window = (32, 64, 128, 1024)[k % 4]
                # Right below 2**32 the receiver must infer seq_hi + 1 across the wrap; a small Tl
                # with Th > 0 is Appendix A case B; 0 makes a number "below zero" reachable; near
                # 2**64 a seq_hi + 1 that cannot be represented is (semantics §3), and the sender
                # runs out of numbers.
                replay_seq = ((1 << 32) - r.randrange(1, 300), 0, r.randrange(1, 2000),
                              (r.randrange(1, 8) << 32) + r.randrange(0, 40),
                              (1 << 40) + r.randrange(1 << 32), (1 << 64) - r.randrange(3000, 9000))[k % 6]
            else:
                window = (0, 64, 32, 128, 1024, 64)[k % 6]
                replay_seq = (0, r.randrange(1, 5000), (1 << 32) - r.randrange(200, 5000))[k % 3]
            n = len(specs) + 1
            peer = f"198.51.100.{n % 250 + 1}"
            src = None
            if tunnel:
                src, dst = f"100.64.{n // 250}.{n % 250 + 1}", f"203.0.113.{n % 250 + 1}"
            src_oa = dst_oa = None
            if nat_oa:
                src_oa, dst_oa = f"10.0.{n % 250}.2", f"10.1.{n % 250}.2"
            key = r.randbytes(s.key_len)
            return (SaSpec(spi, suite, esn, tunnel, entry[0], entry[1], src, dst,
                           mask if dst else 0, window, replay_seq, src_oa, dst_oa, key), peer)

        order = list(suites)
        r.shuffle(order)
        for i, suite in enumerate(order):
            tunnel, esn, legacy = bool(i & 1), bool(i & 2), bool(i & 4)
            entry = _ENTRIES[2] if legacy else _ENTRIES[(i >> 3) & 1]
            dst = None if tunnel or r.random() < 0.5 else f"192.0.2.{i % 250 + 1}"
            specs.append(spec(suite, fresh_spi(), tunnel=tunnel, entry=entry, esn=esn, dst=dst,
                              nat_oa=not tunnel and i % 3 == 0))
        # One SPI on one entry, four destination keys: the longest mask must win (semantics §1.6).
        shared = fresh_spi()
        for dst, mask, tunnel in ((None, 0, False), ("10.9.0.0", 0xFFFF0000, False), ("10.9.9.9", _M32, False),
                                  (None, _M32, True)):
            specs.append(spec(r.choice(order), shared, tunnel=tunnel, entry=_ENTRIES[0], esn=r.random() < 0.5,
                              dst=dst, mask=mask))
        return [_Sa(i, sp, peer) for i, (sp, peer) in enumerate(specs)]

    # ---------------------------------------------------------------- packets

    def emit(self, kind: str, p: bytes, origin: Optional[_Origin]) -> None:
        status, sa, seq, nh, authenticated = self.model.decide(p, origin)
        self.packets.append(p)
        self.kinds.append(kind)
        self.expected.append(status)
        self.expected_sa.append(sa)
        self.expected_seq.append(seq)
        self.expected_next_header.append(nh)
        if authenticated and origin is not None:
            hist = origin.sa.history
            hist.append((p, origin))
            if len(hist) > 64:
                del hist[:32]

    def pick_sa(self, k: int = 1) -> _Sa:
        for _ in range(8):
            sa = self.rng.choice(self.sas)
            if not sa.exhausted(k):
                return sa
        live = [sa for sa in self.sas if not sa.exhausted(k)]
        if not live:
            raise ValueError("n: every SA ran out of sequence numbers; ask for fewer packets")
        return self.rng.choice(live)

    def outer_dst(self, sa: _Sa) -> Address:
        """A destination address ``sa``'s key matches (its own for /32 keys, a random one inside a /16)."""
        if sa.key_mask == _M32:
            return sa.key_addr
        if sa.key_mask:
            return sa.key_addr | (self.rng.randrange(1 << 32) & ~sa.key_mask & _M32)
        return f"192.0.2.{self.rng.randrange(200, 255)}"

    def inner(self, sa: _Sa, max_payload: Optional[int] = None) -> bytes:
        spec = sa.spec
        mp = self.max_payload if max_payload is None else max_payload
        if spec.tunnel:
            return _random_inner(self.rng, "10.20.0.2", "10.30.0.9", ipv6_ok=True, max_payload=mp)
        # Transport: the peer's own (pre-NAT) address and ours, which NAT-OA would report.
        return _random_inner(self.rng, spec.nat_oa_src or "10.0.0.2", spec.nat_oa_dst or "192.0.2.1",
                             ipv6_ok=False, max_payload=mp, options_ok=True)

    def build(self, sa: _Sa, seq: int, *, inner: Optional[bytes] = None, next_header: Optional[int] = None,
              extra: bytes = b"", padding: Optional[bytes] = None, pad_len: Optional[int] = None,
              post: Status = Status.OK, udp_checksum: bool = False, dst: Optional[Address] = None,
              dport: Optional[int] = None) -> tuple[bytes, _Origin]:
        """One packet of ``sa`` with sequence number ``seq`` and the origin record the model needs."""
        r = self.rng
        spec = sa.spec
        if inner is None:
            inner = self.inner(sa)
        payload, nh, tos = _split_inner(inner, spec.tunnel)
        if next_header is not None:
            nh = next_header
        esp = sa.sealer.seal(seq, payload + extra, nh, padding=padding, pad_len=pad_len, rng=r)
        if post is Status.OK and spec.tunnel and nh not in (PROTO_IPIP, PROTO_IPV6):
            post = Status.PROTOCOL
        if post is Status.OK and nh == PROTO_NONE:
            post = Status.DUMMY
        # A NAT rebinds the peer's source port; the destination is the receiver's parser entry.
        sport = r.choice((spec.port, r.randrange(1024, 65536)))
        dport = spec.port if dport is None else dport
        dst = self.outer_dst(sa) if dst is None else dst
        if spec.tunnel:
            p = udp_encapsulate(esp, spec.src or sa.peer, dst, sport=sport, dport=dport, framing=spec.framing,
                                udp_checksum=udp_checksum, tos=tos, ip_id=seq & 0xFFFF,
                                ttl=r.choice((64, 63, 50)))
        else:
            ihl = (inner[0] & 15) * 4
            p = _transport_outer(inner[:ihl], esp, sa.peer, dst, sport, dport, spec.framing, udp_checksum)
        return p, _Origin(sa, seq, esp, post, nh)

    def fresh(self, kind: str, **kw: Any) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take(), **kw)
        self.emit(kind, p, origin)

    def one(self) -> None:
        r = self.rng
        kind = r.choices(self.kind_names, cum_weights=self.kind_weights)[0]
        getattr(self, "k_" + kind)(kind)

    # ---------------------------------------------------------------- kinds

    def k_ok(self, kind: str) -> None:
        self.fresh(kind)

    def k_reorder(self, kind: str) -> None:
        k = self.rng.randrange(2, 7)
        sa = self.pick_sa(k)
        group = [self.build(sa, sa.take()) for _ in range(k)]
        self.rng.shuffle(group)
        for p, origin in group:
            self.emit(kind, p, origin)

    def k_jump(self, kind: str) -> None:
        sa = self.pick_sa()
        gap = self.rng.randrange(1, 2 * max(sa.spec.replay_window, 32) + 2)
        if sa.exhausted(gap + 1):
            return self.k_ok(kind)
        sa.next_seq += gap
        p, origin = self.build(sa, sa.take())
        self.emit(kind, p, origin)

    def k_desync(self, kind: str) -> None:
        # The sender goes on through an outage of k * 2**32 + d packets (k = 1 .. 4, so that the
        # seq_hi it reaches is within ESN_RESYNC_LIMIT of any the receiver infers), then a burst
        # long enough to reach the trigger, with other traffic in between.
        esn = [sa for sa in self.sas if sa.spec.esn and not sa.exhausted((5 << 32) + 200)]
        if not esn:
            return self.k_ok(kind)
        r = self.rng
        sa = r.choice(esn)
        sa.next_seq += (r.randrange(1, 5) << 32) + r.randrange(0, 1 << 31)
        for _ in range(ESN_RESYNC_TRIGGER + r.randrange(0, 16)):
            if r.random() < 0.3:
                self.k_ok("ok")
            p, origin = self.build(sa, sa.take(), inner=self.inner(sa, max_payload=200))
            self.emit(kind, p, origin)

    def k_replay(self, kind: str) -> None:
        candidates = [sa for sa in self.sas if sa.history]
        if not candidates:
            return self.k_ok(kind)
        sa = self.rng.choice(candidates)
        p, origin = self.rng.choice(sa.history)  # byte for byte what was accepted before
        self.emit(kind, p, origin)

    def k_old(self, kind: str) -> None:
        sa = self.pick_sa()
        w = max(sa.spec.replay_window, 1)
        seq = sa.window.t - w - self.rng.randrange(0, 3 * w)
        if seq < 1:
            return self.k_ok(kind)
        p, origin = self.build(sa, seq)
        self.emit(kind, p, origin)

    def k_seq_zero(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.window.t & ~_M32 if sa.spec.esn else 0)
        self.emit(kind, p, origin)

    def k_dummy(self, kind: str) -> None:
        sa = self.pick_sa()
        # RFC 4303 §2.6: a dummy packet's payload is random octets the receiver discards.
        junk = self.rng.randbytes(self.rng.randrange(0, 200))
        seq = sa.take()
        esp = sa.sealer.seal(seq, junk, PROTO_NONE, rng=self.rng)
        self._wrap_emit(kind, sa, seq, esp, Status.DUMMY, PROTO_NONE)

    def _wrap_emit(self, kind: str, sa: _Sa, seq: int, esp: bytes, post: Status, nh: int) -> None:
        spec = sa.spec
        p = udp_encapsulate(esp, sa.peer, self.outer_dst(sa), sport=spec.port, dport=spec.port,
                            framing=spec.framing, ip_id=self.rng.getrandbits(16))
        self.emit(kind, p, _Origin(sa, seq, esp, post, nh))

    def k_protocol(self, kind: str) -> None:
        tunnels = [sa for sa in self.sas if sa.spec.tunnel and not sa.exhausted()]
        if not tunnels:
            return self.k_ok(kind)
        sa = self.rng.choice(tunnels)
        p, origin = self.build(sa, sa.take(), next_header=self.rng.choice((PROTO_TCP, PROTO_UDP, PROTO_ICMP,
                                                                             PROTO_ESP, 0, 255)))
        self.emit(kind, p, origin)

    def k_tfc(self, kind: str) -> None:
        tunnels = [sa for sa in self.sas if sa.spec.tunnel and not sa.exhausted()]
        if not tunnels:
            return self.k_ok(kind)
        sa = self.rng.choice(tunnels)
        p, origin = self.build(sa, sa.take(), extra=bytes(self.rng.randrange(1, 300)))
        self.emit(kind, p, origin)

    def _aligned_padding(self, sa: _Sa, payload_len: int, extra_units: int) -> bytes:
        s = sa.suite
        align = s.block_size * 4 // math.gcd(s.block_size, 4)
        n = len(default_padding(payload_len, s.block_size)) + align * extra_units
        while n > 255:
            n -= align
        return bytes(range(1, n + 1))

    def k_long_padding(self, kind: str) -> None:
        sa = self.pick_sa()
        inner = self.inner(sa, max_payload=600)
        payload, _, _ = _split_inner(inner, sa.spec.tunnel)
        pad = self._aligned_padding(sa, len(payload), self.rng.randrange(1, 16))
        p, origin = self.build(sa, sa.take(), inner=inner, padding=pad)
        self.emit(kind, p, origin)

    def k_bad_padding(self, kind: str) -> None:
        sa = self.pick_sa()
        inner = self.inner(sa, max_payload=600)
        payload, _, _ = _split_inner(inner, sa.spec.tunnel)
        pad = bytearray(self._aligned_padding(sa, len(payload), self.rng.randrange(1, 4)))
        i = self.rng.randrange(len(pad))
        pad[i] = (pad[i] + self.rng.randrange(1, 256)) & 0xFF
        p, origin = self.build(sa, sa.take(), inner=inner, padding=bytes(pad), post=Status.MALFORMED)
        self.emit(kind, p, origin)

    def k_bad_pad_len(self, kind: str) -> None:
        sa = self.pick_sa()
        seq = sa.take()
        junk = self.rng.randbytes(self.rng.randrange(0, 40))
        pad = default_padding(len(junk), sa.suite.block_size)
        plain_len = len(junk) + len(pad) + 2
        nh = self.rng.choice((PROTO_IPIP, PROTO_TCP))
        esp = sa.sealer.seal(seq, junk, nh, padding=pad, pad_len=self.rng.randrange(plain_len - 1, 256),
                             rng=self.rng)
        self._wrap_emit(kind, sa, seq, esp, Status.MALFORMED, nh)

    def _flip(self, kind: str, lo: Any, hi: Any) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        ihl = (p[0] & 15) * 4
        base = ihl + 8 + (8 if sa.spec.framing == UdpEncapType.IKE else 0)
        s = sa.suite
        a, b = base + lo(s, len(origin.esp)), base + hi(s, len(origin.esp))
        if b <= a:
            a, b = base + 8, len(p)
        q = bytearray(p)
        q[self.rng.randrange(a, b)] ^= 1 << self.rng.randrange(8)
        self.emit(kind, bytes(q), origin)

    def k_flip_spi(self, kind: str) -> None:
        self._flip(kind, lambda s, n: 0, lambda s, n: 4)

    def k_flip_seq(self, kind: str) -> None:
        self._flip(kind, lambda s, n: 4, lambda s, n: 8)

    def k_flip_iv(self, kind: str) -> None:
        self._flip(kind, lambda s, n: 8, lambda s, n: 8 + s.iv_len)

    def k_flip_ct(self, kind: str) -> None:
        self._flip(kind, lambda s, n: 8 + s.iv_len, lambda s, n: n - s.icv_len)

    def k_flip_icv(self, kind: str) -> None:
        self._flip(kind, lambda s, n: n - s.icv_len, lambda s, n: n)

    def k_flip_outer(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        q = bytearray(p)
        q[self.rng.randrange((p[0] & 15) * 4 + 8)] ^= 1 << self.rng.randrange(8)
        self.emit(kind, bytes(q), origin)

    def k_truncate_frame(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        self.emit(kind, p[: self.rng.randrange(len(p))], origin)

    def k_truncate_esp(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        ihl = (p[0] & 15) * 4
        cut = self.rng.randrange(1, len(p) - ihl - 8 + 1)
        self.emit(kind, _set_lengths(p[: len(p) - cut]), origin)

    def k_ip_len(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        tl = p[2] << 8 | p[3]
        new = self.rng.choice((self.rng.randrange(0, tl), tl + self.rng.randrange(1, 64)))
        q = bytearray(p)
        q[2:4] = struct.pack("!H", min(new, 0xFFFF))
        self.emit(kind, _fix_ip_checksum(q), origin)

    def k_udp_len(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        ihl = (p[0] & 15) * 4
        ulen = p[ihl + 4] << 8 | p[ihl + 5]
        q = bytearray(p)
        q[ihl + 4: ihl + 6] = struct.pack("!H", (ulen + self.rng.choice((-1, 1, -8, 8, 256, -ulen))) & 0xFFFF)
        self.emit(kind, bytes(q), origin)

    def k_link_padding(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        self.emit(kind, p + bytes(self.rng.randrange(1, 46)), origin)

    def k_udp_checksum(self, kind: str) -> None:
        self.fresh(kind, udp_checksum=True)

    def _entry(self) -> tuple[UdpEncapType, int]:
        """A parser entry the SA set creates (an IKE or keepalive packet elsewhere is just NOT_ESP)."""
        return self.rng.choice(self.entries)

    def _udp_to(self, payload: bytes, port: int) -> bytes:
        r = self.rng
        return udp_encapsulate(payload, f"198.51.100.{r.randrange(1, 255)}", f"203.0.113.{r.randrange(1, 255)}",
                               sport=r.choice((500, 4500, r.randrange(1024, 65536))), dport=port,
                               ip_id=r.getrandbits(16))

    def k_ike(self, kind: str) -> None:
        r = self.rng
        framing, port = self._entry()
        # An IKEv2 header (RFC 7296 §3.1): initiator SPI, responder SPI, next payload, version 2.0, ...
        ike = r.randbytes(8) + bytes(8) + bytes((33, 0x20, 34, 0x08)) + r.randbytes(4)
        ike += struct.pack("!I", 28 + (n := r.randrange(0, 300))) + r.randbytes(n)
        if framing == UdpEncapType.OTHER:
            # RFC 3948 §2.2: on the NAT-T port IKE carries the 4-zero-octet non-ESP marker.
            payload = bytes(4) + ike
        elif r.random() < 0.2:
            payload = bytes(8) + r.randbytes(r.randrange(0, 9))  # marker but too short for ESP: IKE
        else:
            payload = b"\x01" + ike[1:]  # plain IKE on the legacy port (first octet non-zero)
        self.emit(kind, self._udp_to(payload, port), None)

    def k_keepalive(self, kind: str) -> None:
        self.emit(kind, self._udp_to(b"\xff", self._entry()[1]), None)

    def k_empty_udp(self, kind: str) -> None:
        self.emit(kind, self._udp_to(b"", self._entry()[1]), None)

    def k_short_esp(self, kind: str) -> None:
        r = self.rng
        n = r.randrange(1, 8)
        data = bytes([r.randrange(1, 255)]) + r.randbytes(n - 1)
        self.emit(kind, self._udp_to(data, self._entry()[1]), None)

    def k_fragment(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        ihl = (p[0] & 15) * 4
        body = p[ihl:]
        if len(body) < 16:
            return self.emit(kind, p, origin)
        cut = self.rng.randrange(1, len(body) // 8) * 8
        hdr = bytearray(p[:ihl])
        first, second = bytearray(hdr), bytearray(hdr)
        first[2:4] = struct.pack("!H", ihl + cut)
        first[6:8] = struct.pack("!H", 0x2000)                      # MF, offset 0
        second[2:4] = struct.pack("!H", ihl + len(body) - cut)
        second[6:8] = struct.pack("!H", cut // 8)                   # last fragment
        self.emit(kind, _fix_ip_checksum(first) + body[:cut], origin)
        self.emit(kind, _fix_ip_checksum(second) + body[cut:], origin)

    def k_non_udp(self, kind: str) -> None:
        r = self.rng
        proto = r.choice((PROTO_TCP, PROTO_ICMP, 47, 51, 132))
        src, dst = f"198.51.100.{r.randrange(1, 255)}", f"203.0.113.{r.randrange(1, 255)}"
        if proto == PROTO_TCP:
            p = tcp_segment(src, dst, r.randrange(1024, 65536), 4500, r.randbytes(r.randrange(0, 100)))
        elif proto == PROTO_ICMP:
            p = icmp_echo(src, dst, ident=r.getrandbits(16), payload=r.randrange(0, 100))
        else:
            p = ipv4(src, dst, proto, r.randbytes(r.randrange(0, 100)))
        self.emit(kind, p, None)

    def k_esp_in_ip(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take())
        ihl = (p[0] & 15) * 4
        q = bytearray(p[:ihl])
        q[9] = PROTO_ESP
        q[2:4] = struct.pack("!H", ihl + len(origin.esp))
        self.emit(kind, _fix_ip_checksum(q) + origin.esp, origin)

    def k_wrong_port(self, kind: str) -> None:
        sa = self.pick_sa()
        p, origin = self.build(sa, sa.take(), dport=self.rng.choice(_UNUSED_PORTS))
        self.emit(kind, p, origin)

    def k_unknown_spi(self, kind: str) -> None:
        sa = self.pick_sa()
        seq = sa.take()
        spi = self.rng.randrange(1, 1 << 32)
        esp = EspSealer(sa.suite, sa.spec.key, spi, esn=sa.spec.esn).seal(seq, self.rng.randbytes(40), PROTO_IPIP,
                                                                            rng=self.rng)
        self._wrap_emit(kind, sa, seq, esp, Status.OK, PROTO_IPIP)

    def k_wrong_dst(self, kind: str) -> None:
        sa = self.pick_sa()
        dst = self.rng.choice(("192.0.2.77", "10.9.9.8", "10.10.9.9", "203.0.113.251", "172.16.0.1"))
        p, origin = self.build(sa, sa.take(), dst=dst)
        self.emit(kind, p, origin)

    def k_not_ipv4(self, kind: str) -> None:
        r = self.rng
        c = r.randrange(4)
        if c == 0:
            p = icmp6_echo("2001:db8::1", "2001:db8::2", payload=r.randrange(0, 64))
        elif c == 1:
            p = r.randbytes(r.randrange(0, 20))              # a runt
        elif c == 2:
            p = bytes([r.choice((0x00, 0x50, 0x60, 0xF5))]) + r.randbytes(r.randrange(19, 80))
        else:
            p = b""
        self.emit(kind, p, None)


def _fix_ip_checksum(h: Union[bytes, bytearray]) -> bytes:
    h = bytearray(h)
    ihl = (h[0] & 15) * 4
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", internet_checksum(bytes(h[:ihl])))
    return bytes(h)


def _set_lengths(p: bytes) -> bytes:
    """Make the IPv4 total length and UDP length match a packet that was cut short."""
    q = bytearray(p)
    ihl = (q[0] & 15) * 4
    q[2:4] = struct.pack("!H", len(q))
    q[ihl + 4: ihl + 6] = struct.pack("!H", len(q) - ihl)
    return _fix_ip_checksum(q)


def mixed_traffic(seed: int, n: int, *, suites: Optional[Iterable[str]] = None,
                  kinds: Optional[dict[str, float]] = None, max_payload: int = 1400) -> MixedTraffic:
    """A deterministic mixed batch of ``n`` received packets and the inbound SAs it is meant for.

    The same arguments give the same SAs, packets and expectations, CBC IVs included (they are
    drawn from the generator seeded by ``seed``, not from a system random source).

    One inbound SA per suite (default: every suite natt has; strongSwan keywords, where an ``-esn``
    suffix is ignored because ESN is cycled through like the rest; their order counts, so pass a
    list rather than a set to rebuild a batch in another process). Suites are shuffled, then mode,
    parser entry (RFC 3948 framing on UDP 4500 and 4501, legacy framing on 500) and ESN cycle over
    them, as do replay windows (0 included) and starting sequence numbers (some right below 2**32,
    so ESN inference crosses the wrap): with the default suites every combination appears. Some
    transport SAs have a destination key or NAT-OA addresses; four more share one SPI on port 4500
    with different destination keys (longest match wins). An entry exists only if an SA uses it
    (UDP 500 from 5 suites on, UDP 4501 from 9), and IKE, keepalive, empty and short non-ESP
    packets go only to entries that exist. Packets are drawn by the weights in ``kinds`` (default
    :data:`MIXED_KINDS`); valid ESP is sealed with :class:`EspSealer`.

    Install with :meth:`MixedTraffic.install` on an empty Offload, then ``decap`` the packets in
    order (any batch split or thread count): the ``expected*`` lists are what docs/semantics.md §1
    requires.
    """
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    names = sorted(SUITES) if suites is None else [parse_suite(x)[0].name for x in suites]
    if not names:
        raise ValueError("suites: at least one suite is needed")
    weights = dict(MIXED_KINDS if kinds is None else kinds)
    unknown = set(weights) - set(MIXED_KINDS)
    if unknown:
        raise ValueError(f"kinds: unknown packet kinds {sorted(unknown)}; known: {', '.join(MIXED_KINDS)}")
    if not all(w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError("kinds: weights must be non-negative, and at least one positive")
    _check_max_payload(max_payload)
    g = _Generator(seed, names, weights, max_payload)
    while len(g.packets) < n:
        g.one()
    return MixedTraffic(seed, [sa.spec for sa in g.sas], g.packets[:n], g.kinds[:n], g.expected[:n],
                        g.expected_sa[:n], g.expected_seq[:n], g.expected_next_header[:n])
