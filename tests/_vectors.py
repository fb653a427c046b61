"""Load the published and derived ESP test vectors kept as JSON in ``tests/vectors/``.

The JSON files are generated from ``spec/test-vectors.md`` by ``tests/vectors/_extract.py``,
which re-checks every vector with ``cryptography`` before writing it. Each record carries its
citation (document, section, case) and whether it is *published* or *derived*; each file's
``source`` block keeps the spec's transcription note verbatim.

Also here: the few packet-building helpers the vector tests need (IPv4/UDP wrapping, the
IPv4 header checksum), written independently of natt so that they can serve as an oracle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import natt

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"

#: The ESP vector files, in the order the spec lists them.
ESP_FILES = ("rfc3602_esp.json", "gcm_esp.json", "rfc7634_chacha20poly1305.json", "derived_hmac.json")
FRAMING_FILE = "derived_framing.json"


@dataclasses.dataclass(frozen=True)
class EspVector:
    """One complete ESP packet (SPI .. ICV) with the SA it belongs to and its plaintext."""

    name: str
    citation: str
    provenance: str                    # "published" or "derived"
    conf_algo: natt.ConfAlgo
    integrity_algo: natt.IntegrityAlgo
    icv_len: int
    key: bytes                         # key_mat: confidentiality key (+ salt), then integrity key
    spi: int
    seq: int                           # full sequence number (64-bit when esn)
    esn: bool
    iv: bytes
    esp: bytes                         # as on the wire, from the SPI to the end of the ICV
    plaintext: bytes                   # payload ‖ padding ‖ pad length ‖ next header
    payload: bytes
    pad_len: int
    next_header: int
    mode: Optional[str]                # "transport", "tunnel", or None (the source does not say)
    notes: tuple[str, ...] = ()
    ip_header_esp: Optional[bytes] = None       # the published outer header of the ESP packet
    ip_header_original: Optional[bytes] = None  # the published header before ESP was applied

    @property
    def conf_key_len(self) -> int:
        """``AlgoInfo.key_len`` of the confidentiality algorithm: the whole key for AEADs."""
        return len(self.key) - self.integ_key_len

    @property
    def integ_key_len(self) -> int:
        """``AlgoInfo.key_len`` of the integrity algorithm (HMAC key; 0 for AEAD/none)."""
        return {natt.IntegrityAlgo.NONE: 0, natt.IntegrityAlgo.SHA: 20,
                natt.IntegrityAlgo.SHA_256: 32}[self.integrity_algo]

    def __repr__(self) -> str:  # keep pytest ids and failure output short
        return f"EspVector({self.name})"


@dataclasses.dataclass(frozen=True)
class FramingFixture:
    """A whole IPv4/UDP datagram and the status natt must give it on the named parser entry."""

    name: str
    citation: str
    description: str
    packet: bytes
    entry_type: natt.UdpEncapType
    entry_port: int
    expected_status: natt.Status
    esp_vector: Optional[str]          # the ESP vector it carries, when it carries one


def _load(name: str) -> dict[str, Any]:
    with open(VECTOR_DIR / name, encoding="utf-8") as f:
        return json.load(f)


def _hex(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else bytes.fromhex(value)


def source(name: str) -> dict[str, str]:
    """The ``source`` block (citation and transcription note) of one vector file."""
    return _load(name)["source"]


def esp_vectors() -> list[EspVector]:
    """Every ESP vector of every file, published ones first."""
    out = []
    for name in ESP_FILES:
        for v in _load(name)["vectors"]:
            out.append(EspVector(
                name=v["name"], citation=v["citation"], provenance=v["provenance"],
                conf_algo=natt.ConfAlgo[v["conf_algo"]],
                integrity_algo=natt.IntegrityAlgo[v["integrity_algo"]], icv_len=v["icv_len"],
                key=bytes.fromhex(v["key"]), spi=v["spi"], seq=v["seq"], esn=v["esn"],
                iv=bytes.fromhex(v["iv"]), esp=bytes.fromhex(v["esp"]),
                plaintext=bytes.fromhex(v["plaintext"]), payload=bytes.fromhex(v["payload"]),
                pad_len=v["pad_len"], next_header=v["next_header"], mode=v["mode"],
                notes=tuple(v.get("notes", ())),
                ip_header_esp=_hex(v.get("ip_header_esp")),
                ip_header_original=_hex(v.get("ip_header_original")),
            ))
    return out


def esp_vector(name: str) -> EspVector:
    """The ESP vector called ``name`` (e.g. ``"gcm-b"``)."""
    for v in esp_vectors():
        if v.name == name:
            return v
    raise KeyError(name)


def framing_fixtures() -> list[FramingFixture]:
    """The derived UDP framing fixtures (spec test-vectors.md §6)."""
    return [FramingFixture(
        name=f["name"], citation=f["citation"], description=f["description"],
        packet=bytes.fromhex(f["packet"]), entry_type=natt.UdpEncapType[f["entry_type"]],
        entry_port=f["entry_port"], expected_status=natt.Status[f["expected_status"]],
        esp_vector=f["esp_vector"]) for f in _load(FRAMING_FILE)["fixtures"]]


# ---------------------------------------------------------------------------------------------
# Packet helpers (independent of natt: they are the oracle the tests compare against)

def ipv4_checksum(header: bytes) -> int:
    """RFC 791 header checksum of ``header`` with its checksum field taken as zero."""
    h = bytearray(header)
    h[10:12] = b"\0\0"
    total = sum(int.from_bytes(h[i:i + 2], "big") for i in range(0, len(h), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(src: int, dst: int, protocol: int, payload_len: int, *,
                ident: int = 0x1234, ttl: int = 64, tos: int = 0) -> bytes:
    """A 20-octet IPv4 header (DF clear, no options) with a correct checksum."""
    h = bytearray(20)
    h[0] = 0x45
    h[1] = tos
    h[2:4] = (20 + payload_len).to_bytes(2, "big")
    h[4:6] = ident.to_bytes(2, "big")
    h[8] = ttl
    h[9] = protocol
    h[12:16] = src.to_bytes(4, "big")
    h[16:20] = dst.to_bytes(4, "big")
    h[10:12] = ipv4_checksum(h).to_bytes(2, "big")
    return bytes(h)


def rebuild_header(header: bytes, protocol: int, payload_len: int) -> bytes:
    """``header`` with a new protocol, total length and checksum (what transport decap must emit)."""
    h = bytearray(header)
    h[9] = protocol
    h[2:4] = (len(h) + payload_len).to_bytes(2, "big")
    h[10:12] = ipv4_checksum(h).to_bytes(2, "big")
    return bytes(h)


def udp_wrap(esp: bytes, *, src: int, dst: int, sport: int = 4500, dport: int = 4500,
             marker: bytes = b"", header: Optional[bytes] = None) -> bytes:
    """IPv4 ‖ UDP(sport → dport, checksum 0, RFC 3948 §2.1) ‖ marker ‖ esp.

    ``header``, when given, is a 20-octet IPv4 header to reuse (ID, TTL, addresses…): its
    protocol, total length and checksum are replaced.
    """
    udp_payload = marker + esp
    udp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
           + (8 + len(udp_payload)).to_bytes(2, "big") + b"\0\0")
    if header is None:
        ip = ipv4_header(src, dst, 17, 8 + len(udp_payload))
    else:
        ip = rebuild_header(header, 17, 8 + len(udp_payload))
    return ip + udp + udp_payload
