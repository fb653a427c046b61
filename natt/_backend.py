"""The seam between the control plane (``natt.Offload``) and a data path.

``Offload`` validates every request, owns handles, parser-entry reference
counts and duplicate detection, and hands a backend only requests that are
already known to be good. A backend (``natt._reference.ReferenceBackend``,
``natt._fastpath.FastBackend``) keeps its own lookup tables, keyed crypto,
replay state and counters, and runs the data path. Both backends implement
:class:`Backend` with identical semantics (docs/semantics.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Protocol

from ._constants import UdpEncapType
from ._suites import Suite

if TYPE_CHECKING:
    from ._batch import DecapResult, EncapResult, PacketBatch

__all__ = ["SaConfig", "Backend", "BackendClosed", "COUNTER_NAMES", "ESN_RESYNC_TRIGGER", "ESN_RESYNC_LIMIT",
           "wipe_key"]


def wipe_key(key: object) -> None:
    """Zero a control-plane key copy in place: SECURITY.md has every copy wiped when its SA is
    deleted or its add refused. Anything but a ``bytearray`` (``None`` for no copy) is left alone."""
    if isinstance(key, bytearray):
        key[:] = bytes(len(key))


class BackendClosed(RuntimeError):
    """A backend's ``decap``/``encap`` found the backend closed. A backend that runs batches
    outside ``Offload``'s lock (the fast one) can be closed by another thread after ``Offload``
    saw the instance open and before the batch starts; ``Offload`` turns this into
    ``OffloadError(FAILURE)``, what any call after ``close`` raises (docs/semantics.md §6)."""


@dataclasses.dataclass(eq=False)
class SaConfig:
    """Everything a backend needs to install one SA (already validated).

    Addresses are host-order ``int`` values of the dotted quad (0 = none).
    Key material lives in ``key`` only: a ``bytearray`` the control plane
    zeroes when the SA is deleted; it is excluded from ``repr``.
    """

    handle: int                  # non-zero, never reused within an Offload
    inbound: bool
    spi: int                     # 1 .. 2**32-1
    suite: Suite                 # icv_len already resolved (GCM: 8/12/16)
    tunnel: bool
    # Inbound lookup key (docs/semantics.md §1 step 6, §6): tunnel -> (dst_tunnel_addr, 0xFFFFFFFF);
    # transport -> (dst_addr, dst_mask); (0, 0) matches any destination.
    dst_addr: int
    dst_mask: int
    # Tunnel end points (outer addresses written by encap of a tunnel SA).
    src_tunnel_addr: int
    dst_tunnel_addr: int
    # Parser entry (inbound; 0 / OTHER / 0 for outbound SAs, which use
    # ``encap_type`` only to choose the framing they write).
    entry_handle: int
    encap_type: UdpEncapType
    port: int
    # Outer UDP ports written by encap (outbound).
    encap_src_port: int
    encap_dst_port: int
    replay_window: int           # 0 = anti-replay off, else 32..65536
    esn: bool
    replay_seq: int              # inbound: highest sequence number already seen (T)
    replay_oseq: int             # outbound: last sequence number sent
    nat_oa_src: int              # transport inbound: NAT-OA original addresses (0 = unset)
    nat_oa_dst: int
    key: bytearray = dataclasses.field(repr=False)   # enc key ‖ salt ‖ auth key
    # Inbound with a window: the replay bitmap to start from, bit i standing for number
    # ``replay_seq - i`` (i < replay_window); None = full (every number <= replay_seq seen).
    # Not in ``repr``: a 65536-bit int exceeds Python's int-to-decimal limit.
    replay_bitmap: Optional[int] = dataclasses.field(default=None, repr=False)
    # Inbound ESN SAs: consecutive AUTH_FAILED packets so far (RFC 4303 Appendix A3.1), as
    # counters() exports it in ``replay_fail_run``; 0 for every other SA.
    replay_fail_run: int = 0
    # Outbound tunnel SAs: the outer header's DF bit, one of _constants.DF_BIT_MODES ("copy"
    # from an inner IPv4 header, "set", "clear"; RFC 4301 §8.1). Always "copy" on inbound and
    # transport SAs (Offload refuses the others there).
    df_bit: str = "copy"

    @property
    def enc_key(self) -> bytes:
        return bytes(self.key[: self.suite.enc_key_len])

    @property
    def salt(self) -> bytes:
        s = self.suite
        return bytes(self.key[s.enc_key_len: s.enc_key_len + s.salt_len])

    @property
    def auth_key(self) -> bytes:
        s = self.suite
        return bytes(self.key[s.enc_key_len + s.salt_len:])


#: Keys of the per-SA counter dict every backend returns from ``counters``.
COUNTER_NAMES = (
    "packets",        # decap: OK + DUMMY; encap: OK
    "bytes",          # decap: output octets of OK packets; encap: input octets of OK packets
    "auth_failures",  # AUTH_FAILED
    "replays",        # REPLAY
    "malformed",      # MALFORMED after the SA was found (decap) / inner packet rejected (encap)
    "dummy",          # DUMMY
    "protocol",       # PROTOCOL
    "seq_overflows",  # SEQ_OVERFLOW (encap)
    "errors",         # ERROR
    "esn_resyncs",    # ESN SA: a packet authenticated by the RFC 4303 Appendix A3 retry
)

#: RFC 4303 Appendix A3 resynchronisation of an inbound ESN SA (docs/semantics.md §3). After a
#: loss of 2**32 or more consecutive packets the inferred seq_hi is too small and every packet
#: fails authentication. Every ESN_RESYNC_TRIGGER-th consecutive AUTH_FAILED packet of the SA is
#: retried with the next ESN_RESYNC_LIMIT values of seq_hi above the one inferred. Both are A3's
#: "local parameters": this pair bounds the extra crypto a stream of forged packets can cause to
#: 4 trials per 64 failures, and recovers a loss of up to about 4 * 2**32 packets.
ESN_RESYNC_TRIGGER = 64
ESN_RESYNC_LIMIT = 4


class Backend(Protocol):
    """What ``Offload`` needs from a data path. Calls are serialised by ``Offload``'s lock,
    except that ``decap``/``encap`` may run concurrently with each other and with control
    calls; a backend must make that safe (docs/semantics.md, "Concurrency")."""

    # Read-only: a backend names itself with a class attribute (``name = "fast"``).
    @property
    def name(self) -> str:
        """The backend's name, as ``natt.backends()`` lists it."""

    def add_entry(self, handle: int, encap_type: UdpEncapType, port: int) -> None:
        """Install parser entry ``handle``: packets to UDP ``port`` are parsed with ``encap_type``."""

    def remove_entry(self, handle: int) -> None:
        """Remove a parser entry (no SA refers to it any more)."""

    def add_sa(self, cfg: SaConfig) -> None:
        """Install an SA. May raise ``MemoryError``/``RuntimeError``; then nothing is installed."""

    def remove_sa(self, handle: int) -> None:
        """Remove an SA and wipe every copy of its keys the backend made."""

    def counters(self, handle: int) -> dict[str, int]:
        """COUNTER_NAMES plus ``replay_seq`` (inbound: highest accepted),
        ``replay_fail_run`` (inbound ESN: consecutive AUTH_FAILED packets) and
        ``replay_oseq`` (outbound: last sent)."""

    def replay_state(self, handle: int) -> tuple[int, int]:
        """``(T, bitmap)`` of an inbound SA: ``T`` the highest authenticated number (64-bit),
        bit ``i`` of ``bitmap`` (``replay_window`` bits) set when number ``T - i`` has been
        seen; bits of numbers ``<= 0`` read as set (0 is never valid). Window 0: ``(T, 0)``.
        Read atomically with respect to batches. Installing an SA with ``replay_seq=T,
        replay_bitmap=bitmap`` reproduces the state exactly (docs/semantics.md §3)."""

    def decap(self, batch: "PacketBatch", out: "DecapResult", threads: int | None) -> None:
        """Fill ``out`` (already sized for ``batch``) with one result per packet."""

    def encap(self, batch: "PacketBatch", handle: int, out: "EncapResult", threads: int | None) -> None:
        """Encapsulate every packet of ``batch`` with outbound SA ``handle`` into ``out``.
        Raises ``KeyError`` if ``handle`` names no SA (deleted since ``Offload`` checked it)."""

    def close(self) -> None:
        """Drop every SA (wiping keys) and entry."""
