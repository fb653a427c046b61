"""Structure-aware mutations of UDP-encapsulated ESP packets, shared by the fuzzers.

Used by ``tests/test_fuzz.py`` (hypothesis drives the choices) and by
``fuzz/run_fuzz.py`` (a seeded ``random.Random`` drives them), so that both
explore the same space:

* :func:`build_corpus` makes valid packets for every suite, both modes, both
  framings, with and without ESN (ESN cases straddle the 2**32 boundary so that
  ``seq_hi`` is not zero), by running ``Offload.encap`` on outbound SAs.
* :data:`MUTATIONS` maps a name to ``f(case, packet, a, b) -> packet``: two
  integers parametrise every mutation, so a fuzzer only has to draw a name and
  two numbers. Mutations know the packet layout (IPv4 header, UDP header,
  non-IKE marker, ESP header, IV, trailer, ICV) and aim at the length fields
  and decision points of docs/semantics.md §1.
* :func:`check_result` states what must hold for *any* input whatever its
  status (docs/semantics.md §1 "Outputs"); :func:`compare_results` compares
  two backends packet by packet.

Nothing here knows the answer a backend should give for a mutated packet
(that would be a third implementation); the fuzzers check invariants and
agreement between the two data paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

import natt
from natt import Status, UdpEncapType
from natt._suites import Cipher, Mac, parse_suite
from natt.traffic import internet_checksum

__all__ = ["Case", "build_corpus", "install", "MUTATIONS", "mutate", "random_mutations",
           "layout_batch", "check_result", "compare_results"]

PORT_OTHER = 4500
PORT_IKE = 4501           # the legacy framing on its own port (semantics §5: one type per port)
TUNNEL_SRC, TUNNEL_DST = "198.51.100.2", "203.0.113.5"
INNER_SRC, INNER_DST = 0x0A010002, 0x0A020007      # 10.1.0.2 -> 10.2.0.7
ESN_START = 2**32 - 3     # outbound replay_oseq of ESN cases: packets 2**32-2, 2**32-1, 2**32, ...

_HASH = {Mac.HMAC_MD5_96: hashlib.md5, Mac.HMAC_SHA1_96: hashlib.sha1, Mac.HMAC_SHA256_128: hashlib.sha256,
         Mac.HMAC_SHA384_192: hashlib.sha384, Mac.HMAC_SHA512_256: hashlib.sha512}


@dataclasses.dataclass
class Case:
    """One inbound SA and valid packets for it (sequence numbers increasing, none replayed)."""

    name: str
    suite: str
    tunnel: bool
    framing: UdpEncapType
    esn: bool
    spi: int
    key: bytes
    packets: list = dataclasses.field(default_factory=list)   # wire packets (outer IPv4 ... ESP)
    inners: list = dataclasses.field(default_factory=list)    # what decap must give back for each

    @property
    def port(self) -> int:
        return PORT_IKE if self.framing is UdpEncapType.IKE else PORT_OTHER

    @property
    def replay_seq(self) -> int:
        return ESN_START - 1 if self.esn else 0

    def esp_offset(self, p: bytes) -> int:
        """Offset of the ESP header in an unmutated packet of this case."""
        return ((p[0] & 15) * 4 if p else 20) + 8 + (8 if self.framing is UdpEncapType.IKE else 0)


# --------------------------------------------------------------------------- valid packets

def ipv4(protocol: int, payload: bytes, *, src: int = INNER_SRC, dst: int = INNER_DST, ident: int = 1) -> bytes:
    h = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, protocol, 0, src, dst)
    return h[:10] + struct.pack("!H", internet_checksum(h)) + h[12:] + payload


def inner_packet(rng: random.Random, tunnel: bool) -> bytes:
    """A plausible inner datagram: UDP or TCP over IPv4, or (tunnel mode) an IPv6 packet."""
    n = rng.choice([0, 1, 3, 15, 16, 17, 64, 200, 1000, 1400])
    body = bytes(rng.getrandbits(8) for _ in range(n))
    kind = rng.randrange(3 if tunnel else 2)
    if kind == 0:
        return ipv4(17, struct.pack("!HHHH", 1024 + n, 53, 8 + n, 0) + body, ident=n)
    if kind == 1:
        return ipv4(6, struct.pack("!HHIIBBHHH", 40000, 443, n, 0, 0x50, 0x18, 512, 0, 0) + body, ident=n)
    return struct.pack("!IHBB", 0x60000000, len(body) + 8, 17, 64) + bytes(range(32)) + \
        struct.pack("!HHHH", 7, 9, 8 + len(body), 0) + body


def build_corpus(seed: int = 0, packets_per_case: int = 4, backend: str = "reference",
                 suites: Optional[Sequence[str]] = None) -> list[Case]:
    """Valid packets for every suite x {tunnel/OTHER, transport/IKE} x ESN on/off (alternating).

    Packets come from ``Offload.encap`` of the given backend; keys are derived
    from ``seed`` so that a finding can be rebuilt from the seed alone.
    """
    rng = random.Random(seed)
    cases: list[Case] = []
    names = list(suites) if suites is not None else natt.suite_names()
    with natt.Offload(backend=backend) as nic:
        for i, suite in enumerate(names):
            s, _ = parse_suite(suite)
            for variant in range(2):
                tunnel = variant == 0
                framing = UdpEncapType.OTHER if variant == 0 else UdpEncapType.IKE
                esn = (i + variant) % 2 == 0
                # SPIs start 0x1001: never IKE or a keepalive, and no single bit flip makes them 0 (IKE).
                spi = 0x10010000 + len(cases) * 0x101
                key = bytes(rng.getrandbits(8) for _ in range(s.key_len))
                case = Case(f"{suite}/{'tunnel' if tunnel else 'transport'}/{framing.name}"
                            f"{'/esn' if esn else ''}", suite, tunnel, framing, esn, spi, key)
                out = nic.add_sa(spi, key, suite, "out", mode="tunnel" if tunnel else "transport",
                                 src=TUNNEL_SRC, dst=TUNNEL_DST, encap=framing,
                                 sport=PORT_OTHER, dport=case.port, esn=esn,
                                 replay_oseq=ESN_START if esn else 0)
                inners = [inner_packet(rng, tunnel) for _ in range(packets_per_case)]
                res = nic.encap(inners, out)
                if res.counts() != {Status.OK: len(inners)}:
                    raise RuntimeError(f"{case.name}: encap of valid packets gave {res.counts()}")
                case.packets, case.inners = list(res), inners
                nic.delete_sa(out)
                cases.append(case)
    return cases


def install(nic: natt.Offload, case: Case, replay_window: int = 64, any_dst: bool = False) -> int:
    """Install the inbound SA of ``case`` on ``nic``; returns its handle.

    A transport SA accepts only INNER_DST as outer destination unless ``any_dst``.
    """
    kw: dict[str, Any] = dict(src=TUNNEL_SRC, dst=TUNNEL_DST) if case.tunnel else \
        dict(dst=None if any_dst else INNER_DST)
    return nic.add_sa(case.spi, case.key, case.suite, "in", mode="tunnel" if case.tunnel else "transport",
                      encap=case.framing, port=case.port, esn=case.esn,
                      replay_window=replay_window if not case.esn else max(replay_window, 64),
                      replay_seq=case.replay_seq, **kw)


def expected_output(case: Case, p: bytes, inner: bytes) -> bytes:
    """What decap gives for an unmutated (or only link-padded / option-extended) packet."""
    if case.tunnel:
        return inner
    ihl = (p[0] & 15) * 4
    payload = inner[(inner[0] & 15) * 4:]
    h = bytearray(p[:ihl])
    struct.pack_into("!H", h, 2, ihl + len(payload))
    h[9] = inner[9]
    h[10:12] = b"\0\0"
    struct.pack_into("!H", h, 10, internet_checksum(bytes(h)))
    return bytes(h) + payload


# --------------------------------------------------------------------------- mutations
# Every mutation takes two integers (a, b) and interprets them itself, so that hypothesis
# and the random fuzzer share one description. Lengths are fixed up only where the name says so.

def _put16(p: bytes, off: int, v: int) -> bytes:
    if off + 2 > len(p):
        return p
    return p[:off] + struct.pack("!H", v & 0xFFFF) + p[off + 2:]


def _ihl(p: bytes) -> int:
    return (p[0] & 15) * 4 if p else 0


def _fix_lengths(p: bytes) -> bytes:
    """Make IP total length and UDP length agree with the buffer (a well-formed frame again)."""
    ihl = _ihl(p)
    if len(p) < ihl + 8 or ihl < 20:
        return p
    return _put16(_put16(p, 2, len(p)), ihl + 4, len(p) - ihl)


def m_truncate(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Cut the buffer (lengths in the headers left as they were)."""
    return p[: a % (len(p) + 1)]


