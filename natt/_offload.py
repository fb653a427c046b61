"""``natt.Offload``: the "miniport" — control plane in front of a data path.

The control plane validates every request in the fixed order of
docs/semantics.md §6 before touching any table, so a refused request leaves
nothing behind; only then does it install the SA in the backend (and roll the
parser entry back if that fails). The OID layer (``set_oid``) and the Pythonic
layer (``add_sa``) share one code path: ``add_sa`` builds the OID request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import operator
import os
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Optional, SupportsIndex, TypedDict, Union, cast

import numpy as np

from ._backend import Backend, BackendClosed, SaConfig, wipe_key
from ._batch import ENCAP_OVERHEAD, BatchResult, DecapResult, EncapResult, PacketBatch, _count, as_batch
from ._constants import (
    DF_BIT_MODES,
    OFFLOAD_INBOUND_SA,
    OFFLOAD_MAX_SAS,
    OFFLOAD_OUTBOUND_SA,
    OID_TCP_TASK_IPSEC_ADD_UDPESP_SA,
    OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA,
    OID_TCP_TASK_OFFLOAD,
    ConfAlgo,
    IntegrityAlgo,
    NdisStatus,
    Operation,
    UdpEncapType,
)
from ._redact import shown
from ._oid import (
    AddUdpEspSa,
    Address,
    AlgoInfo,
    DeleteUdpEspSa,
    EncapTypeEntry,
    OffloadCapabilities,
    OffloadError,
    OffloadSecurityAssociation,
)
from ._suites import SUITES, Cipher, Suite, parse_suite, suite_for_algos

__all__ = ["Offload", "SaStats", "backends"]

log = logging.getLogger("natt")

REPLAY_WINDOW_MIN = 32
REPLAY_WINDOW_MAX = 65536
DEFAULT_MAX_SAS = 1 << 20
DEFAULT_MAX_PARSER_ENTRIES = 64

_SUPPORTED_CONF = tuple(a for a in ConfAlgo if a not in (ConfAlgo.DES, ConfAlgo.RESERVED))
_SUPPORTED_INTEG = tuple(IntegrityAlgo)


def backends() -> list[str]:
    """Names of the data paths this installation can run, fastest first."""
    return (["fast"] if _fast_unavailable() is None else []) + ["reference"]


@functools.lru_cache(maxsize=1)
def _fast_unavailable() -> Optional[str]:
    """Why the compiled backend cannot be imported, or None when it can."""
    try:
        from . import _fastpath
    except ImportError as e:
        return str(e)
    return None if hasattr(_fastpath, "FastBackend") else "natt._fastpath has no FastBackend"


def _make_backend(name: Optional[str]) -> Backend:
    if name is None:
        name = backends()[0]
        why = _fast_unavailable()
        if why is not None:
            # The usual cause is running from a source checkout, whose natt/ shadows the
            # installed package and has no compiled extension: say so, not silently go slow.
            warnings.warn(f"natt: the compiled 'fast' backend cannot be imported ({why}); using the "
                          f"pure-Python 'reference' backend, about ten times slower. Running inside "
                          f"natt's source tree? Its natt/ hides the installed package: run from "
                          f"another directory, or build in place (pip install -e .)",
                          RuntimeWarning, stacklevel=3)
    if name == "fast":
        try:
            from ._fastpath import FastBackend
        except ImportError as e:
            raise ValueError(f"backend: 'fast' is not available in this build ({e})") from None
        return FastBackend()
    if name == "reference":
        from ._reference import ReferenceBackend
        return ReferenceBackend()
    raise ValueError(f"backend: unknown backend {shown(name)}; choose from {backends()}")


class _Reject(Exception):
    """A request check failed: carries the status and a message naming the field."""

    def __init__(self, status: NdisStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    v = _as_int(value)
    if v is None:
        raise _Reject(NdisStatus.INVALID_PARAMETER, f"{name}: expected an integer, got {type(value).__name__}")
    if not lo <= v <= hi:
        raise _Reject(NdisStatus.INVALID_PARAMETER, f"{name}: {shown(v)} is outside {lo}..{hi}")
    return v


@functools.lru_cache(maxsize=4096)
def _parse_ipv4(text: str) -> int:
    # Cached: a gateway installs many SAs between the same few tunnel ends, and parsing a dotted
    # quad with ipaddress was a third of add_sa's time.
    return int(ipaddress.IPv4Address(text.strip()))


def _addr(name: str, value: Any) -> int:
    """Host-order int of an IPv4 address given as int, dotted quad or IPv4Address (0 = any)."""
    if isinstance(value, ipaddress.IPv4Address):
        return int(value)
    if isinstance(value, str):
        try:
            return _parse_ipv4(value)
        except ValueError:
            pass    # raised below, without a __context__ that quotes the value (a key in the wrong field)
        raise _Reject(NdisStatus.INVALID_PARAMETER, f"{name}: {shown(value)} is not an IPv4 address")
    if value is None:
        return 0
    if _as_int(value) is None:
        raise _Reject(NdisStatus.INVALID_PARAMETER, f"{name}: expected a dotted quad, an IPv4Address or an "
                                                    f"integer, got {type(value).__name__}")
    return _int(name, value, 0, 0xFFFFFFFF)


def _mask(name: str, value: Any) -> int:
    m = _addr(name, value)
    inv = ~m & 0xFFFFFFFF
    if inv & (inv + 1):
        raise _Reject(NdisStatus.INVALID_PARAMETER, f"{name}: {ipaddress.IPv4Address(m)} is not a contiguous netmask")
    return m


@dataclasses.dataclass
class _Entry:
    handle: int
    encap_type: UdpEncapType
    port: int
    refcount: int = 0


class SaStats(TypedDict):
    """What :meth:`Offload.sa_stats` returns: a plain ``dict`` at run time, with these keys.

    Inbound and outbound SAs report the same keys (both backends give every counter for
    either direction), so every key is always there; :meth:`Offload.sa_stats` says what each
    one holds for each direction. No key material, ever (SECURITY.md).
    """

    # settings
    handle: int
    spi: int
    direction: Literal["in", "out"]
    mode: Literal["tunnel", "transport"]
    suite: str                                  # canonical strongSwan keyword, e.g. "aes128gcm16"
    esn: bool
    replay_window: int                          # 0: anti-replay off
    encap: Literal["IKE", "OTHER"]              # UdpEncapType name of the parser entry
    port: int
    entry_handle: int
    df_bit: Literal["copy", "set", "clear"]     # DF_BIT_MODES (RFC 4301 §8.1)
    # counters since the SA was added (COUNTER_NAMES)
    packets: int
    bytes: int
    auth_failures: int
    replays: int
    malformed: int
    dummy: int
    protocol: int
    seq_overflows: int
    errors: int
    esn_resyncs: int
    # sequence state (what add_sa takes under the same names)
    replay_seq: int
    replay_fail_run: int
    replay_oseq: int


class Offload:
    """A software NIC with IPsec task offload for UDP-encapsulated ESP.

    Starts empty: no parser entries, no SAs. Configure it through the OID
    layer (:meth:`set_oid`, :meth:`query_oid`) or the Pythonic layer
    (:meth:`add_sa`, :meth:`delete_sa`, :meth:`sa_stats`), then run batches
    through :meth:`decap` and :meth:`encap`.

    ``backend`` is ``"fast"`` (Cython over OpenSSL; the default) or
    ``"reference"`` (pure Python over ``cryptography``); :func:`natt.backends`
    lists what is available. ``max_sas`` and ``max_parser_entries`` bound the
    tables (a full table answers ``NdisStatus.RESOURCES``).

    An ``Offload`` is a context manager; :meth:`close` wipes every key. It
    cannot be pickled (it holds key material).
    """

    def __init__(self, backend: Optional[str] = None, *, max_sas: int = DEFAULT_MAX_SAS,
                 max_parser_entries: int = DEFAULT_MAX_PARSER_ENTRIES) -> None:
        # numpy integers count as integers, as everywhere else in the API
        max_sas, max_parser_entries = (int(v) if isinstance(v, np.integer) else v
                                       for v in (max_sas, max_parser_entries))
        if isinstance(max_sas, bool) or not isinstance(max_sas, int) or max_sas < 1:
            raise ValueError(f"max_sas: expected a positive integer, got {shown(max_sas)}")
        if isinstance(max_parser_entries, bool) or not isinstance(max_parser_entries, int) or max_parser_entries < 1:
            raise ValueError(f"max_parser_entries: expected a positive integer, got {shown(max_parser_entries)}")
        self._backend = _make_backend(backend)
        self.backend: str = self._backend.name
        self.max_sas = max_sas
        self.max_parser_entries = max_parser_entries
        self._lock = threading.RLock()
        # The reference path walks Python dicts per packet: keep control calls out while it runs.
        self._dp_lock: Optional[threading.RLock] = None if getattr(self._backend, "thread_safe", False) else self._lock
        self._next_handle = 1
        self._entries: dict[int, _Entry] = {}
        self._entry_by_key: dict[tuple[int, int], int] = {}
        self._sas: dict[int, SaConfig] = {}
        self._inbound_keys: set[tuple[int, int, int, int]] = set()
        # Outbound SAs this process got by fork(), which encap refuses until claimed (see
        # claim_after_fork): two processes sending with one SA repeat its sequence numbers.
        self._inherited: set[int] = set()
        self._closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Delete every SA and parser entry and wipe all key material. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._backend.close()
            for cfg in self._sas.values():
                wipe_key(cfg.key)
            self._sas.clear()
            self._entries.clear()
            self._entry_by_key.clear()
            self._inbound_keys.clear()
            self._inherited.clear()

    def __enter__(self) -> "Offload":
        self._check_open()      # a closed instance has no tables left to work on
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError("natt.Offload holds key material and cannot be pickled; "
                        "save the SA set with natt.keys instead")

    def __repr__(self) -> str:
        state = "closed" if self._closed else (f"{_count(len(self._sas), 'SA')}, "
                                               f"{_count(len(self._entries), 'parser entry', 'parser entries')}")
        return f"<natt.Offload backend={self.backend!r} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise OffloadError(NdisStatus.FAILURE, "Offload: this instance is closed")

    # ------------------------------------------------------------------ OID layer

    def set_oid(self, oid: int, request: Any) -> NdisStatus:
        """Issue a set request; returns an :class:`NdisStatus` and never raises for bad contents.

        ``OID_TCP_TASK_IPSEC_ADD_UDPESP_SA`` takes an :class:`AddUdpEspSa` and
        writes the handles back on success (on failure ``offload_handle`` is set to 0); ``OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA``
        takes a :class:`DeleteUdpEspSa`. Any other OID gives ``INVALID_OID``.
        """
        if oid == OID_TCP_TASK_IPSEC_ADD_UDPESP_SA:
            status = self._add(request)[0]
            if status != NdisStatus.SUCCESS and isinstance(request, AddUdpEspSa):
                # OffloadHandle is an output (spec §3.3), and a failed SA gets NULL (§3.5). A
                # request used again as a template would otherwise still hold the handle of the
                # SA an earlier add installed, and the caller could take it for this one's.
                request.offload_handle = 0
            return status
        if oid == OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA:
            status, message = self._delete(request)
            if status != NdisStatus.SUCCESS:
                log.debug("delete refused: %s (%s)", message, status.name)
            return status
        # DEBUG, as refused adds and deletes are: the status already tells the caller, and a
        # miniport answers INVALID_OID to OIDs it does not handle as a matter of course (spec §3.1
        # table, "OID not handled"; NDIS traces that at verbose level, not as a warning). A WARNING
        # would reach the stderr of every program that has not set up logging (logging.lastResort)
        # for a request its author may send on purpose.
        log.debug("set refused: oid: %s (INVALID_OID)", _unset_oid(oid))
        return NdisStatus.INVALID_OID

    def query_oid(self, oid: int) -> OffloadCapabilities:
        """Answer a query request: only ``OID_TCP_TASK_OFFLOAD`` (the capabilities).

        Raises :class:`OffloadError` with ``INVALID_OID`` for any other OID.
        """
        if oid != OID_TCP_TASK_OFFLOAD:
            raise OffloadError(NdisStatus.INVALID_OID, f"oid: 0x{oid:08X} cannot be queried"
                               if isinstance(oid, int) and 0 <= oid <= 0xFFFFFFFF else f"oid: {shown(oid)} is not an OID")
        with self._lock:
            self._check_open()
            return OffloadCapabilities(
                backend=self.backend,
                conf_algos=_SUPPORTED_CONF,
                integrity_algos=_SUPPORTED_INTEG,
                encap_types=(UdpEncapType.IKE, UdpEncapType.OTHER),
                udp_esp_flags=0x01 | 0x02 | 0x10 | 0x20,
                transport=True,
                tunnel=True,
                esn=True,
                replay_window_min=REPLAY_WINDOW_MIN,
                replay_window_max=REPLAY_WINDOW_MAX,
                max_sas=self.max_sas,
                max_parser_entries=self.max_parser_entries,
                sa_count=len(self._sas),
                parser_entry_count=len(self._entries),
            )

    # ------------------------------------------------------------------ add

    def _add(self, req: Any) -> tuple[NdisStatus, str]:
        with self._lock:
            if self._closed:
                return NdisStatus.FAILURE, "Offload: this instance is closed"
            try:
                cfg, entry_plan = self._validate_add(req)
            except _Reject as r:
                log.debug("add refused: %s (%s)", r, r.status.name)
                return r.status, str(r)
            except Exception as e:      # noqa: BLE001 - set_oid answers with a status, whatever the request holds
                # A field of a kind no check foresaw (its own comparison or conversion raised).
                # Only the exception's type: its text could quote the field, and fields hold keys.
                log.debug("add refused: a field could not be read (%s)", type(e).__name__)
                return NdisStatus.INVALID_PARAMETER, f"request: a field could not be read ({type(e).__name__})"
            return self._install(req, cfg, entry_plan)

    def _validate_add(self, req: Any) -> tuple[SaConfig, tuple[Optional[int], UdpEncapType, int]]:
        """All checks of docs/semantics.md §6, in order; raises _Reject. Touches no table."""
        INVALID_PARAMETER, INVALID_DATA, NOT_SUPPORTED = (
            NdisStatus.INVALID_PARAMETER, NdisStatus.INVALID_DATA, NdisStatus.NOT_SUPPORTED)
        if not isinstance(req, AddUdpEspSa):
            raise _Reject(NdisStatus.INVALID_LENGTH, f"request: expected AddUdpEspSa, got {type(req).__name__}")
        # Integer fields go through _as_int: numpy integers are integers, and a value whose own
        # comparison raises is refused naming its field. Values are quoted through shown(): a
        # key passed in the wrong field must not reach a message or the log.
        flags = _as_int(req.flags)
        if flags not in (OFFLOAD_INBOUND_SA, OFFLOAD_OUTBOUND_SA):
            raise _Reject(INVALID_PARAMETER, f"flags: {shown(req.flags)} is neither OFFLOAD_INBOUND_SA nor "
                                             "OFFLOAD_OUTBOUND_SA")
        inbound = flags == OFFLOAD_INBOUND_SA
        sas = req.sec_assoc
        if not isinstance(sas, (list, tuple)) or not 1 <= len(sas) <= OFFLOAD_MAX_SAS:
            n = len(sas) if isinstance(sas, (list, tuple)) else type(sas).__name__
            raise _Reject(INVALID_DATA, f"sec_assoc: needs 1..{OFFLOAD_MAX_SAS} elements, got {n}")
        for k, sa in enumerate(sas):        # check 3 covers every element, before check 4's count
            if not isinstance(sa, OffloadSecurityAssociation):
                raise _Reject(INVALID_DATA, f"sec_assoc[{k}]: expected OffloadSecurityAssociation, "
                                            f"got {type(sa).__name__}")
        if len(sas) > 1:
            raise _Reject(NOT_SUPPORTED, "sec_assoc: only one ESP element is supported (AH cannot cross a NAT)")
        sa = sas[0]
        operation = _as_int(sa.operation)
        if operation == Operation.AUTHENTICATE:
            raise _Reject(NOT_SUPPORTED, "sec_assoc[0].operation: AUTHENTICATE (AH) is not supported over UDP")
        if operation != Operation.ENCRYPT:
            raise _Reject(INVALID_PARAMETER, f"sec_assoc[0].operation: {shown(sa.operation)} is not an Operation")
        if _as_int(sa.spi) == 0:
            raise _Reject(INVALID_PARAMETER, "sec_assoc[0].spi: 0 is reserved (RFC 4303 §2.1)")
        spi = _int("sec_assoc[0].spi", sa.spi, 1, 0xFFFFFFFF)

        conf, integ = sa.conf_algo, sa.integrity_algo
        ids = []
        for field, info, enum_type in (("conf_algo", conf, ConfAlgo), ("integrity_algo", integ, IntegrityAlgo)):
            if not isinstance(info, AlgoInfo):
                raise _Reject(INVALID_PARAMETER, f"sec_assoc[0].{field}: expected AlgoInfo, got {type(info).__name__}")
            ident = _as_int(info.identifier)
            if ident is None or ident not in enum_type._value2member_map_:
                raise _Reject(NOT_SUPPORTED, f"sec_assoc[0].{field}.identifier: {shown(info.identifier)} is not a "
                                             "known algorithm")
            ids.append(ident)
        conf_id, integ_id = ConfAlgo(ids[0]), IntegrityAlgo(ids[1])
        if conf_id in (ConfAlgo.DES, ConfAlgo.RESERVED):
            raise _Reject(NOT_SUPPORTED, f"sec_assoc[0].conf_algo.identifier: {conf_id.name} "
                                         "is not supported (single DES is broken, RFC 4835)")
        if conf_id == ConfAlgo.NONE and integ_id == IntegrityAlgo.NONE:
            raise _Reject(INVALID_PARAMETER, "sec_assoc[0]: conf_algo and integrity_algo cannot both be NONE "
                                             "(RFC 4303 §3.2)")
        suite = suite_for_algos(conf_id, integ_id)
        if suite is None:
            raise _Reject(NOT_SUPPORTED, f"sec_assoc[0]: {conf_id.name} with {integ_id.name} is not a supported "
                                         "combination")
        for field, info, want in (("conf_algo", conf, suite.conf_key_len), ("integrity_algo", integ, suite.integ_key_len)):
            if _as_int(info.key_len) != want:
                raise _Reject(INVALID_DATA, f"sec_assoc[0].{field}.key_len: {shown(info.key_len)} octets, "
                                            f"the algorithm needs {want}")
        key_mat = req.key_mat
        if not isinstance(key_mat, (bytes, bytearray, memoryview)):
            raise _Reject(INVALID_DATA, f"key_mat: expected bytes, got {type(key_mat).__name__}{_hex_hint(key_mat)}")
        try:
            objects = isinstance(key_mat, memoryview) and key_mat.format == "O"
        except ValueError:          # a released memoryview
            objects = False
        if objects:                 # a view of Python objects: their addresses are no key
            raise _Reject(INVALID_DATA, "key_mat: a memoryview of Python objects holds no key octets")
        try:
            key = bytearray(key_mat)
        except ValueError:          # a released memoryview
            raise _Reject(INVALID_DATA, "key_mat: cannot be read (a released memoryview?)") from None
        if len(key) != suite.conf_key_len + suite.integ_key_len:
            n = len(key)
            wipe_key(key)
            raise _Reject(INVALID_DATA, f"key_mat: {n} octets, the key lengths add up to "
                                        f"{suite.conf_key_len + suite.integ_key_len}")
        try:
            return self._validate_rest(req, inbound, spi, suite, key)
        except BaseException:       # _Reject, and what _add turns into INVALID_PARAMETER
            wipe_key(key)
            raise

    def _validate_rest(self, req: AddUdpEspSa, inbound: bool, spi: int, suite: Suite,
                       key: bytearray) -> tuple[SaConfig, tuple[Optional[int], UdpEncapType, int]]:
        INVALID_PARAMETER = NdisStatus.INVALID_PARAMETER
        if req.icv_len is not None:
            # RFC 4106 §8 allows 8, 12 and 16-octet GCM tags; every other transform has one ICV length.
            allowed = (8, 12, 16) if suite.cipher is Cipher.AES_GCM else (suite.icv_len,)
            icv = _int("icv_len", req.icv_len, 0, 255)
            if icv not in allowed:
                raise _Reject(INVALID_PARAMETER, f"icv_len: {icv} octets; this algorithm allows "
                                                 f"{', '.join(map(str, allowed))}")
            if suite.cipher is Cipher.AES_GCM:
                suite = SUITES[f"aes{suite.enc_key_len * 8}gcm{icv}"]

        _addr("src_addr", req.src_addr)    # validated, not matched (docs/semantics.md §6, "Filter fields")
        _mask("src_mask", req.src_mask)
        dst_addr = _addr("dst_addr", req.dst_addr)
        dst_mask = _mask("dst_mask", req.dst_mask)
        _int("protocol", req.protocol, 0, 255)
        _int("src_port", req.src_port, 0, 65535)
        _int("dst_port", req.dst_port, 0, 65535)
        src_tun = _addr("src_tunnel_addr", req.src_tunnel_addr)
        dst_tun = _addr("dst_tunnel_addr", req.dst_tunnel_addr)
        if bool(src_tun) != bool(dst_tun):
            missing = "src_tunnel_addr" if not src_tun else "dst_tunnel_addr"
            raise _Reject(INVALID_PARAMETER, f"{missing}: a tunnel SA needs both tunnel addresses (0 means transport)")
        tunnel = bool(dst_tun)
        if tunnel:
            key_addr, key_mask = dst_tun, 0xFFFFFFFF
        elif dst_addr:
            # NDIS leaves a zero mask beside a set address undefined; natt reads it as a host (/32).
            key_addr, key_mask = dst_addr & (dst_mask or 0xFFFFFFFF), dst_mask or 0xFFFFFFFF
        else:
            key_addr, key_mask = 0, 0

        esn = _as_bool(req.esn)
        if esn is None:
            raise _Reject(INVALID_PARAMETER, f"esn: expected True or False, got {shown(req.esn)}")
        window = _int("replay_window", req.replay_window, 0, REPLAY_WINDOW_MAX)
        if window and window < REPLAY_WINDOW_MIN:
            raise _Reject(INVALID_PARAMETER, f"replay_window: {window}; use 0 (off) or "
                                             f"{REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")
        if not suite.has_integrity:
            # Anti-replay rests on the ICV (RFC 4303 §3.4.3, spec §5.3): a confidentiality-only SA
            # has none, so its window is off whatever replay_window says (its default, 64, too).
            window = 0
            if esn:
                raise _Reject(INVALID_PARAMETER, "esn: extended sequence numbers need anti-replay, which "
                                                 "needs an integrity algorithm (RFC 4303 §3.4.3)")
        if esn and not window:
            raise _Reject(INVALID_PARAMETER, "esn: extended sequence numbers need anti-replay (replay_window > 0)")
        seq_max = (1 << 64) - 1 if esn else 0xFFFFFFFF
        replay_seq = _int("replay_seq", req.replay_seq, 0, seq_max)
        replay_oseq = _int("replay_oseq", req.replay_oseq, 0, seq_max)
        if replay_seq and not inbound:
            # An outbound SA would send from 1 whatever replay_seq says, and a number sent again
            # under the same key reuses an AES-GCM or ChaCha20-Poly1305 nonce (RFC 4106 §3.1,
            # RFC 7634 §2): the SA moved from elsewhere is the case where that happens.
            raise _Reject(INVALID_PARAMETER, "replay_seq: the top of an inbound SA's window; an outbound SA "
                                             "continues from replay_oseq, the last number it sent")
        replay_bitmap = req.replay_bitmap
        if replay_bitmap is not None:
            if not inbound or not window:
                raise _Reject(INVALID_PARAMETER, "replay_bitmap: only an inbound SA with anti-replay "
                                                 "(replay_window > 0) has a replay bitmap")
            bitmap = _as_int(replay_bitmap)
            if bitmap is None:
                raise _Reject(INVALID_PARAMETER, f"replay_bitmap: expected an integer, "
                                                 f"got {type(replay_bitmap).__name__}")
            # Not via _int: a 65536-bit value would make an unreadable (or, past Python's
            # int-to-str digit limit, failing) message.
            if bitmap < 0 or bitmap.bit_length() > window:
                got = "a negative value" if bitmap < 0 else f"{bitmap.bit_length()} bits"
                raise _Reject(INVALID_PARAMETER, f"replay_bitmap: must be 0 <= x < 2**replay_window "
                                                 f"(2**{window}); got {got}")
            replay_bitmap = bitmap
        replay_fail_run = _int("replay_fail_run", req.replay_fail_run, 0, 0xFFFFFFFF)
        if replay_fail_run and not (inbound and esn):
            raise _Reject(INVALID_PARAMETER, "replay_fail_run: only an inbound ESN SA counts its failed "
                                             "packets (RFC 4303 Appendix A3)")
        sport = _int("encap_src_port", req.encap_src_port, 1, 65535)
        dport = _int("encap_dst_port", req.encap_dst_port, 1, 65535)
        oa_src = _addr("nat_oa_src", req.nat_oa_src)
        oa_dst = _addr("nat_oa_dst", req.nat_oa_dst)
        if (oa_src or oa_dst) and (tunnel or not inbound):
            field = "nat_oa_src" if oa_src else "nat_oa_dst"
            raise _Reject(INVALID_PARAMETER, f"{field}: NAT-OA checksum repair applies to inbound transport SAs only "
                                             "(RFC 3948 §3.1.2)")
        # RFC 4301 §8.1: the DF bit of "the tunnel mode header that it emits" is set, cleared or
        # copied from the inner header, per SA. Only an outbound tunnel SA emits such a header.
        # Decap writes none; a transport SA's outer header is the datagram's own, whose DF its
        # sender chose (and whose ID it may have chosen for an atomic datagram, RFC 6864 §4.1, so
        # clearing DF there could let fragments of two datagrams be reassembled as one). Like
        # NAT-OA where it does not apply, "set" and "clear" are refused there, not ignored.
        df_bit = req.df_bit
        if not isinstance(df_bit, str) or df_bit not in DF_BIT_MODES:
            raise _Reject(INVALID_PARAMETER, f"df_bit: {shown(df_bit)} is not 'copy', 'set' or 'clear'")
        if df_bit != "copy" and inbound:
            raise _Reject(INVALID_PARAMETER, f"df_bit: {df_bit!r} applies to outbound SAs only (the DF bit "
                                             "of the tunnel header encap writes, RFC 4301 §8.1); use 'copy'")
        if df_bit != "copy" and not tunnel:
            raise _Reject(INVALID_PARAMETER, f"df_bit: {df_bit!r} applies to tunnel SAs only: a transport SA's "
                                             "outer header is the datagram's own, DF as its sender set it "
                                             "(RFC 4301 §8.1 is about the tunnel header); use 'copy'")

        entry = req.encap_type_entry
        if not isinstance(entry, EncapTypeEntry):
            raise _Reject(INVALID_PARAMETER, f"encap_type_entry: expected EncapTypeEntry, got {type(entry).__name__}")
        et = _as_int(entry.udp_encap_type)
        if et is None or et not in UdpEncapType._value2member_map_:
            raise _Reject(NdisStatus.NOT_SUPPORTED, f"encap_type_entry.udp_encap_type: {shown(entry.udp_encap_type)} "
                                                    "is not IKE (0) or OTHER (1)")
        encap_type = UdpEncapType(et)
        entry_handle: Optional[int] = 0
        port = 0
        if inbound:
            port = _int("encap_type_entry.dst_encap_port", entry.dst_encap_port, 1, 65535)
            h = _as_int(req.encap_type_entry_offld_handle)
            if h is None:
                raise _Reject(INVALID_PARAMETER, f"encap_type_entry_offld_handle: expected an integer, "
                                                 f"got {type(req.encap_type_entry_offld_handle).__name__}")
            if h:
                e = self._entries.get(h)
                if e is None:
                    raise _Reject(INVALID_PARAMETER, f"encap_type_entry_offld_handle: {shown(h)} names no parser entry")
                if (e.encap_type, e.port) != (encap_type, port):
                    raise _Reject(INVALID_PARAMETER, f"encap_type_entry_offld_handle: entry {h} is "
                                                     f"({e.encap_type.name}, {e.port}), not ({encap_type.name}, {port})")
                entry_handle = h
            else:
                entry_handle = self._entry_by_key.get((encap_type, port))
                if entry_handle is None:
                    other = self._entry_by_key.get((UdpEncapType(1 - encap_type), port))
                    if other is not None:
                        raise _Reject(INVALID_PARAMETER, f"encap_type_entry.dst_encap_port: port {port} is already "
                                                         f"parsed as {UdpEncapType(1 - encap_type).name} by entry {other}")
            if entry_handle is not None and (entry_handle, spi, key_addr, key_mask) in self._inbound_keys:
                raise _Reject(NdisStatus.INVALID_DATA, f"sec_assoc[0].spi: 0x{spi:08x} is already installed on parser "
                                                       f"entry {entry_handle} for the same destination")
        if len(self._sas) >= self.max_sas:
            raise _Reject(NdisStatus.RESOURCES, f"SA table full ({self.max_sas} SAs)")
        if inbound and entry_handle is None and len(self._entries) >= self.max_parser_entries:
            raise _Reject(NdisStatus.RESOURCES, f"parser-entry table full ({self.max_parser_entries} entries)")

        cfg = SaConfig(
            handle=0, inbound=inbound, spi=spi, suite=suite, tunnel=tunnel,
            dst_addr=key_addr, dst_mask=key_mask, src_tunnel_addr=src_tun, dst_tunnel_addr=dst_tun,
            entry_handle=0, encap_type=encap_type, port=port,
            encap_src_port=sport, encap_dst_port=dport, replay_window=window, esn=esn,
            replay_seq=replay_seq, replay_oseq=replay_oseq, nat_oa_src=oa_src, nat_oa_dst=oa_dst, key=key,
            replay_bitmap=replay_bitmap, replay_fail_run=replay_fail_run, df_bit=str(df_bit))
        return cfg, (entry_handle, encap_type, port)

    def _handle(self) -> int:
        h = self._next_handle
        self._next_handle += 1
        return h

    def _install(self, req: AddUdpEspSa, cfg: SaConfig,
                 entry_plan: tuple[Optional[int], UdpEncapType, int]) -> tuple[NdisStatus, str]:
        entry_handle, encap_type, port = entry_plan
        new_entry: Optional[_Entry] = None
        if cfg.inbound and entry_handle is None:
            new_entry = _Entry(self._handle(), encap_type, port)
            entry_handle = new_entry.handle
        cfg.handle = self._handle()
        cfg.entry_handle = entry_handle or 0
        try:
            if new_entry is not None:
                self._backend.add_entry(new_entry.handle, encap_type, port)
            try:
                self._backend.add_sa(cfg)
            except BaseException:
                if new_entry is not None:
                    self._backend.remove_entry(new_entry.handle)
                raise
        except Exception as e:  # the backend could not install: nothing stays behind
            wipe_key(cfg.key)
            log.warning("add of SA spi=0x%08x failed in the %s backend: %s", cfg.spi, self.backend, type(e).__name__)
            return NdisStatus.FAILURE, f"backend: could not install the SA ({type(e).__name__})"
        if new_entry is not None:
            self._entries[new_entry.handle] = new_entry
            self._entry_by_key[(encap_type, port)] = new_entry.handle
        if cfg.inbound:
            self._entries[cfg.entry_handle].refcount += 1
            self._inbound_keys.add((cfg.entry_handle, cfg.spi, cfg.dst_addr, cfg.dst_mask))
        self._sas[cfg.handle] = cfg
        req.offload_handle = cfg.handle
        req.encap_type_entry_offld_handle = cfg.entry_handle
        log.debug("added SA handle=%d spi=0x%08x %s %s entry=%d", cfg.handle, cfg.spi,
                  "in" if cfg.inbound else "out", cfg.suite.name, cfg.entry_handle)
        return NdisStatus.SUCCESS, ""

    # ------------------------------------------------------------------ delete

    def _delete(self, req: Any) -> tuple[NdisStatus, str]:
        with self._lock:
            if self._closed:
                return NdisStatus.FAILURE, "Offload: this instance is closed"
            if not isinstance(req, DeleteUdpEspSa):
                return NdisStatus.INVALID_LENGTH, f"request: expected DeleteUdpEspSa, got {type(req).__name__}"
            try:
                offload_handle, entry_handle = req.offload_handle, req.encap_type_entry_offld_handle
            except Exception as e:      # noqa: BLE001 - as in _add: a status, whatever the request holds
                return NdisStatus.INVALID_PARAMETER, f"request: a field could not be read ({type(e).__name__})"
            h, eh = _as_int(offload_handle), _as_int(entry_handle)
            cfg = None if h is None else self._sas.get(h)
            if cfg is None:
                return NdisStatus.INVALID_PARAMETER, f"offload_handle: {shown(offload_handle)} names no SA"
            if eh is None:
                return NdisStatus.INVALID_PARAMETER, (f"encap_type_entry_offld_handle: expected an integer, "
                                                      f"got {shown(entry_handle)}")
            if eh:
                entry = self._entries.get(eh)
                if entry is None:
                    return NdisStatus.INVALID_PARAMETER, f"encap_type_entry_offld_handle: {shown(eh)} names no parser entry"
                if eh != cfg.entry_handle:
                    return NdisStatus.INVALID_PARAMETER, (f"encap_type_entry_offld_handle: SA {h} does not use "
                                                          f"parser entry {eh}")
                if entry.refcount > 1:
                    return NdisStatus.INVALID_PARAMETER, (f"encap_type_entry_offld_handle: parser entry {eh} is "
                                                          f"still used by {entry.refcount - 1} other SA(s)")
            self._remove_sa(cfg)
            if eh:
                self._remove_entry(eh)
            return NdisStatus.SUCCESS, ""

    def _remove_sa(self, cfg: SaConfig) -> None:
        self._backend.remove_sa(cfg.handle)
        del self._sas[cfg.handle]
        self._inherited.discard(cfg.handle)
        if cfg.inbound:
            self._entries[cfg.entry_handle].refcount -= 1
            self._inbound_keys.discard((cfg.entry_handle, cfg.spi, cfg.dst_addr, cfg.dst_mask))
        wipe_key(cfg.key)
        log.debug("deleted SA handle=%d spi=0x%08x", cfg.handle, cfg.spi)

    def _remove_entry(self, handle: int) -> None:
        e = self._entries.pop(handle)
        del self._entry_by_key[(e.encap_type, e.port)]
        self._backend.remove_entry(handle)
        log.debug("deleted parser entry handle=%d (%s, %d)", handle, e.encap_type.name, e.port)

    # ------------------------------------------------------------------ Pythonic layer

    def add_sa(self, spi: int, key: Union[bytes, bytearray, memoryview, np.ndarray], suite: str, direction: str = "in", *,
               mode: str = "tunnel", src: Optional[Address] = None, dst: Optional[Address] = None,
               encap: Union[UdpEncapType, str] = UdpEncapType.OTHER, port: int = 4500, sport: int = 4500,
               dport: int = 4500,
               replay_window: int = 64, esn: bool = False, nat_oa_src: Optional[Address] = None,
               nat_oa_dst: Optional[Address] = None, replay_seq: int = 0, replay_oseq: int = 0,
               replay_bitmap: Optional[int] = None, replay_fail_run: int = 0, df_bit: str = "copy") -> int:
        """Install one SA and return its handle; raises :class:`OffloadError` naming the field at fault.

        ``suite`` is a strongSwan ESP proposal keyword (``aes128gcm16``,
        ``aes256-sha256``, ``chacha20poly1305``, … optionally ``-esn``).
        ``key`` is the encryption key (with its 4-octet salt for AEADs)
        followed by the integrity key. ``src``/``dst`` are the outer
        addresses: the tunnel ends (both required, neither 0.0.0.0) for ``mode="tunnel"``, the
        hosts for ``mode="transport"`` (``dst`` then restricts which
        destination the inbound SA accepts). Inbound SAs use the parser entry
        (``encap``, ``port``), created on first use; outbound SAs write UDP
        ports ``sport`` → ``dport`` and the framing ``encap``: a
        :class:`UdpEncapType` or its name, ``"OTHER"`` (RFC 3948) or ``"IKE"``.
        ``replay_seq``/``replay_bitmap`` (inbound) start the anti-replay window
        from a state :meth:`replay_state` exported (an outbound SA continues from
        ``replay_oseq``, the last number it sent, and refuses a ``replay_seq``), and ``replay_fail_run`` (inbound ESN)
        the count of consecutive failed packets ``sa_stats`` exports under that name, which
        decides the RFC 4303 Appendix A3 retries (docs/semantics.md §3).
        ``df_bit`` (outbound tunnel SAs) is the DF bit of the outer IPv4 header:
        ``"copy"`` from an inner IPv4 header (clear for inner IPv6; the default),
        ``"set"`` or ``"clear"`` (RFC 4301 §8.1); other SAs take ``"copy"`` only.
        """
        try:
            s, suite_esn = parse_suite(suite)
        except ValueError as e:
            raise OffloadError(NdisStatus.NOT_SUPPORTED, str(e)) from None
        # As the OID layer takes it.
        flag = _as_bool(esn)
        if flag is None:
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"esn: expected True or False, got {shown(esn)}")
        esn = flag
        if esn and suite.strip().lower().endswith("-noesn"):
            # Either one is a typo, as in a key file (natt.keys refuses the same).
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"esn: True, but the suite is {s.name}-noesn; "
                                                             "make them agree")
        # Any case, as suite and encap: "IN", "Tunnel".
        direction, mode, df_bit = (v.strip().lower() if isinstance(v, str) else v for v in (direction, mode, df_bit))
        if not isinstance(direction, str) or direction not in ("in", "out"):
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"direction: {shown(direction)} is neither 'in' nor 'out'")
        if not isinstance(mode, str) or mode not in ("tunnel", "transport"):
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"mode: {shown(mode)} is neither 'tunnel' nor 'transport'")
        if mode == "tunnel":
            # The OID layer reads two zero tunnel addresses as transport mode: a tunnel asked
            # for here must not become that.
            for name, value in (("src", src), ("dst", dst)):
                try:
                    unset = _addr(name, value) == 0
                except _Reject as r:
                    raise OffloadError(r.status, str(r)) from None
                if unset:
                    raise OffloadError(NdisStatus.INVALID_PARAMETER, f"{name}: a tunnel SA needs both src and dst, "
                                       f"and neither may be 0.0.0.0 (got {shown(value)})")
        if isinstance(encap, str):      # as key files and the other Pythonic arguments take it
            named = UdpEncapType.__members__.get(encap.strip().upper())
            if named is None:
                raise OffloadError(NdisStatus.NOT_SUPPORTED, f"encap: {shown(encap)} is neither 'OTHER' (RFC 3948) "
                                   f"nor 'IKE' (non-IKE marker)")
            encap = named
        if not isinstance(key, (bytes, bytearray, memoryview)):
            # Any buffer (a numpy array, array.array) as its octets, as memoryview(key) would be;
            # not an array of Python objects, whose buffer holds their addresses.
            try:
                if isinstance(key, np.ndarray) and key.dtype.hasobject:
                    raise TypeError
                key = memoryview(cast(Any, key))      # numpy's stubs do not call ndarray a Buffer
            except (TypeError, ValueError):
                raise OffloadError(NdisStatus.INVALID_DATA, f"key: expected bytes, got {type(key).__name__}"
                                   + (" of Python objects" if isinstance(key, np.ndarray) else _hex_hint(key))) from None
        try:
            n = memoryview(key).nbytes      # octets, whatever the item size of a memoryview
        except ValueError:                  # a released memoryview
            raise OffloadError(NdisStatus.INVALID_DATA, "key: cannot be read (a released memoryview?)") from None
        if n != s.key_len:
            raise OffloadError(NdisStatus.INVALID_DATA, f"key: {n} octets, {s.name} needs {s.key_len} "
                               f"({s.enc_key_len} key + {s.salt_len} salt + {s.auth_key_len} integrity)"
                               if s.aead else f"key: {n} octets, {s.name} needs {s.key_len} "
                               f"({s.enc_key_len} encryption + {s.auth_key_len} integrity)")
        req = AddUdpEspSa(
            flags=OFFLOAD_INBOUND_SA if direction == "in" else OFFLOAD_OUTBOUND_SA,
            sec_assoc=[OffloadSecurityAssociation(
                Operation.ENCRYPT, spi,
                integrity_algo=AlgoInfo(s.integ_algo, s.integ_key_len),
                conf_algo=AlgoInfo(s.conf_algo, s.conf_key_len))],
            encap_type_entry=EncapTypeEntry(encap, port),
            key_mat=key, replay_window=replay_window, esn=esn or suite_esn, icv_len=s.icv_len,
            encap_src_port=sport, encap_dst_port=dport,
            nat_oa_src=0 if nat_oa_src is None else nat_oa_src,
            nat_oa_dst=0 if nat_oa_dst is None else nat_oa_dst,
            replay_seq=replay_seq, replay_oseq=replay_oseq, replay_bitmap=replay_bitmap,
            replay_fail_run=replay_fail_run, df_bit=df_bit)
        if mode == "tunnel":      # both given and not 0 (checked above)
            req.src_tunnel_addr = 0 if src is None else src
            req.dst_tunnel_addr = 0 if dst is None else dst
        else:
            req.src_addr = 0 if src is None else src
            req.dst_addr = 0 if dst is None else dst
        status, message = self._add(req)
        if status != NdisStatus.SUCCESS:
            raise OffloadError(status, _pythonic_field(message))
        return req.offload_handle

    def delete_sa(self, handle: SupportsIndex) -> None:
        """Delete an SA; its parser entry goes too when this was the entry's last SA."""
        with self._lock:
            self._check_open()
            self._drop_sa(self._sa(handle))

    def _drop_sa(self, cfg: SaConfig, keep: frozenset[int] = frozenset()) -> None:
        """Remove an SA, and its parser entry when that has no SA left, unless the entry is one
        of ``keep`` (the caller holds the lock)."""
        entry = self._entries.get(cfg.entry_handle) if cfg.inbound else None
        self._remove_sa(cfg)
        if entry is not None and entry.refcount == 0 and entry.handle not in keep:
            self._remove_entry(entry.handle)

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[list[int]]:
        """For callers that add several SAs as one (``keys.install``, ``traffic.make_sa_pair``):
        they append each new SA's handle to the list this yields. If the block raises, those SAs
        are deleted, and with them the parser entries they brought and no other, so the tables
        are as they were: ``delete_sa`` would also take an entry that had no SA before the block
        (an OID delete with entry handle 0 leaves one), which the caller did not add."""
        with self._lock:
            before = frozenset(self._entries)
        added: list[int] = []
        try:
            yield added
        except BaseException:
            with self._lock:
                for h in added:
                    cfg = self._sas.get(h)
                    if cfg is not None:     # else deleted in the block, or the Offload closed
                        self._drop_sa(cfg, keep=before)
            raise

    def sa_stats(self, handle: SupportsIndex) -> SaStats:
        """Counters and settings of one SA, like ``ip -s xfrm state`` (never any key).

        Settings: ``handle``, ``spi``, ``direction`` ("in"/"out"), ``mode``
        ("tunnel"/"transport"), ``suite`` (its canonical keyword), ``esn``,
        ``replay_window``, ``encap`` ("OTHER"/"IKE"), ``port`` and ``entry_handle``
        (the parser entry; 0 for an outbound SA), ``df_bit``.

        Counters since the SA was added, by the status of the packets it handled:
        ``packets`` (decap: OK and DUMMY; encap: OK), ``bytes`` (decap: output
        octets of OK packets; encap: input octets of OK packets), ``auth_failures``,
        ``replays``, ``malformed``, ``dummy``, ``protocol``, ``seq_overflows``,
        ``errors``, and ``esn_resyncs`` (packets an ESN SA authenticated only by the
        RFC 4303 Appendix A3 retry). Packets refused before an SA was found (NOT_ESP,
        NO_SA, ...) count nowhere here: ``res.counts()`` has them.

        Sequence state: ``replay_seq`` (inbound: the highest number authenticated),
        ``replay_fail_run`` (inbound ESN: consecutive AUTH_FAILED packets) and
        ``replay_oseq`` (outbound: the last number sent), what ``add_sa`` takes under
        the same names to move the SA to another instance (see :meth:`replay_state`). To move an
        outbound SA, read ``replay_oseq`` after its last ``encap`` (stop encap with the SA, read,
        delete): a number sent after the read would be sent again by the new instance, and with
        AES-GCM, AES-GMAC and ChaCha20-Poly1305 it is the nonce (RFC 4106 §3.1).
        """
        with self._lock:
            self._check_open()
            cfg = self._sa(handle)
            stats: dict[str, Any] = {
                "handle": cfg.handle, "spi": cfg.spi, "direction": "in" if cfg.inbound else "out",
                "mode": "tunnel" if cfg.tunnel else "transport", "suite": cfg.suite.name,
                "esn": cfg.esn, "replay_window": cfg.replay_window,
                "encap": cfg.encap_type.name, "port": cfg.port, "entry_handle": cfg.entry_handle,
                "df_bit": cfg.df_bit,
            }
            stats.update(self._backend.counters(cfg.handle))   # the int, not the caller's object
            # A cast: the counters come from the backend as dict[str, int] (COUNTER_NAMES and the
            # sequence state), which mypy cannot merge into a TypedDict; test_datapath checks that
            # SaStats names exactly the keys both backends give, for either direction.
            return cast(SaStats, stats)

    def replay_state(self, handle: SupportsIndex) -> tuple[int, int]:
        """The anti-replay state of an inbound SA with a window, as ``(top, bitmap)``.

        ``top`` is the highest authenticated sequence number (64-bit with ESN); bit ``i`` of
        ``bitmap`` (``replay_window`` bits) is set when number ``top - i`` has been seen
        (numbers <= 0 read as seen). Installing the SA elsewhere with ``replay_seq=top,
        replay_bitmap=bitmap`` gives exactly the same REPLAY/OK decisions from then on: this
        moves an SA between instances without replays, like ``ip xfrm state``
        replay-seq/replay-bitmap. An ESN SA's decisions also depend on its count of consecutive
        failed packets (RFC 4303 Appendix A3): pass ``replay_fail_run=sa_stats(handle)
        ["replay_fail_run"]`` too, read with no ``decap`` of the SA in between. Read atomically
        with respect to ``decap`` batches.
        Raises :class:`OffloadError` (INVALID_PARAMETER) for an unknown handle, an outbound
        SA or an SA without anti-replay (``replay_window=0``).
        """
        with self._lock:
            self._check_open()
            cfg = self._sa(handle)
            if not cfg.inbound or not cfg.replay_window:
                raise OffloadError(NdisStatus.INVALID_PARAMETER,
                                   f"handle: {shown(handle)} is not an inbound SA with anti-replay")
            return self._backend.replay_state(cfg.handle)

    def claim_after_fork(self, handle: SupportsIndex) -> None:
        """Let this process encap with outbound SA ``handle``, which it got by ``fork()``.

        After a fork both processes hold the SA at the same sequence number. If both sent with
        it, they would send the same sequence numbers, and with AES-GCM, AES-GMAC and
        ChaCha20-Poly1305, whose IV is the sequence number, the same nonces under one key: that
        gives away the XOR of two plaintexts and lets anyone forge packets (RFC 4106 §3.1, RFC
        7634 §2). So encap in the child refuses an SA installed before the fork until it is
        claimed here; claim it in the one process that will send with it (a daemon after it has
        forked into the background, a worker that owns the SA). SAs installed after the fork, and
        decap, need nothing. The parent is never restricted: it cannot know about its children.
        """
        with self._lock:
            self._inherited.discard(self._outbound_sa(handle, "only outbound SAs are claimed").handle)

    def _outbound_sa(self, handle: SupportsIndex, why: str) -> SaConfig:
        """The open Offload's outbound SA ``handle`` (the caller holds the lock), else OffloadError
        saying ``why`` an inbound one will not do."""
        self._check_open()
        cfg = self._sa(handle)
        if cfg.inbound:
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"handle: SA {handle} is inbound; {why}")
        return cfg

    def sa_handles(self) -> list[int]:
        """Handles of the installed SAs, in the order they were added."""
        with self._lock:
            self._check_open()
            return list(self._sas)

    def _sa(self, handle: Any) -> SaConfig:
        h = _as_int(handle)
        cfg = None if h is None else self._sas.get(h)
        if cfg is None:
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"handle: {shown(handle)} names no SA")
        return cfg

    # ------------------------------------------------------------------ data path

    def decap(self, packets: Union[PacketBatch, Iterable[Any]], *, threads: Optional[SupportsIndex] = None,
              out: Optional[DecapResult] = None) -> DecapResult:
        """Decapsulate a batch of received IPv4 packets; one result per packet, never raises on content.

        ``packets`` is a :class:`PacketBatch` or an iterable of bytes-like
        packets. ``threads=N`` splits the work over N native threads (fast
        backend) with results identical to ``threads=None``; a batch of less
        than 256 KiB of input runs on the calling thread alone, as waking the
        threads would cost more than they bring (BENCHMARKS.md, "Small
        batches"). Pass a previous result as ``out`` to reuse its buffers.
        """
        # Exact-type tests before the calls: at a batch of one the Python around the kernel is
        # most of the cost (BENCHMARKS.md, "fixed cost").
        batch = packets if type(packets) is PacketBatch else as_batch(packets)
        if threads is not None:
            threads = _check_threads(threads)
        if out is None:
            out = DecapResult()
        elif not isinstance(out, DecapResult):
            raise TypeError(f"out: expected a DecapResult, got {type(out).__name__}")
        key, me = id(out), _get_ident()
        if _FILLING.setdefault(key, me) != me:
            _refuse_shared(out)
        try:
            out._prepare(batch, 0)      # raises before it changes out, or lays out the whole batch
            try:
                if self._dp_lock is None and not self._closed:      # _run without its frame
                    self._backend.decap(batch, out, threads)
                else:
                    self._run(self._backend.decap, batch, out, threads)
            except BaseException:
                out._clear()            # laid out for this batch, never filled
                raise
        except BackendClosed:
            # close() from another thread landed after the check above (the fast backend runs
            # batches outside self._lock): the same error as a call after close (semantics §6).
            raise OffloadError(NdisStatus.FAILURE, "Offload: this instance is closed") from None
        finally:
            del _FILLING[key]
        return out

    def encap(self, packets: Union[PacketBatch, Iterable[Any]], handle: SupportsIndex, *,
              threads: Optional[SupportsIndex] = None,
              out: Optional[EncapResult] = None) -> EncapResult:
        """Encapsulate inner IPv4 (tunnel: IPv4 or IPv6) datagrams with outbound SA ``handle``.

        Returns UDP-encapsulated ESP IPv4 packets, one result per input.
        Raises :class:`OffloadError` if ``handle`` is not an outbound SA.

        Send only the packets whose status is ``OK`` (``res[res.status == Status.OK]``): as the
        status table has it, a ``MALFORMED`` or ``ERROR`` packet's output is its input unchanged,
        which here is the cleartext inner datagram (``SEQ_OVERFLOW``'s is empty).

        ``threads`` and ``out`` work as in :meth:`decap`.
        """
        # Exact-type tests before the calls: at a batch of one the Python around the kernel is
        # most of the cost (BENCHMARKS.md, "fixed cost").
        batch = packets if type(packets) is PacketBatch else as_batch(packets)
        if threads is not None:
            threads = _check_threads(threads)
        if out is None:
            out = EncapResult()
        elif not isinstance(out, EncapResult):
            raise TypeError(f"out: expected an EncapResult, got {type(out).__name__}")
        key, me = id(out), _get_ident()
        if _FILLING.setdefault(key, me) != me:
            _refuse_shared(out)
        try:
            with self._lock:
                cfg = self._outbound_sa(handle, "encap needs an outbound SA")
                if cfg.handle in self._inherited:
                    raise OffloadError(NdisStatus.INVALID_PARAMETER, (
                        f"handle: SA {cfg.handle} was installed before this process forked, so the parent "
                        f"has it too: sending with it in both would repeat sequence numbers (and AEAD "
                        f"nonces); call claim_after_fork({cfg.handle}) in the one process that sends with it"))
            out._prepare(batch, ENCAP_OVERHEAD)
            try:
                self._run(self._backend.encap, batch, cfg.handle, out, threads)
            except BaseException:
                out._clear()            # laid out for this batch, never filled
                raise
        except KeyError:
            # Deleted by another thread between the check above and the batch.
            raise OffloadError(NdisStatus.INVALID_PARAMETER, f"handle: {shown(handle)} names no SA") from None
        except BackendClosed:
            # Closed by another thread between the check above and the batch (as in decap).
            raise OffloadError(NdisStatus.FAILURE, "Offload: this instance is closed") from None
        finally:
            del _FILLING[key]
        return out

    def _run(self, fn: Any, *args: Any) -> None:
        if self._dp_lock is None:
            self._check_open()
            fn(*args)
            return
        with self._dp_lock:
            self._check_open()
            fn(*args)


