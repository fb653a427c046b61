"""Hand-built packets for the data-path tests, written independently of natt's data paths.

Everything here is an oracle: IPv4/IPv6/UDP/TCP builders with from-scratch checksums,
and an ESP sealer/opener straight on ``cryptography`` (RFC 4303 framing; RFC 4106 GCM,
RFC 4543 GMAC, RFC 7634 ChaCha20-Poly1305, RFC 3602 / 2451 CBC, RFC 2403/2404/4868 HMAC).
Only natt's suite *table* (sizes) is shared; no natt code computes what a test expects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Optional

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from natt._suites import Cipher, Mac, Suite

__all__ = [
    "checksum", "ipv4", "ipv6", "udp", "tcp", "l4_checksum", "outer",
    "trailer", "esp_seal", "esp_open", "key_for", "addr",
]

UDP, TCP, IPIP, IPV6, NO_NEXT = 17, 6, 4, 41, 59


def addr(dotted: str) -> int:
    """Host-order int of a dotted quad."""
    return int.from_bytes(bytes(int(x) for x in dotted.split(".")), "big")


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of ``data``, computed from scratch."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(payload: bytes, *, proto: int = TCP, src: int = addr("10.0.0.1"), dst: int = addr("10.0.0.2"),
         tos: int = 0, ident: int = 0x1234, flags: int = 0, frag: int = 0, ttl: int = 64,
         options: bytes = b"", total_length: Optional[int] = None, ihl: Optional[int] = None,
         version: int = 4) -> bytes:
    """IPv4 header (with ``options``, a multiple of 4 octets) ‖ ``payload``; checksum correct."""
    hlen = 20 + len(options)
    h = bytearray(struct.pack("!BBHHHBBHII", version << 4 | (ihl if ihl is not None else hlen // 4), tos,
                              hlen + len(payload) if total_length is None else total_length, ident,
                              flags << 13 | frag, ttl, proto, 0, src, dst) + options)
    h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h) + payload


def ipv6(payload: bytes, *, nh: int = TCP, traffic_class: int = 0, payload_length: Optional[int] = None) -> bytes:
    """IPv6 header (2001:db8::1 → 2001:db8::2) ‖ ``payload``."""
    first = 6 << 28 | traffic_class << 20 | 0x12345
    plen = len(payload) if payload_length is None else payload_length
    return (struct.pack("!IHBB", first, plen, nh, 64) + bytes.fromhex("20010db8" + "0" * 23 + "1")
            + bytes.fromhex("20010db8" + "0" * 23 + "2") + payload)


def l4_checksum(src: int, dst: int, proto: int, segment: bytes) -> int:
    """TCP/UDP checksum over the IPv4 pseudo-header and ``segment`` (its checksum field zeroed)."""
    off = 16 if proto == TCP else 6
    seg = segment[:off] + b"\0\0" + segment[off + 2:]
    pseudo = struct.pack("!IIBBH", src, dst, 0, proto, len(seg))
    c = checksum(pseudo + seg)
    return 0xFFFF if proto == UDP and c == 0 else c   # RFC 768: a computed 0 is sent as all ones


def udp(data: bytes, *, sport: int = 1234, dport: int = 5678, src: int = 0, dst: int = 0,
        with_checksum: bool = True) -> bytes:
    """A UDP datagram; its checksum is over the pseudo-header ``src``/``dst`` (or 0)."""
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    if not with_checksum:
        return seg
    return seg[:6] + l4_checksum(src, dst, UDP, seg).to_bytes(2, "big") + seg[8:]


def tcp(data: bytes, *, src: int, dst: int, sport: int = 40000, dport: int = 443) -> bytes:
    """A 20-octet-header TCP segment with its checksum over the pseudo-header ``src``/``dst``."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 2, 5 << 4, 0x18, 1000, 0, 0) + data
    return seg[:16] + l4_checksum(src, dst, TCP, seg).to_bytes(2, "big") + seg[18:]


def outer(esp: bytes, *, src: int = addr("198.51.100.2"), dst: int = addr("203.0.113.5"),
          sport: int = 4500, dport: int = 4500, marker: bytes = b"", udp_length: Optional[int] = None,
          **ip_kw: object) -> bytes:
    """IPv4 ‖ UDP(sport → dport, checksum 0) ‖ marker ‖ esp: what arrives from a NAT-T peer."""
    body = marker + esp
    u = struct.pack("!HHHH", sport, dport, 8 + len(body) if udp_length is None else udp_length, 0) + body
    return ipv4(u, proto=UDP, src=src, dst=dst, **ip_kw)  # type: ignore[arg-type]


def trailer(payload: bytes, nh: int, suite: Suite, *, pad_len: Optional[int] = None,
            pad: Optional[bytes] = None) -> bytes:
    """payload ‖ padding ‖ pad length ‖ next header, default RFC 4303 §2.4 padding unless overridden."""
    align = max(4, suite.block_size)
    if pad is None:
        n = -(len(payload) + 2) % align if pad_len is None else pad_len
        pad = bytes(range(1, n + 1))
    return payload + pad + bytes([len(pad) if pad_len is None else pad_len, nh])


def key_for(suite: Suite, seed: int = 1) -> bytes:
    """A deterministic key of the right length (encryption key ‖ salt ‖ integrity key)."""
    return hashlib.shake_256(bytes([seed]) + suite.name.encode()).digest(suite.key_len)