def m_truncate_fixed(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Cut the packet and fix IP and UDP lengths: a short but well-framed ESP payload."""
    base = _ihl(p) + 8
    return _fix_lengths(p[: base + a % max(1, len(p) - base + 1)])


def m_link_padding(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Octets past the IP total length (Ethernet minimum-frame padding): must be ignored."""
    return p + bytes([b & 0xFF]) * (a % 64)


def m_flip(case: Case, p: bytes, a: int, b: int) -> bytes:
    if not p:
        return p
    i = a % len(p)
    return p[:i] + bytes([p[i] ^ (1 << (b % 8))]) + p[i + 1:]


def m_flip_esp(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Flip a bit inside ESP (SPI, sequence number, IV, ciphertext, trailer or ICV)."""
    off = case.esp_offset(p)
    if len(p) <= off:
        return m_flip(case, p, a, b)
    i = off + a % (len(p) - off)
    return p[:i] + bytes([p[i] ^ (1 << (b % 8))]) + p[i + 1:]


def m_set_byte(case: Case, p: bytes, a: int, b: int) -> bytes:
    if not p:
        return p
    i = a % len(p)
    return p[:i] + bytes([b & 0xFF]) + p[i + 1:]


_LENGTH_VALUES = (0, 1, 7, 8, 19, 20, 21, 27, 28, 29, 36, 0x7FFF, 0x8000, 0xFFFF)


def _length_value(p: bytes, a: int, b: int, base: int) -> int:
    """A length near the true one, a boundary value, or anything (chosen by ``b``)."""
    choice = b % 3
    if choice == 0:
        return (base + (a % 65) - 32) & 0xFFFF
    if choice == 1:
        return _LENGTH_VALUES[a % len(_LENGTH_VALUES)]
    return a & 0xFFFF


def m_ip_total_length(case: Case, p: bytes, a: int, b: int) -> bytes:
    return _put16(p, 2, _length_value(p, a, b, len(p)))


def m_ihl(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Set the IHL nibble to anything 0..15 without moving any octet."""
    return bytes([(p[0] & 0xF0) | (a % 16)]) + p[1:] if p else p


def m_ip_options(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Insert 1..10 words of IPv4 options (IHL 6..15) and fix the lengths: still a valid packet."""
    if len(p) < 20:
        return p
    words = 1 + a % (15 - _ihl(p) // 4) if _ihl(p) < 60 else 0
    if not words or _ihl(p) < 20:
        return p
    opts = bytes([0x01] * (4 * words - 1) + [0x00]) if b % 2 else bytes((b + k) & 0xFF for k in range(4 * words))
    ihl = _ihl(p)
    q = bytes([(p[0] & 0xF0) | (ihl // 4 + words)]) + p[1:ihl] + opts + p[ihl:]
    return _put16(q, 2, len(q))


def m_udp_length(case: Case, p: bytes, a: int, b: int) -> bytes:
    ihl = _ihl(p)
    return _put16(p, ihl + 4, _length_value(p, a, b, len(p) - ihl))


def m_fragment(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Set MF and/or a fragment offset (b chooses), keeping DF/reserved as they were."""
    if len(p) < 8:
        return p
    flags = struct.unpack("!H", p[6:8])[0] & 0xC000
    mf = 0x2000 if b % 2 or a % 0x2000 == 0 else 0
    return _put16(p, 6, flags | mf | (a % 0x2000))


def m_df_reserved(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Toggle DF and the reserved flag: ignored by decap (semantics §1.3)."""
    if len(p) < 8:
        return p
    return _put16(p, 6, (struct.unpack("!H", p[6:8])[0] ^ ((a % 4) << 14)) & ~0x3FFF & 0xFFFF)


def m_protocol(case: Case, p: bytes, a: int, b: int) -> bytes:
    return p[:9] + bytes([a & 0xFF]) + p[10:] if len(p) >= 10 else p


def m_version(case: Case, p: bytes, a: int, b: int) -> bytes:
    return bytes([((a % 16) << 4) | (p[0] & 15)]) + p[1:] if p else p


def m_udp_port(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Change the destination port: another entry's port (framing confusion) or anything."""
    port = (PORT_OTHER, PORT_IKE, 500, 0, 65535)[a % 5] if b % 2 else a & 0xFFFF
    return _put16(p, _ihl(p) + 2, port)


_PAYLOADS: tuple[Callable[[bytes, int], bytes], ...] = (
    lambda esp, b: b"",
    lambda esp, b: b"\xff",                               # RFC 3948 §2.3 keepalive
    lambda esp, b: bytes([b & 0xFF]),                     # 1 octet, not a keepalive
    lambda esp, b: b"\xff" * (2 + b % 3),                 # 2-4 octets of 0xFF
    lambda esp, b: bytes(4) + esp,                        # non-ESP marker: IKE (OTHER framing)
    lambda esp, b: bytes(3 - b % 4) + esp[:b % 4],        # 0..3 octets, some zero
    lambda esp, b: bytes(8) + esp,                        # legacy non-IKE marker before ESP
    lambda esp, b: bytes(8) + esp[: b % 9],               # marker + at most 8 octets: IKE
    lambda esp, b: bytes(8),                              # marker alone
    lambda esp, b: bytes(7) + b"\x01" + esp,              # almost a marker
    lambda esp, b: esp[8:] if len(esp) > 8 else esp,      # marker stripped (IKE framing)
    lambda esp, b: esp[: b % 8],                          # ESP shorter than SPI + seq
    lambda esp, b: esp[:8],                               # ESP header only
    lambda esp, b: esp + bytes(b % 17),                   # trailing zeros after the ICV
)


def m_udp_payload(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Replace the UDP payload (keepalive / IKE / marker confusion) and fix every length."""
    ihl = _ihl(p)
    if ihl < 20 or len(p) < ihl + 8:
        return p
    payload = _PAYLOADS[a % len(_PAYLOADS)](p[ihl + 8:], b)
    return _fix_lengths(p[: ihl + 8] + payload)


def m_spi_seq(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Rewrite the SPI (b odd) or the sequence number (b even) with a boundary or random value."""
    off = case.esp_offset(p)
    if len(p) < off + 8:
        return p
    v = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, case.spi, a)[a % 8] & 0xFFFFFFFF
    field = off if b % 2 else off + 4
    return p[:field] + struct.pack("!I", v) + p[field + 4:]


def m_dst_addr(case: Case, p: bytes, a: int, b: int) -> bytes:
    """Change the outer destination address (the SA's destination key, semantics §1.6)."""
    return p[:16] + struct.pack("!I", a & 0xFFFFFFFF) + p[20:] if len(p) >= 20 else p


def m_resign_trailer(case: Case, p: bytes, a: int, b: int) -> bytes:
    """NULL-encryption suites: edit pad_len / next header / padding and recompute the ICV.

    The packet then authenticates, so the trailer checks of semantics §1.10–11 are what decide.
    Other suites: a plain bit flip in the trailer region (which must fail authentication).
    """
    s, _ = parse_suite(case.suite)
    off = case.esp_offset(p)
    esp = p[off:]
    if len(esp) < 8 + s.icv_len + 2:
        return p
    body = bytearray(esp[: len(esp) - s.icv_len])
    if s.cipher is not Cipher.NULL:
        # Encrypted trailer: corrupt one of the last ciphertext octets (pad / pad_len / next header).
        i = len(body) - 1 - a % max(1, min(16, len(body) - 8 - s.iv_len))
        body[i] ^= 1 + b % 255
        return p[:off] + bytes(body) + esp[len(esp) - s.icv_len:]
    what = b % 4
    if what == 0:
        body[-2] = a & 0xFF                              # pad_len
    elif what == 1:
        body[-1] = a & 0xFF                              # next header (59: dummy)
    elif what == 2 and body[-2] and 3 + a % body[-2] <= len(body):
        body[-3 - a % body[-2]] ^= 1 + (a >> 8) % 255     # a padding octet
    else:
        # Grow the padding by k octets with correct contents 1..n (still valid, longer trailer).
        k = a % 40
        n = body[-2] + k
        if n <= 255:
            body = body[: len(body) - 2 - body[-2]] + bytearray(range(1, n + 1)) + bytearray([n, body[-1]])
    seq_hi = b""
    if case.esn:
        seql = struct.unpack("!I", bytes(body[4:8]))[0]
        seq_hi = struct.pack("!I", 0 if seql >= ESN_START - 64 else 1)
    icv = hmac.new(case.key[s.enc_key_len:], bytes(body) + seq_hi, _HASH[s.mac]).digest()[: s.icv_len]
    return _fix_lengths(p[:off] + bytes(body) + icv)


#: Every mutation by name: ``f(case, packet, a, b) -> packet``.
MUTATIONS: dict[str, Callable[[Case, bytes, int, int], bytes]] = {
    "truncate": m_truncate,
    "truncate_fixed": m_truncate_fixed,
    "link_padding": m_link_padding,
    "flip": m_flip,
    "flip_esp": m_flip_esp,
    "set_byte": m_set_byte,
    "ip_total_length": m_ip_total_length,
    "ihl": m_ihl,
    "ip_options": m_ip_options,
    "udp_length": m_udp_length,
    "fragment": m_fragment,
    "df_reserved": m_df_reserved,
    "protocol": m_protocol,
    "version": m_version,
    "udp_port": m_udp_port,
    "udp_payload": m_udp_payload,
    "spi_seq": m_spi_seq,
    "dst_addr": m_dst_addr,
    "resign_trailer": m_resign_trailer,
}
MUTATION_NAMES = tuple(MUTATIONS)


def mutate(case: Case, p: bytes, steps: Sequence[tuple[str, int, int]]) -> bytes:
    for name, a, b in steps:
        p = MUTATIONS[name](case, p, a, b)
    return p


def _boundary_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.choice((0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 20, 28, 59, 64, 127, 128, 255, 256,
                           0x7FFF, 0x8000, 0xFFFF, 0x10000, 0xFFFFFFFF))
    if r < 0.7:
        return rng.randrange(256)
    return rng.getrandbits(32)


def random_mutations(rng: random.Random, max_steps: int = 3) -> list[tuple[str, int, int]]:
    """1..max_steps mutation steps with boundary-biased parameters (for the standalone fuzzer)."""
    return [(rng.choice(MUTATION_NAMES), _boundary_int(rng), _boundary_int(rng))
            for _ in range(1 + rng.randrange(max_steps))]


# --------------------------------------------------------------------------- batches and checks

def layout_batch(packets: Sequence[bytes], gaps: Sequence[int], fill: int = 0xA5) -> natt.PacketBatch:
    """Segments separated by ``gaps[i]`` junk octets before packet i; the last packet ends flush
    with the buffer (so an over-read runs off the allocation, where ASan sees it)."""
    parts, offsets, pos = [], [], 0
    for i, p in enumerate(packets):
        g = gaps[i % len(gaps)] if gaps else 0
        parts.append(bytes([fill]) * g)
        pos += g
        offsets.append(pos)
        parts.append(p)
        pos += len(p)
    data = np.empty(pos, np.uint8)            # exactly sized: nothing after the last packet
    data[:] = np.frombuffer(b"".join(parts), np.uint8)
    return natt.PacketBatch(data, np.array(offsets, np.int64), np.array([len(p) for p in packets], np.int64))


_NO_SA_STATUSES = {Status.NOT_ESP, Status.IKE, Status.KEEPALIVE, Status.FRAGMENT, Status.NO_SA}
_SA_STATUSES = {Status.OK, Status.DUMMY, Status.AUTH_FAILED, Status.REPLAY, Status.PROTOCOL}
_NH_STATUSES = {Status.OK, Status.DUMMY, Status.PROTOCOL, Status.MALFORMED}
_UNCHANGED = set(Status) - {Status.OK, Status.DUMMY, Status.SEQ_OVERFLOW}


def check_result(batch: natt.PacketBatch, res: Any, handles: set[int]) -> list[str]:
    """Invariants of any decap result (docs/semantics.md §1 "Outputs"); a list of violations."""
    problems: list[str] = []
    if len(res) != len(batch):
        return [f"{len(res)} results for {len(batch)} packets"]
    for i in range(len(batch)):
        raw = int(res.status[i])
        if raw not in Status._value2member_map_:
            problems.append(f"packet {i}: status {raw} is not a natt.Status")
            continue
        st, inp, out = Status(raw), batch[i], res[i]
        sa, seq, nh = int(res.sa[i]), int(res.seq[i]), int(res.next_header[i])
        where = f"packet {i} ({st.name})"
        if st in _UNCHANGED and out != inp:
            problems.append(f"{where}: output differs from the input")
        if st is Status.DUMMY and out:
            problems.append(f"{where}: output not empty")
        if st is Status.SEQ_OVERFLOW:
            problems.append(f"{where}: SEQ_OVERFLOW from decap")
        if st is Status.OK:
            # ESP adds at least its header, trailer and ICV: the output is always shorter.
            if len(out) >= len(inp):
                problems.append(f"{where}: output {len(out)} octets from a {len(inp)}-octet input")
        if st in _NO_SA_STATUSES and sa:
            problems.append(f"{where}: sa={sa} without an SA")
        if (st in _SA_STATUSES or sa) and sa not in handles:
            problems.append(f"{where}: sa={sa} is not an installed inbound SA")
        if st in (Status.NOT_ESP, Status.IKE, Status.KEEPALIVE, Status.FRAGMENT) and seq:
            problems.append(f"{where}: seq={seq} before the ESP header was parsed")
        if st not in _NH_STATUSES and nh:
            problems.append(f"{where}: next_header={nh} before decryption")
        if st is Status.DUMMY and nh != 59:
            problems.append(f"{where}: next_header={nh}")
    return problems


def compare_results(a: Any, b: Any, limit: int = 5) -> list[str]:
    """Packet-by-packet differences between two results of the same batch (at most ``limit``)."""
    diffs: list[str] = []
    if len(a) != len(b):
        return [f"lengths {len(a)} vs {len(b)}"]
    for i in range(len(a)):
        fa = (int(a.status[i]), int(a.sa[i]), int(a.seq[i]), int(a.next_header[i]))
        fb = (int(b.status[i]), int(b.sa[i]), int(b.seq[i]), int(b.next_header[i]))
        if fa != fb or a[i] != b[i]:
            diffs.append(f"packet {i}: (status, sa, seq, next_header) {fa} vs {fb}"
                         + ("" if a[i] == b[i] else f"; outputs differ ({len(a[i])} vs {len(b[i])} octets)"))
            if len(diffs) >= limit:
                break
    return diffs