# fork(): every Offload of the process is held between calls while the process forks. A child
# forked while another thread was inside a batch or a control call would otherwise start with
# that call's lock held by a thread it does not have, and hang on its first call; its tables
# could be half-updated too. So the fork waits for running calls to finish (a long batch delays
# it). In the child, the outbound SAs become inherited (claim_after_fork).
_LIVE: "weakref.WeakSet[Offload]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()        # held through the fork: no Offload is made meanwhile
_FORK_HELD: list[Offload] = []


def _fork_prepare() -> None:
    _LIVE_LOCK.acquire()
    _FORK_HELD.extend(_LIVE)
    for nic in _FORK_HELD:
        nic._lock.acquire()           # waits, with the GIL released, for a call to end
        prepare = getattr(nic._backend, "_fork_prepare", None)
        if prepare is not None:
            prepare()                 # the fast backend's mutex (its batches do not take _lock)


def _fork_release(child: bool) -> None:
    for nic in reversed(_FORK_HELD):
        release = getattr(nic._backend, "_fork_release", None)
        if release is not None:
            release()
        if child:
            nic._inherited = {h for h, cfg in nic._sas.items() if not cfg.inbound}
        nic._lock.release()
    _FORK_HELD.clear()
    _LIVE_LOCK.release()


os.register_at_fork(before=_fork_prepare, after_in_parent=lambda: _fork_release(False),
                    after_in_child=lambda: _fork_release(True))


