"""The reference data path: pure Python on the ``cryptography`` package.

One packet at a time, one rule at a time, in the order docs/semantics.md
§1–§4 gives them. It is slow on purpose: it is the oracle the Cython fast
path (``natt._fastpath``) is tested against, so every step is written out
plainly rather than fused or vectorised.

Key hygiene: ``remove_sa``/``close`` zero the SA's ``cfg.key`` bytearray.
The keyed objects built from it at add time (``cryptography`` cipher
algorithms, ``hmac`` templates) hold their own copies inside immutable
``bytes`` or C structures that Python gives no way to overwrite; they are
dropped, and the memory is reclaimed whenever the allocator reuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from typing import Callable, Optional

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ._backend import COUNTER_NAMES, ESN_RESYNC_LIMIT, ESN_RESYNC_TRIGGER, SaConfig, wipe_key
from ._batch import DecapResult, EncapResult, PacketBatch
from ._constants import Status, UdpEncapType
from ._suites import Cipher, Mac

__all__ = ["ReferenceBackend"]

_U32 = 2**32
_U64 = 2**64
_PROTO_UDP = 17
_PROTO_TCP = 6
_NH_IPV4 = 4          # IP-in-IP (RFC 2003): a tunnel SA's IPv4 inner packet
_NH_IPV6 = 41         # RFC 2473: a tunnel SA's IPv6 inner packet
_NH_NO_NEXT = 59      # RFC 4303 §2.6: dummy packet
_TUNNEL_TTL = 64
_IP_DF = 0x4000         # IPv4 flags and fragment offset: Don't Fragment
_NON_IKE_MARKER = bytes(8)   # legacy framing (Linux UDP_ENCAP_ESPINUDP_NON_IKE)
_MAX_IP_LEN = 65535

# Hash behind each HMAC transform (RFC 2403, 2404, 4868); the ICV is the
# leading ``suite.icv_len`` octets of the full HMAC output.
_HASHES: dict[Mac, Callable[..., "hashlib._Hash"]] = {
    Mac.HMAC_MD5_96: hashlib.md5,
    Mac.HMAC_SHA1_96: hashlib.sha1,
    Mac.HMAC_SHA256_128: hashlib.sha256,
    Mac.HMAC_SHA384_192: hashlib.sha384,
    Mac.HMAC_SHA512_256: hashlib.sha512,
}


# --------------------------------------------------------------------------- checksums

def _ones_sum(data: bytes) -> int:
    """16-bit one's-complement sum of ``data`` (odd length padded with a zero octet)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ip_checksum(header: bytes) -> int:
    """RFC 791 header checksum of ``header`` (its checksum field must be zero)."""
    return ~_ones_sum(header) & 0xFFFF


def _with_ip_fields(header: bytes, protocol: int, total_length: int) -> bytes:
    """``header`` with protocol and total length replaced and the checksum recomputed."""
    h = bytearray(header)
    struct.pack_into("!H", h, 2, total_length)
    h[9] = protocol
    h[10:12] = b"\0\0"
    struct.pack_into("!H", h, 10, _ip_checksum(bytes(h)))
    return bytes(h)