def _split(suite: Suite, key: bytes) -> tuple[bytes, bytes, bytes]:
    e, s = suite.enc_key_len, suite.salt_len
    return key[:e], key[e:e + s], key[e + s:]


_HASH = {Mac.HMAC_MD5_96: hashlib.md5, Mac.HMAC_SHA1_96: hashlib.sha1, Mac.HMAC_SHA256_128: hashlib.sha256,
         Mac.HMAC_SHA384_192: hashlib.sha384, Mac.HMAC_SHA512_256: hashlib.sha512}


def esp_seal(suite: Suite, key: bytes, spi: int, seq: int, plain: bytes, *, esn: bool = False,
             iv: Optional[bytes] = None) -> bytes:
    """ESP (SPI … ICV) carrying ``plain`` (already padded: see :func:`trailer`).

    ``seq`` is the full number; only its low 32 bits go on the wire, the high 32 bits
    enter the ICV/AAD when ``esn`` (RFC 4303 §2.2.1, RFC 4106 §5).
    """
    enc, salt, auth = _split(suite, key)
    if iv is None:
        iv = seq.to_bytes(8, "big") if suite.aead else os.urandom(suite.iv_len)
    hdr = struct.pack("!II", spi, seq & 0xFFFFFFFF)
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    aad = hdr[:4] + seq_hi + hdr[4:]
    c = suite.cipher
    if c is Cipher.AES_GCM:
        e = _Cipher(algorithms.AES(enc), modes.GCM(salt + iv)).encryptor()
        e.authenticate_additional_data(aad)
        body = e.update(plain) + e.finalize()
        return hdr + iv + body + e.tag[:suite.icv_len]
    if c is Cipher.AES_GMAC:
        e = _Cipher(algorithms.AES(enc), modes.GCM(salt + iv)).encryptor()
        e.authenticate_additional_data(aad + iv + plain)
        e.finalize()
        return hdr + iv + plain + e.tag
    if c is Cipher.CHACHA20_POLY1305:
        return hdr + iv + ChaCha20Poly1305(enc).encrypt(salt + iv, plain, aad)
    if c is Cipher.AES_CBC:
        e = _Cipher(algorithms.AES(enc), modes.CBC(iv)).encryptor()
        body = e.update(plain) + e.finalize()
    elif c is Cipher.TRIPLE_DES_CBC:
        e = _Cipher(TripleDES(enc), modes.CBC(iv)).encryptor()
        body = e.update(plain) + e.finalize()
    else:
        body = plain
    covered = hdr + iv + body
    if suite.mac is Mac.NONE:
        return covered
    return covered + hmac.new(auth, covered + seq_hi, _HASH[suite.mac]).digest()[:suite.icv_len]


def esp_open(suite: Suite, key: bytes, esp: bytes, *, seq_hi: Optional[int] = None) -> bytes:
    """Verify and decrypt an ESP packet; returns the padded plaintext, raises on a bad ICV/tag.

    ``seq_hi`` is the ESN high half (None: no ESN).
    """
    enc, salt, auth = _split(suite, key)
    hi = b"" if seq_hi is None else seq_hi.to_bytes(4, "big")
    iv = esp[8:8 + suite.iv_len]
    body = esp[8 + suite.iv_len:len(esp) - suite.icv_len]
    icv = esp[len(esp) - suite.icv_len:]
    aad = esp[:4] + hi + esp[4:8]
    c = suite.cipher
    if c in (Cipher.AES_GCM, Cipher.AES_GMAC):
        d = _Cipher(algorithms.AES(enc), modes.GCM(salt + iv, icv, min_tag_length=len(icv))).decryptor()
        if c is Cipher.AES_GMAC:
            d.authenticate_additional_data(aad + iv + body)
            d.finalize()
            return body
        d.authenticate_additional_data(aad)
        plain = d.update(body)
        d.finalize()
        return plain
    if c is Cipher.CHACHA20_POLY1305:
        return ChaCha20Poly1305(enc).decrypt(salt + iv, body + icv, aad)
    if suite.mac is not Mac.NONE:
        want = hmac.new(auth, esp[:len(esp) - suite.icv_len] + hi, _HASH[suite.mac]).digest()[:suite.icv_len]
        if want != icv:
            raise ValueError("ICV mismatch")
    if c is Cipher.AES_CBC:
        d = _Cipher(algorithms.AES(enc), modes.CBC(iv)).decryptor()
        return d.update(body) + d.finalize()
    if c is Cipher.TRIPLE_DES_CBC:
        d = _Cipher(TripleDES(enc), modes.CBC(iv)).decryptor()
        return d.update(body) + d.finalize()
    return body


def corrupt_pcap_record(path, index: int) -> int:
    """Make record ``index`` (negative: from the end) of a little-endian classic pcap file corrupt,
    not short: its captured length becomes larger than any reader accepts. Returns the record's
    file offset (where a reader reports the corruption)."""
    data = bytearray(open(path, "rb").read())
    assert struct.unpack_from("<I", data, 0)[0] in (0xA1B2C3D4, 0xA1B23C4D), "a little-endian classic pcap"
    offsets, pos = [], 24
    while pos + 16 <= len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    at = offsets[index]
    struct.pack_into("<I", data, at + 8, 0x7FFFFFFF)
    open(path, "wb").write(bytes(data))
    return at