# The results decap/encap calls are filling right now: id -> the filling thread. Growing a
# result replaces its arrays, so a result passed as ``out=`` to two calls at once would lose the
# first call's output (and a kernel without references to the old arrays would write into freed
# memory): the second call is refused instead. dict.setdefault is one atomic step, whatever the
# thread, and costs far less than a lock per call (a batch of one takes about 2 us in all).
_FILLING: dict[int, int] = {}
_get_ident = threading.get_ident


def _refuse_shared(out: BatchResult) -> None:
    raise ValueError(f"out: this {type(out).__name__} is being filled by another decap/encap call "
                     "right now; give each thread its own result")


# OID field -> add_sa() argument, so add_sa's errors name what the caller wrote.
_PYTHONIC_FIELDS = (
    ("encap_type_entry.dst_encap_port", "port"), ("encap_type_entry.udp_encap_type", "encap"),
    ("encap_src_port", "sport"), ("encap_dst_port", "dport"), ("src_tunnel_addr", "src"),
    ("dst_tunnel_addr", "dst"), ("src_addr", "src"), ("dst_addr", "dst"), ("sec_assoc[0].spi", "spi"),
    ("key_mat", "key"), ("icv_len", "suite"),
)


def _pythonic_field(message: str) -> str:
    for oid_name, arg in _PYTHONIC_FIELDS:
        if message.startswith(oid_name + ":"):
            return arg + message[len(oid_name):]
    return message