def _incremental_update(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``, for a 32-bit field (two 16-bit words)."""
    total = ~checksum & 0xFFFF
    for shift in (16, 0):
        m, m2 = (old >> shift) & 0xFFFF, (new >> shift) & 0xFFFF
        total += (~m & 0xFFFF) + m2
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --------------------------------------------------------------------------- per-SA state

class _Sa:
    """One installed SA: its configuration, keyed transforms, replay state and counters."""

    __slots__ = ("cfg", "suite", "_aes", "_chacha", "_des3", "_mac", "top", "bitmap",
                 "oseq", "fail_run", "counters")

    def __init__(self, cfg: SaConfig) -> None:
        self.cfg = cfg
        s = self.suite = cfg.suite
        self._aes: Optional[algorithms.AES] = None
        self._chacha: Optional[ChaCha20Poly1305] = None
        self._des3: Optional[TripleDES] = None
        self._mac: Optional["hmac.HMAC"] = None
        # Keyed objects are built once per SA, never per packet. ``cryptography`` still expands
        # the key inside every per-packet Cipher context; the oracle accepts that cost.
        if s.cipher in (Cipher.AES_GCM, Cipher.AES_GMAC, Cipher.AES_CBC):
            self._aes = algorithms.AES(cfg.enc_key)
        elif s.cipher is Cipher.CHACHA20_POLY1305:
            self._chacha = ChaCha20Poly1305(cfg.enc_key)
        elif s.cipher is Cipher.TRIPLE_DES_CBC:
            self._des3 = TripleDES(cfg.enc_key)
        if s.mac is not Mac.NONE:
            self._mac = hmac.new(cfg.auth_key, digestmod=_HASHES[s.mac])
        # Anti-replay (semantics §3): every number <= replay_seq counts as seen, so the
        # bitmap starts full, unless an exported state is imported (``replay_bitmap``).
        # Bit i stands for sequence number ``top - i``.
        self.top = cfg.replay_seq
        full = (1 << cfg.replay_window) - 1
        self.bitmap = full if cfg.replay_bitmap is None else cfg.replay_bitmap & full
        self.oseq = cfg.replay_oseq
        self.fail_run = cfg.replay_fail_run   # consecutive AUTH_FAILED packets (RFC 4303 Appendix A3.1)
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)

    def wipe(self) -> None:
        """Zero the key bytearray and drop every keyed object (see the module docstring)."""
        wipe_key(self.cfg.key)
        self._aes = self._chacha = self._des3 = self._mac = None

    # ---- anti-replay and ESN (semantics §3, RFC 4303 §3.4.3 and Appendix A)

    def infer_seq(self, seql: int) -> Optional[int]:
        """The full sequence number of an arriving ``seql``; ``None`` when it is not representable
        (ESN inference would place it below 0 or above 2**64 - 1)."""
        if not self.cfg.esn:
            return seql
        w = self.cfg.replay_window
        tl, th = self.top & 0xFFFFFFFF, self.top >> 32
        if tl >= w - 1:                                   # Appendix A, case A
            seq_hi = th if seql >= tl - w + 1 else th + 1
        else:                                             # case B: window spans a 2**32 boundary
            seq_hi = th - 1 if seql >= (tl - w + 1) % _U32 else th
        if seq_hi < 0 or seq_hi >= _U32:
            return None
        return seq_hi << 32 | seql

    def is_replay(self, seq: int) -> bool:
        """Preliminary check (RFC 4303 §3.4.3): 0, left of the window, or already seen."""
        w = self.cfg.replay_window
        if seq == 0 or seq <= self.top - w:
            return True
        if seq > self.top:
            return False
        return bool(self.bitmap >> (self.top - seq) & 1)

    def accept(self, seq: int) -> None:
        """Record an authenticated ``seq``: slide the window right if it is new, mark its bit."""
        w = self.cfg.replay_window
        if w == 0:
            # No window, but sa_stats still reports the highest authenticated number.
            self.top = max(self.top, seq)
            return
        if seq > self.top:
            shift = seq - self.top
            # Guard the shift: a jump of 2**40 must not build a 2**40-bit integer.
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << w) - 1) if shift < w else 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)

    # ---- integrity and confidentiality (semantics §1 "Suite details")

    def _nonce(self, iv: bytes) -> bytes:
        return self.cfg.salt + iv           # RFC 4106 §4 / RFC 7634 §2: salt ‖ IV

    def _aad(self, spi_seql: bytes, seq_hi: bytes) -> bytes:
        # RFC 4106 §5: SPI ‖ seql, or SPI ‖ seq_hi ‖ seql with ESN.
        return spi_seql[:4] + seq_hi + spi_seql[4:8]

    def hmac_icv(self, covered: bytes, seq_hi: bytes) -> bytes:
        """RFC 4303 §2.8: the ICV covers SPI … next header, then (ESN) seq_hi, never sent."""
        assert self._mac is not None
        m = self._mac.copy()
        m.update(covered)
        m.update(seq_hi)
        return m.digest()[: self.suite.icv_len]

    def authenticate(self, esp: bytes, seq: int) -> Optional[bytes]:
        """Semantics §1 step 9 and the decryption of step 10 for the full number ``seq``: the
        plaintext (payload to next header), or ``None`` when the ICV or tag fails. HMAC first
        (RFC 4303 §3.4.4: verify, then decrypt); an AEAD in one call."""
        seq_hi = (seq >> 32).to_bytes(4, "big") if self.cfg.esn else b""
        if self.suite.mac is not Mac.NONE:
            icv = esp[len(esp) - self.suite.icv_len:]
            if not hmac.compare_digest(self.hmac_icv(esp[: len(esp) - self.suite.icv_len], seq_hi), icv):
                return None
        return self.open(esp, seq_hi)

    def resync(self, esp: bytes, seq: int) -> Optional[tuple[int, bytes]]:
        """RFC 4303 Appendix A3.2: retry a packet that failed authentication as ``seq`` with the
        next ``ESN_RESYNC_LIMIT`` values of seq_hi above ``seq``'s (never past 2**32 - 1);
        ``(number, plaintext)`` of the first that authenticates, else ``None``."""
        seql = seq & 0xFFFFFFFF
        for seq_hi in range((seq >> 32) + 1, min((seq >> 32) + 1 + ESN_RESYNC_LIMIT, _U32)):
            plain = self.authenticate(esp, seq_hi << 32 | seql)
            if plain is not None:
                return seq_hi << 32 | seql, plain
        return None

    def open(self, esp: bytes, seq_hi: bytes) -> Optional[bytes]:
        """Verify and decrypt ``esp`` (header to ICV). ``None`` when the ICV or tag fails.

        For HMAC suites ``authenticate`` has already checked the ICV; this only decrypts.
        """
        s = self.suite
        iv = esp[8: 8 + s.iv_len]
        body = esp[8 + s.iv_len: len(esp) - s.icv_len]
        icv = esp[len(esp) - s.icv_len:]
        if s.cipher is Cipher.AES_GCM:
            assert self._aes is not None
            d = _Cipher(self._aes, modes.GCM(self._nonce(iv), icv, min_tag_length=s.icv_len)).decryptor()
            d.authenticate_additional_data(self._aad(esp, seq_hi))
            plain = d.update(body)
            try:
                d.finalize()
            except InvalidTag:
                return None
            return plain
        if s.cipher is Cipher.AES_GMAC:
            # RFC 4543 §3: nothing is encrypted; AAD runs from the SPI to the end of the trailer.
            assert self._aes is not None
            d = _Cipher(self._aes, modes.GCM(self._nonce(iv), icv, min_tag_length=s.icv_len)).decryptor()
            d.authenticate_additional_data(self._aad(esp, seq_hi) + iv + body)
            try:
                d.finalize()
            except InvalidTag:
                return None
            return body
        if s.cipher is Cipher.CHACHA20_POLY1305:
            assert self._chacha is not None
            try:
                return self._chacha.decrypt(self._nonce(iv), body + icv, self._aad(esp, seq_hi))
            except InvalidTag:
                return None
        if s.cipher is Cipher.AES_CBC or s.cipher is Cipher.TRIPLE_DES_CBC:
            algo = self._aes if s.cipher is Cipher.AES_CBC else self._des3
            assert algo is not None
            dec = _Cipher(algo, modes.CBC(iv)).decryptor()
            return dec.update(body) + dec.finalize()
        return body                                       # NULL (RFC 2410)

    def seal(self, spi_seql: bytes, seq: int, plain: bytes, seq_hi: bytes) -> bytes:
        """ESP from the SPI to the ICV for trailer-padded ``plain`` (semantics §2 steps 4–5)."""
        s = self.suite
        if s.cipher in (Cipher.AES_GCM, Cipher.AES_GMAC, Cipher.CHACHA20_POLY1305):
            # RFC 4106 §3.1 allows a counter as the IV; the 64-bit seq never repeats under a key.
            iv = seq.to_bytes(8, "big")
        elif s.iv_len:
            iv = os.urandom(s.iv_len)                     # RFC 3602 §3: unpredictable CBC IV
        else:
            iv = b""
        aad = self._aad(spi_seql, seq_hi)
        if s.cipher is Cipher.AES_GCM:
            assert self._aes is not None
            e = _Cipher(self._aes, modes.GCM(self._nonce(iv))).encryptor()
            e.authenticate_additional_data(aad)
            body = e.update(plain) + e.finalize()
            return spi_seql + iv + body + e.tag[: s.icv_len]   # a GCM tag truncates to a prefix
        if s.cipher is Cipher.AES_GMAC:
            assert self._aes is not None
            e = _Cipher(self._aes, modes.GCM(self._nonce(iv))).encryptor()
            e.authenticate_additional_data(aad + iv + plain)
            e.finalize()
            return spi_seql + iv + plain + e.tag[: s.icv_len]
        if s.cipher is Cipher.CHACHA20_POLY1305:
            assert self._chacha is not None
            return spi_seql + iv + self._chacha.encrypt(self._nonce(iv), plain, aad)
        if s.cipher is Cipher.AES_CBC or s.cipher is Cipher.TRIPLE_DES_CBC:
            algo = self._aes if s.cipher is Cipher.AES_CBC else self._des3
            assert algo is not None
            enc = _Cipher(algo, modes.CBC(iv)).encryptor()
            body = enc.update(plain) + enc.finalize()
        else:
            body = plain
        covered = spi_seql + iv + body
        if self._mac is None:                             # confidentiality only: no ICV
            return covered
        return covered + self.hmac_icv(covered, seq_hi)


# --------------------------------------------------------------------------- the backend

class ReferenceBackend:
    """Per-packet, pure-Python implementation of the :class:`natt._backend.Backend` protocol.

    Lookup tables: ``port → parser entry`` for the UDP classifier, and
    ``(entry handle, spi) → [inbound SAs]`` for the SA lookup, the most
    specific destination mask winning (semantics §1 step 6). One lock
    serialises data-path calls against each other and against control
    calls, so a batch always sees one consistent table and replay state.
    """

    name = "reference"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[UdpEncapType, int]] = {}     # handle -> (type, port)
        self._ports: dict[int, tuple[int, UdpEncapType]] = {}       # port -> (handle, type)
        self._sas: dict[int, _Sa] = {}                               # handle -> SA
        self._inbound: dict[tuple[int, int], list[_Sa]] = {}         # (entry, spi) -> SAs

    def __repr__(self) -> str:
        return f"ReferenceBackend({len(self._sas)} SAs, {len(self._entries)} parser entries)"

    # ---- control plane (already validated by natt.Offload)

    def add_entry(self, handle: int, encap_type: UdpEncapType, port: int) -> None:
        """Install parser entry ``handle``: packets to UDP ``port`` are parsed with ``encap_type``."""
        with self._lock:
            self._entries[handle] = (UdpEncapType(encap_type), port)
            self._ports[port] = (handle, UdpEncapType(encap_type))

    def remove_entry(self, handle: int) -> None:
        """Remove a parser entry (no SA refers to it any more)."""
        with self._lock:
            entry = self._entries.pop(handle, None)
            if entry is not None and self._ports.get(entry[1], (None,))[0] == handle:
                del self._ports[entry[1]]

    def add_sa(self, cfg: SaConfig) -> None:
        """Install an SA; on any failure nothing is installed."""
        sa = _Sa(cfg)                                  # may raise: before any table changes
        with self._lock:
            self._sas[cfg.handle] = sa
            if cfg.inbound:
                group = self._inbound.setdefault((cfg.entry_handle, cfg.spi), [])
                group.append(sa)
                # Longest mask first, so the first match is the most specific (semantics §1 step 6).
                group.sort(key=lambda x: x.cfg.dst_mask, reverse=True)

    def remove_sa(self, handle: int) -> None:
        """Remove an SA and zero its key bytearray."""
        with self._lock:
            sa = self._sas.pop(handle, None)
            if sa is None:
                return
            if sa.cfg.inbound:
                key = (sa.cfg.entry_handle, sa.cfg.spi)
                group = [x for x in self._inbound.get(key, []) if x is not sa]
                if group:
                    self._inbound[key] = group
                else:
                    self._inbound.pop(key, None)
            sa.wipe()

    def counters(self, handle: int) -> dict[str, int]:
        """COUNTER_NAMES plus ``replay_seq`` (highest authenticated), ``replay_fail_run``
        (consecutive AUTH_FAILED packets) and ``replay_oseq`` (last sent)."""
        with self._lock:
            sa = self._sas[handle]
            return {**sa.counters, "replay_seq": sa.top, "replay_fail_run": sa.fail_run, "replay_oseq": sa.oseq}

    def replay_state(self, handle: int) -> tuple[int, int]:
        """``(T, bitmap)`` of an inbound SA, in this backend's own representation (see
        :meth:`natt._backend.Backend.replay_state`)."""
        with self._lock:
            sa = self._sas[handle]
            w = sa.cfg.replay_window
            if not w:
                return sa.top, 0
            # Numbers <= 0 (bits i >= T) never leave the full initial state; report them set
            # whatever an import said, so that an export is canonical.
            below = ((1 << w) - 1) & ~((1 << sa.top) - 1) if sa.top < w else 0
            return sa.top, sa.bitmap | below

    def close(self) -> None:
        """Drop every SA (zeroing its key) and every parser entry."""
        with self._lock:
            for sa in self._sas.values():
                sa.wipe()
            self._sas.clear()
            self._inbound.clear()
            self._entries.clear()
            self._ports.clear()

    # ---- data path

    def decap(self, batch: PacketBatch, out: DecapResult, threads: int | None) -> None:
        """Decapsulate every packet of ``batch`` into ``out`` (sized by ``out._prepare(batch, 0)``).

        ``threads`` is ignored: packets are decided one after another, in order.
        """
        with self._lock:
            arrays = _arrays(batch, out)
            for i in range(len(out)):
                p = _segment(arrays, i)
                sa: Optional[_Sa] = None
                found: list[tuple[_Sa, int]] = []   # step 6's SA and res.seq, kept if a later step fails
                output: Optional[bytes]
                if p is None:
                    status, seq, nh, output = Status.ERROR, 0, 0, b""
                else:
                    try:
                        status, sa, seq, nh, output = self._decap_one(p, found)
                    except Exception:   # noqa: BLE001 — the data path never raises (semantics §1: ERROR)
                        status, seq, nh, output = Status.ERROR, 0, 0, None
                        if found:
                            sa, seq = found[0]
                            sa.counters["errors"] += 1
                _store(out, i, status, sa.cfg.handle if sa else 0, seq, nh,
                       p if output is None else output)

    def encap(self, batch: PacketBatch, handle: int, out: EncapResult, threads: int | None) -> None:
        """Encapsulate every packet of ``batch`` with outbound SA ``handle`` into ``out``
        (sized by ``out._prepare(batch, ENCAP_OVERHEAD)``)."""
        with self._lock:
            sa = self._sas.get(handle)
            if sa is None:
                # Deleted since Offload checked the handle: the same KeyError as the fast
                # backend, which Offload.encap turns into OffloadError (semantics §5).
                raise KeyError(handle)
            arrays = _arrays(batch, out)
            for i in range(len(out)):
                p = _segment(arrays, i)
                if p is None:
                    status, sa_h, seq, nh, output = Status.ERROR, 0, 0, 0, p
                else:
                    try:
                        status, sa_h, seq, nh, output = self._encap_one(sa, p)
                    except Exception:   # noqa: BLE001 — the data path never raises (semantics §1: ERROR)
                        sa.counters["errors"] += 1
                        status, sa_h, seq, nh, output = Status.ERROR, 0, 0, 0, None
                _store(out, i, status, sa_h, seq, nh, p if output is None else output)

    # ---- decap, one packet (semantics §1). Returns (status, sa, seq, next_header, output);
    # output None means "the input segment unchanged".

    def _decap_one(self, p: bytes, found: list[tuple[_Sa, int]]) -> tuple[Status, Optional[_Sa], int, int, Optional[bytes]]:
        # 1. IPv4 at all?
        if len(p) < 20 or p[0] >> 4 != 4:
            return Status.NOT_ESP, None, 0, 0, None
        # 2. Header consistent; octets past the total length are link padding.
        ihl = (p[0] & 15) * 4
        tl = int.from_bytes(p[2:4], "big")
        if ihl < 20 or tl < ihl or tl > len(p):
            return Status.MALFORMED, None, 0, 0, None
        ip = p[:tl]
        # 3. UDP, not a fragment (a NIC does not reassemble). DF/reserved bits are ignored.
        if ip[9] != _PROTO_UDP:
            return Status.NOT_ESP, None, 0, 0, None
        flags_frag = int.from_bytes(ip[6:8], "big")
        if flags_frag & 0x2000 or flags_frag & 0x1FFF:
            return Status.FRAGMENT, None, 0, 0, None
        # 4. UDP header; the checksum is not verified (RFC 3948 §2.1: the ICV protects ESP).
        if tl - ihl < 8:
            return Status.MALFORMED, None, 0, 0, None
        udp = ip[ihl:]
        if int.from_bytes(udp[4:6], "big") != tl - ihl:
            return Status.MALFORMED, None, 0, 0, None
        entry = self._ports.get(int.from_bytes(udp[2:4], "big"))
        if entry is None:
            return Status.NOT_ESP, None, 0, 0, None
        entry_handle, framing = entry
        # 5. Framing (RFC 3948 §2.2/§2.3; legacy non-IKE marker for IKE-type entries).
        u = udp[8:]
        if len(u) == 1 and u[0] == 0xFF:
            return Status.KEEPALIVE, None, 0, 0, None
        if framing is UdpEncapType.OTHER:
            if len(u) == 0:
                return Status.MALFORMED, None, 0, 0, None
            if len(u) >= 4 and u[:4] == b"\0\0\0\0":
                return Status.IKE, None, 0, 0, None
            esp = u
        else:
            if not (len(u) > 16 and u[:8] == _NON_IKE_MARKER):
                return Status.IKE, None, 0, 0, None
            esp = u[8:]
        if len(esp) < 8:
            return Status.MALFORMED, None, 0, 0, None
        spi = int.from_bytes(esp[0:4], "big")
        seql = int.from_bytes(esp[4:8], "big")
        # 6. SA lookup: SPI on this entry, then the most specific matching destination.
        dst = int.from_bytes(ip[16:20], "big")
        sa = next((x for x in self._inbound.get((entry_handle, spi), ())
                   if dst & x.cfg.dst_mask == x.cfg.dst_addr & x.cfg.dst_mask), None)
        if sa is None:
            return Status.NO_SA, None, seql, 0, None
        seq = sa.infer_seq(seql)
        res_seq = seql if seq is None else seq
        found.append((sa, res_seq))
        s = sa.suite
        c = sa.counters
        # 7. Lengths: header + IV + trailer + ICV, whole cipher blocks.
        if len(esp) < 8 + s.iv_len + s.icv_len + 2:
            c["malformed"] += 1
            return Status.MALFORMED, sa, res_seq, 0, None
        ct_len = len(esp) - 8 - s.iv_len - s.icv_len
        if s.cipher in (Cipher.AES_CBC, Cipher.TRIPLE_DES_CBC) and ct_len % s.block_size:
            c["malformed"] += 1
            return Status.MALFORMED, sa, res_seq, 0, None
        # 8. Preliminary anti-replay check, before any crypto (RFC 4303 §3.4.3).
        if sa.cfg.replay_window and (seq is None or sa.is_replay(seq)):
            c["replays"] += 1
            return Status.REPLAY, sa, res_seq, 0, None
        assert seq is not None
        # 9. Integrity.
        plain = sa.authenticate(esp, seq)
        if plain is None and sa.cfg.esn:
            # RFC 4303 Appendix A3: every ESN_RESYNC_TRIGGER-th consecutive failure is retried
            # with larger seq_hi values, in case 2**32 or more packets were lost.
            sa.fail_run = (sa.fail_run + 1) & 0xFFFFFFFF   # a 32-bit count, as sa_stats reports it
            if sa.fail_run % ESN_RESYNC_TRIGGER == 0:
                retried = sa.resync(esp, seq)
                if retried is not None:
                    seq, plain = retried
                    res_seq = seq
                    c["esn_resyncs"] += 1
        if plain is None:
            c["auth_failures"] += 1
            return Status.AUTH_FAILED, sa, res_seq, 0, None
        # Authenticated: the window moves now, whatever the trailer turns out to be.
        sa.fail_run = 0
        sa.accept(seq)
        # 10. Trailer (RFC 4303 §2.4: default padding is 1, 2, 3, …).
        pad_len, nh = plain[-2], plain[-1]
        if pad_len > len(plain) - 2 or plain[-2 - pad_len: -2] != bytes(range(1, pad_len + 1)):
            c["malformed"] += 1
            return Status.MALFORMED, sa, res_seq, nh, None
        payload = plain[: len(plain) - 2 - pad_len]
        # 11. Next header.
        if nh == _NH_NO_NEXT:
            c["packets"] += 1
            c["dummy"] += 1
            return Status.DUMMY, sa, res_seq, nh, b""
        if sa.cfg.tunnel and nh not in (_NH_IPV4, _NH_IPV6):
            c["protocol"] += 1
            return Status.PROTOCOL, sa, res_seq, nh, None
        # 12. OK.
        if sa.cfg.tunnel:
            output = payload                  # the inner datagram as decrypted, TFC padding kept
        else:
            header = _with_ip_fields(ip[:ihl], nh, ihl + len(payload))
            output = header + self._nat_oa_repair(sa, ip, nh, payload)
        c["packets"] += 1
        c["bytes"] += len(output)
        return Status.OK, sa, res_seq, nh, output

    @staticmethod
    def _nat_oa_repair(sa: _Sa, ip: bytes, nh: int, payload: bytes) -> bytes:
        """RFC 3948 §3.1.2, first option: fix the inner TCP/UDP checksum (semantics §4).

        The sender computed it over its pseudo-header with the original addresses
        (NAT-OA); the stack will check it against the received ones. So, per RFC 3948,
        "subtract" each original address and "add" the received one: in RFC 1624 terms
        the old field value m is the NAT-OA address and the new one m' the received.
        """
        cfg = sa.cfg
        if not (cfg.nat_oa_src or cfg.nat_oa_dst):
            return payload
        if nh == _PROTO_TCP and len(payload) >= 18:
            off = 16
        elif nh == _PROTO_UDP and len(payload) >= 8:
            off = 6
        else:
            return payload
        checksum = int.from_bytes(payload[off: off + 2], "big")
        if nh == _PROTO_UDP and checksum == 0:
            return payload                    # RFC 768: 0 means "no checksum"; leave it so
        if cfg.nat_oa_src:
            checksum = _incremental_update(checksum, cfg.nat_oa_src, int.from_bytes(ip[12:16], "big"))
        if cfg.nat_oa_dst:
            checksum = _incremental_update(checksum, cfg.nat_oa_dst, int.from_bytes(ip[16:20], "big"))
        if nh == _PROTO_UDP and checksum == 0:
            checksum = 0xFFFF                 # RFC 768: a computed 0 is sent as all ones
        return payload[:off] + checksum.to_bytes(2, "big") + payload[off + 2:]

    # ---- encap, one packet (semantics §2). Returns (status, sa, seq, next_header, output).

    def _encap_one(self, sa: _Sa, p: bytes) -> tuple[Status, int, int, int, Optional[bytes]]:
        cfg, s, c = sa.cfg, sa.suite, sa.counters
        # 1. Inner packet.
        inner = _inner_payload(p, cfg.tunnel)
        if inner is None:
            c["malformed"] += 1
            return Status.MALFORMED, 0, 0, 0, None
        payload, nh = inner
        # 2. Sequence number; never cycle (RFC 4303 §3.3.3).
        if sa.oseq == (_U64 - 1 if cfg.esn else _U32 - 1):
            c["seq_overflows"] += 1
            return Status.SEQ_OVERFLOW, 0, 0, 0, b""
        seq = sa.oseq + 1
        # 3. Default padding (RFC 4303 §2.4): align payload ‖ pad ‖ pad_len ‖ nh to the block and to 4.
        align = 4 if s.block_size <= 4 else s.block_size    # CBC blocks (8, 16) are multiples of 4
        pad_len = -(len(payload) + 2) % align
        plain = payload + bytes(range(1, pad_len + 1)) + bytes((pad_len, nh))
        # 6. UDP, checksum 0 (RFC 3948 §2.1 SHOULD); legacy framing puts the marker first.
        marker = _NON_IKE_MARKER if cfg.encap_type is UdpEncapType.IKE else b""
        # 8, checked before the crypto: a packet too long to send uses up no number. The outer
        # header is 20 octets (tunnel) or the inner header with its options (transport).
        ihl = 20 if cfg.tunnel else (p[0] & 15) * 4
        total = ihl + 8 + len(marker) + 8 + s.iv_len + len(plain) + s.icv_len
        if total > _MAX_IP_LEN:
            c["malformed"] += 1
            return Status.MALFORMED, 0, seq, 0, None
        # 4–5. ESP; ESN high bits enter the ICV/AAD only. The number is used up from here on, even
        # if the crypto fails (ERROR; semantics §2 step 2): a number, hence an AEAD nonce, never
        # goes out twice (RFC 4106 §3.1).
        sa.oseq = seq
        spi_seql = struct.pack("!II", cfg.spi, seq & 0xFFFFFFFF)
        seq_hi = (seq >> 32).to_bytes(4, "big") if cfg.esn else b""
        esp = marker + sa.seal(spi_seql, seq, plain, seq_hi)
        udp = struct.pack("!HHHH", cfg.encap_src_port, cfg.encap_dst_port, 8 + len(esp), 0) + esp
        # 7. Outer IPv4 header.
        if cfg.tunnel:
            tos = p[1] if nh == _NH_IPV4 else ((p[0] & 0x0F) << 4 | p[1] >> 4)
            # DF per the SA (RFC 4301 §8.1: set, clear or copy from the inner header, per SA);
            # an inner IPv6 packet has no DF to copy, so "copy" leaves it clear.
            if cfg.df_bit == "set":
                df = _IP_DF
            elif cfg.df_bit == "clear":
                df = 0
            else:
                df = p[6] << 8 & _IP_DF if nh == _NH_IPV4 else 0
            header = struct.pack("!BBHHHBBHII", 0x45, tos, total, seq & 0xFFFF, df, _TUNNEL_TTL,
                                 _PROTO_UDP, 0, cfg.src_tunnel_addr, cfg.dst_tunnel_addr)
            header = _with_ip_fields(header, _PROTO_UDP, total)
        else:
            header = _with_ip_fields(p[:ihl], _PROTO_UDP, total)
        c["packets"] += 1
        c["bytes"] += len(p)
        return Status.OK, cfg.handle, seq, nh, header + udp


# --------------------------------------------------------------------------- helpers

def _inner_payload(p: bytes, tunnel: bool) -> Optional[tuple[bytes, int]]:
    """Semantics §2 step 1: ``(payload, next_header)`` of an inner packet, ``None`` if malformed."""
    if len(p) >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) * 4
        tl = int.from_bytes(p[2:4], "big")
        if ihl < 20 or not ihl <= tl <= len(p):
            return None
        if tunnel:
            return p[:tl], _NH_IPV4
        # RFC 4303 §3.3.4: transport mode protects whole datagrams, never fragments.
        if int.from_bytes(p[6:8], "big") & 0x3FFF:
            return None
        return p[ihl:tl], p[9]
    if tunnel and len(p) >= 40 and p[0] >> 4 == 6:
        plen = int.from_bytes(p[4:6], "big")
        if 40 + plen > len(p):
            return None
        return p[: 40 + plen], _NH_IPV6
    return None


def _arrays(batch: PacketBatch, out: DecapResult | EncapResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's (data, offsets, lengths), taken once: another thread may rebind them while
    the loop runs. ``out._prepare`` checked them; rebound since, they must still fit ``out``."""
    arrays = (batch.data, batch.offsets, batch.lengths)
    if arrays[1].size != len(out) or arrays[2].size != len(out):
        raise ValueError(f"batch: its offsets and lengths were rebound (now {arrays[1].size} and "
                         f"{arrays[2].size} elements) after the result was sized for {len(out)} packets")
    return arrays


def _segment(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], i: int) -> Optional[bytes]:
    """Packet ``i`` as bytes; ``None`` if the caller changed offsets/lengths out of bounds
    after the batch was validated (then the packet gets ERROR rather than a crash)."""
    data, offsets, lengths = arrays
    o, n = int(offsets[i]), int(lengths[i])
    if o < 0 or n < 0 or o + n > data.size:
        return None
    return data[o: o + n].tobytes()


def _store(out: DecapResult | EncapResult, i: int, status: Status, sa: int, seq: int, nh: int,
           output: Optional[bytes]) -> None:
    out.status[i] = status
    out.sa[i] = sa
    out.seq[i] = seq
    out.next_header[i] = nh
    data = output or b""
    o = int(out.offsets[i])
    end = int(out.offsets[i + 1]) if i + 1 < len(out.offsets) else out.data.size
    if o + len(data) > end:
        # Only possible if the caller rewrote the batch arrays while we ran: no crash, no overrun.
        out.status[i], data = Status.ERROR, b""
    out.data[o: o + len(data)] = np.frombuffer(data, dtype=np.uint8)
    out.lengths[i] = len(data)