def _hex_hint(key: Any) -> str:
    """What to do with a key given as text: key files and ``ip xfrm state`` print keys in hex,
    which is what a string in a key field most likely holds (never quoted: it may be the key)."""
    if isinstance(key, str):
        return " (a key in hex? pass bytes.fromhex(...))"
    return ""


#: OIDs natt knows but does not set, named in the log of a refused ``set_oid``.
_OID_NAMES = {
    OID_TCP_TASK_OFFLOAD: "OID_TCP_TASK_OFFLOAD: a query, see query_oid",
    # IPsec offload v1's SAs for ESP and AH straight over IP (spec §3.1), the likely mix-up with
    # the UDP-ESP pair: natt offloads only UDP-encapsulated ESP.
    0xFC010202: "OID_TCP_TASK_IPSEC_ADD_SA: ESP/AH without UDP encapsulation",
    0xFC010203: "OID_TCP_TASK_IPSEC_DELETE_SA: ESP/AH without UDP encapsulation",
}


def _unset_oid(oid: Any) -> str:
    """Why ``set_oid`` answers ``oid`` with INVALID_OID, for the log: the OID in hex and its name
    when natt knows it. A value that is no 32-bit OID goes through ``shown``, since the caller
    may have passed a key where the OID belongs (SECURITY.md)."""
    v = _as_int(oid)
    if v is None or not 0 <= v <= 0xFFFFFFFF:
        return f"{shown(oid)} is not an OID"
    name = _OID_NAMES.get(v)
    return (f"0x{v:08X}" + (f" ({name})" if name else "") + " is not one natt sets; it sets "
            "OID_TCP_TASK_IPSEC_ADD_UDPESP_SA and OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA")


def _as_int(value: Any) -> Optional[int]:
    """An integer of any integer type as a Python int, or None for bool and non-integers. Numbers
    taken from numpy arrays (``res.sa`` holds int64 handles; saved replay states, SPI tables) are
    integers to the caller; nothing that rounds (a float) is."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except Exception:   # noqa: BLE001 - not TypeError only: a value whose __index__ raises is no integer
        return None


def _as_bool(value: Any) -> Optional[bool]:
    """``True``/``False`` for a bool or a numpy bool (one read from an array is a bool all the
    same, as numpy integers are integers to :func:`_as_int`), else None: no truthiness, since
    ``esn=1`` or ``esn=[]`` is a mistake, not a choice."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return None


MAX_THREADS = 256      # more is clamped to the fast backend's pool size anyway


def _check_threads(threads: Optional[SupportsIndex]) -> Optional[int]:
    """``threads`` as None or a Python int (numpy integers too, as everywhere), else ValueError."""
    if threads is None:
        return None
    t = _as_int(threads)
    if t is None or not 1 <= t <= MAX_THREADS:
        raise ValueError(f"threads: expected None or an integer 1..{MAX_THREADS}, got {shown(threads)}")
    return t
