"""Decrypt capture sets on a Dask cluster with exactly the per-SA semantics of one machine.

``pip install '.[dask]'`` in a checkout, ``pip install 'natt[dask]'`` from a package index
(``dask`` and ``distributed``). One call::

    from distributed import Client
    from natt.dask import decap_captures

    with Client("tcp://scheduler:8786") as client:
        stats = decap_captures(["day1.pcapng", "day2.pcapng"], "keys.json", "clear/", client)
    print(stats.table())

What "the same as one machine" means
------------------------------------

The reference is a single process that installs every SA of the key file inbound on one
:class:`natt.Offload` and decapsulates the captures **in the order given, each capture's frames
in file order** (``natt decap`` run on each file in turn with one Offload kept across them).
Every output frame, every status and every per-SA count of :func:`decap_captures` equals that
run's, replay and ESN decisions included; ``tests/test_dask.py`` checks it, with a worker killed
half-way through as well.

How the work is spread
----------------------

A NIC spreads received packets over queues with RSS and keeps each flow on one queue; this module
does the same with Dask tasks, the flow being an inbound SA's lookup key (parser-entry port, SPI):

1. ``scan`` (one task per capture, on a worker): walks the record headers and cuts the file into
   ranges of about ``chunk_size`` octets at record boundaries. Each range is read later on its
   own, behind a copy of the file header (pcapng: every Section Header and Interface Description
   Block before it), with :class:`natt.pcap.PcapReader` -- so a range parses exactly as it does
   inside the whole file.
2. ``split`` (one task per range): reads the range and routes every IPv4 frame to a *lane*: the
   lane of its (UDP destination port, SPI) when that is an SA's key. Lanes are fixed up front,
   keys dealt round-robin in key-file order, like an RSS indirection table, and a lane's Offload
   holds only its own SAs. Any other frame cannot reach an SA, so no lane's anti-replay state can
   change its result, but its port's parser entry can (keepalive, IKE, ``NO_SA`` rather than
   ``NOT_ESP``): on the port of some SA it goes to one of the lanes holding an SA on that port
   (round-robin among them), else to any lane.
3. ``step`` (lane x range): each lane is a chain of tasks, one per range in input order, so all
   packets of one SA are decapsulated in input order by one task at a time. A step hands the next
   one the lane's anti-replay state -- per SA the highest authenticated number ``T``, the
   window bitmap (RFC 4303 §3.4.3) and an ESN SA's count of consecutive failed packets (its
   resynchronisation, Appendix A3). A step that finds the lane's Offload of the previous step
   cached on its worker goes on with it; otherwise (the lane moved, or a worker died and Dask
   re-ran the chain) it rebuilds the state exactly: the state is exported from the data path at
   the end of each step (:meth:`natt.Offload.replay_state`, ``sa_stats``' ``replay_fail_run``)
   and the SA installed again with ``replay_seq=T, replay_bitmap=bitmap, replay_fail_run=...``,
   like ``ip xfrm state`` replay-seq/replay-bitmap.
   Lanes are pinned (loosely) to workers so the cache normally hits.
4. ``part`` (one task per range): re-reads the range, merges the lanes' results back into frame
   order and writes the range's records to a part file next to the output; ``finish`` (one per
   capture) writes the file header and concatenates the parts. A classic pcap output is the file
   ``natt decap`` writes, octet for octet; a pcapng output has the same records and interfaces,
   but an Interface Description Block declared mid-file may sit a few records away: natt's
   writer declares an interface at the start of the chunk whose records first name it, so its
   place follows the chunking (as it does for ``natt decap`` with another ``--chunk-size``).
   Interfaces that no record names come at the end, after the last part's records, as ``natt
   decap`` writes them when it closes its output.

Keys travel once per job: the SA set is one data key of the graph (held by the scheduler, so a
worker replacing a dead one gets it again) and every task refers to it; task keys are ``natt-<stage>-<job id>`` with integer indexes and never hold key material, and
neither do logs, task results or the dashboard's task descriptions.

Storage: every worker must see the captures and the output directory at the same paths (NFS,
CephFS, a cloud bucket mounted with FUSE, or one machine). The client needs neither.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import mmap
import operator
import os
import re
import shutil
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Optional, TypeVar, Union, overload

import numpy as np

from . import keys as keyfile
from . import pcap
from ._batch import PacketBatch, copy_segments
from ._constants import Status, UdpEncapType
from ._files import file_identity, give_as
from ._offload import Offload, _check_threads, backends
from ._capture import CaptureStats, InboundSas, sa_index

__all__ = ["decap_captures"]

PathLike = Union[str, "os.PathLike[str]"]

# ----------------------------------------------------------------------------------------------
# Scanning: cut a capture into independently readable ranges


_PCAP_MAGICS = {0xA1B2C3D4: 16, 0xA1B23C4D: 16, 0xA1B2CD34: 24}   # magic -> record header octets
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_BOM = 0x1A2B3C4D
_MAX_RECORD = 1 << 28          # natt.pcap's limit: a longer record is corruption


@dataclasses.dataclass(frozen=True)
class _Range:
    """Octets ``[start, end)`` of a capture, read behind ``plan.prefixes[prefix]``."""

    start: int
    end: int
    prefix: int
    top: int = 0       # pcapng: 1 + the highest interface index a packet of the range names


@dataclasses.dataclass(frozen=True)
class _FilePlan:
    """How one capture is cut: its format, the header copies and the ranges in file order."""

    index: int
    path: str
    output: str
    fmt: str                       # "pcap" or "pcapng"
    prefixes: tuple[bytes, ...]    # file header (pcap) / SHBs and IDBs so far (pcapng)
    ranges: tuple[_Range, ...]
    size: int


def _scan(index: int, path: str, output: str, chunk_size: int) -> _FilePlan:
    """Walk ``path``'s record headers (no packet data) and cut it into ranges of about
    ``chunk_size`` octets. Anything the walk cannot make sense of (a truncated or corrupt record)
    goes, with the rest of the file, into the last range, where PcapReader reports it."""
    with pcap.PcapReader(path) as r:          # validates the file header, raises PcapError
        fmt = r.format
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if fmt == "pcap":
            prefixes, cuts = _walk_pcap(mm, size, chunk_size)
        else:
            prefixes, cuts = _walk_pcapng(mm, size, chunk_size)
    finally:
        mm.close()
    ranges = tuple(_Range(*c) for c in cuts)
    return _FilePlan(index, path, output, fmt, tuple(prefixes), ranges, size)


def _walk_pcap(mm: mmap.mmap, size: int, chunk_size: int) -> tuple[list[bytes], list[tuple[int, ...]]]:
    magic_le = struct.unpack_from("<I", mm, 0)[0]
    order = "<" if magic_le in _PCAP_MAGICS else ">"
    hdr_len = _PCAP_MAGICS[struct.unpack_from(order + "I", mm, 0)[0]]
    cap_at = struct.Struct(order + "I")
    cuts: list[tuple[int, ...]] = []
    start = pos = 24
    while pos + hdr_len <= size:
        rec = hdr_len + cap_at.unpack_from(mm, pos + 8)[0]
        if rec > _MAX_RECORD or pos + rec > size:
            break
        if pos > start and pos + rec - start > chunk_size:
            cuts.append((start, pos, 0))
            start = pos
        pos += rec
    if start < size:
        cuts.append((start, size, 0))
    return [bytes(mm[:24])], cuts


def _walk_pcapng(mm: mmap.mmap, size: int, chunk_size: int) -> tuple[list[bytes], list[tuple[int, ...]]]:
    prefixes: list[bytes] = []
    cuts: list[tuple[int, ...]] = []
    closed = b""         # SHB + IDBs of every finished section
    section = b""        # SHB + IDBs of the current section so far
    n_closed = 0         # interfaces of the finished sections: the current section's index base
    n_section = 0
    order = "<"
    start = pos = 0
    top = 0
    prefix_at_start = b""

    def prefix_id(p: bytes) -> int:
        if not prefixes or prefixes[-1] != p:
            prefixes.append(p)
        return len(prefixes) - 1

    while pos + 12 <= size:
        btype = struct.unpack_from(order + "I", mm, pos)[0]
        if btype == _PCAPNG_SHB:          # the same value in both byte orders
            bom = mm[pos + 8: pos + 12]
            if bom == struct.pack("<I", _PCAPNG_BOM):
                order = "<"
            elif bom == struct.pack(">I", _PCAPNG_BOM):
                order = ">"
            else:
                break
        blen = struct.unpack_from(order + "I", mm, pos + 4)[0]
        if blen < 12 or blen % 4 or blen > _MAX_RECORD or pos + blen > size:
            break
        if pos > start and pos + blen - start > chunk_size:
            cuts.append((start, pos, prefix_id(prefix_at_start), top))
            start = pos
            top = 0
            prefix_at_start = closed + section
        if btype == _PCAPNG_SHB:
            closed += section
            n_closed += n_section
            section, n_section = bytes(mm[pos: pos + blen]), 0
        elif btype == _PCAPNG_IDB:
            section += bytes(mm[pos: pos + blen])
            n_section += 1
        elif btype == 6 and blen >= 12:    # Enhanced Packet Block: 32-bit interface id
            top = max(top, n_closed + struct.unpack_from(order + "I", mm, pos + 8)[0] + 1)
        elif btype == 2 and blen >= 12:    # obsolete Packet Block: 16-bit interface id
            top = max(top, n_closed + struct.unpack_from(order + "H", mm, pos + 8)[0] + 1)
        elif btype == 3:                   # Simple Packet Block: the section's first interface
            top = max(top, n_closed + 1)
        pos += blen
    if start < size:
        cuts.append((start, size, prefix_id(prefix_at_start), top))
    return prefixes, cuts


class _NamedBytesIO(io.BytesIO):
    """A BytesIO with a ``name``, so PcapReader's messages name the capture."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


_AT_OFFSET = re.compile(r" \(at file offset \d+\)$")


@dataclasses.dataclass(frozen=True)
class _RangeSpec:
    """Everything a task needs to read one range (small: tasks carry it, not the whole plan)."""

    path: str
    fmt: str
    header: bytes        # the capture's first prefix (pcap: its 24-octet file header)
    prefix: bytes
    start: int
    end: int


def _range_spec(plan: _FilePlan, r: int) -> _RangeSpec:
    rng = plan.ranges[r]
    return _RangeSpec(plan.path, plan.fmt, plan.prefixes[0] if plan.prefixes else b"",
                      plan.prefixes[rng.prefix], rng.start, rng.end)


def _read_range(rs: _RangeSpec) -> tuple[list[pcap.Chunk], list[pcap.Interface], Optional[str]]:
    """The chunks of a range, parsed by PcapReader exactly as inside the whole file, every
    interface of the file up to the range's end (those of the prefix included), and, when the
    file ends inside the range's last record, PcapTruncated's message (the chunks are those
    before it, as ``natt decap`` keeps them)."""
    with open(rs.path, "rb") as f:
        f.seek(rs.start)
        data = f.read(rs.end - rs.start)
    if len(data) != rs.end - rs.start:
        raise pcap.PcapError(f"{rs.path}: the file shrank while it was being read", rs.start + len(data))
    prefix = rs.prefix if rs.start else b""
    stream = _NamedBytesIO(prefix + data, rs.path)
    # One read of the whole range: a chunk ends only where the file starts a new pcapng section
    # (a range is about chunk_size octets, so only one near MAX_CHUNK_SIZE reads in two).
    reader = pcap.PcapReader(stream, chunk_size=min(pcap.MAX_CHUNK_SIZE,
                                                    max(pcap.MIN_CHUNK_SIZE, len(prefix) + len(data) + 1)))
    shift = rs.start - len(prefix)
    chunks: list[pcap.Chunk] = []
    try:
        chunks.extend(reader)
    except pcap.PcapError as e:
        # Offsets inside the synthetic stream -> offsets in the capture.
        off = None if e.offset is None else e.offset + shift
        error = type(e)(_AT_OFFSET.sub("", str(e)), off)
        if not isinstance(e, pcap.PcapTruncated):
            raise error from None
        return chunks, reader.interfaces, str(error)
    return chunks, reader.interfaces, None


# ----------------------------------------------------------------------------------------------
# Routing (RSS by SA lookup key)


class _SaSet:
    """The job's SA set as it travels to the workers (one data key of the job's graph). Never
    shows a key."""

    def __init__(self, specs: Sequence[keyfile.SaSpec]) -> None:
        self.specs = list(specs)
        self._routes: dict[int, _Routing] = {}

    def __repr__(self) -> str:
        return f"<natt SA set: {len(self.specs)} SAs>"

    def __getstate__(self) -> dict[str, Any]:
        return {"specs": self.specs}           # the routing memo is rebuilt where it is needed

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.specs = state["specs"]
        self._routes = {}

    def routing(self, lanes: int) -> "_Routing":
        """The routing for ``lanes`` lanes, computed once per process (every split and step
        needs it; with many SAs it is not free)."""
        r = self._routes.get(lanes)
        if r is None:
            r = self._routes[lanes] = _routing(self.specs, lanes)
        return r

    def __sizeof__(self) -> int:
        return 64 + 128 * len(self.specs)


@dataclasses.dataclass(frozen=True)
class _Routing:
    """Parser entries and the lane of every SA lookup key (parser port, SPI)."""

    framing: dict[int, int]                 # port -> UdpEncapType value
    port_lanes: dict[int, np.ndarray]       # port -> the lanes holding an SA on it (a parser entry)
    keys: np.ndarray                        # sorted lookup keys, port << 32 | spi
    key_lanes: np.ndarray                   # the lane of each
    lane_sas: tuple[tuple[int, ...], ...]   # per lane, the key-file indexes of the SAs it holds
    lanes: int


def _routing(specs: Sequence[keyfile.SaSpec], lanes: int) -> _Routing:
    framing: dict[int, int] = {}
    lane_of_key: dict[int, int] = {}
    port_lanes: dict[int, set[int]] = {}
    lane_sas: list[list[int]] = [[] for _ in range(lanes)]
    for i, s in enumerate(specs):
        framing.setdefault(s.port, int(s.encap))
        key = s.port << 32 | s.spi
        lane = lane_of_key.setdefault(key, len(lane_of_key) % lanes)
        port_lanes.setdefault(s.port, set()).add(lane)
        lane_sas[lane].append(i)
    keys = np.array(sorted(lane_of_key), np.int64)
    return _Routing(framing, {p: np.array(sorted(v), np.int64) for p, v in port_lanes.items()}, keys,
                    np.array([lane_of_key[k] for k in keys.tolist()], np.int64),
                    tuple(tuple(x) for x in lane_sas), lanes)


def _gather(src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments ``src[offsets[i] : offsets[i] + lengths[i]]`` packed into one new buffer, in
    order; returns it and the new offsets."""
    lengths = lengths.astype(np.int64)
    new_off = np.zeros(lengths.size, np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1], out=new_off[1:])
    out = np.empty(int(lengths.sum()), np.uint8)
    copy_segments(out, new_off, src, np.ascontiguousarray(offsets, np.int64), lengths)
    return out, new_off


def _be(buf: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """Big-endian ``n``-octet values at ``pos`` (callers guarantee bounds)."""
    v = np.zeros(pos.shape, np.int64)
    for k in range(n):
        v = (v << 8) | buf[pos + k]
    return v


def _route(batch: PacketBatch, ipv4: np.ndarray, routing: _Routing, first_index: int) -> np.ndarray:
    """Lane of every frame (-1: not IPv4, nothing to decap).

    A packet reaches an SA only after docs/semantics.md §1 steps 1-5 pass, and then its UDP
    destination port and SPI are read exactly where this reads them (after ``ihl*4`` octets of
    IPv4 header; SPI right after the UDP header, or after the 8-octet non-IKE marker for IKE
    framing). Frames whose key is no SA's cannot reach an SA, so their result depends on no
    lane's state, only on whether their port has a parser entry there: those with the port of an
    SA go round-robin over the lanes holding an SA on that port, the rest over all lanes.
    """
    n = len(batch)
    lane = np.where(ipv4, (np.arange(n) + first_index) % routing.lanes, -1).astype(np.int64)
    if not routing.keys.size or not n:
        return lane
    buf, off, ln = batch.data, batch.offsets, batch.lengths
    ok = ipv4 & (ln >= 20)
    ihl = np.zeros(n, np.int64)
    ihl[ok] = (buf[off[ok]] & 15).astype(np.int64) * 4
    ok &= ihl >= 20
    ok &= ln >= ihl + 4           # the UDP destination port
    idx = np.nonzero(ok)[0]
    if not idx.size:
        return lane
    udp = off[idx] + ihl[idx]
    port = _be(buf, udp + 2, 2)
    for p, fr in routing.framing.items():
        sel = np.nonzero(port == p)[0]
        if not sel.size:
            continue
        owners = routing.port_lanes[p]
        lane[idx[sel]] = owners[(idx[sel] + first_index) % owners.size]
        esp = udp[sel] + (16 if fr == UdpEncapType.IKE else 8)
        fits = esp + 4 <= off[idx[sel]] + ln[idx[sel]]
        sel, esp = sel[fits], esp[fits]
        key = (p << 32) | _be(buf, esp, 4)
        at = np.minimum(np.searchsorted(routing.keys, key), routing.keys.size - 1)
        hit = routing.keys[at] == key
        lane[idx[sel][hit]] = routing.key_lanes[at[hit]]
    return lane


@dataclasses.dataclass
class _LanePackets:
    """The packets one range sends to one lane: frame positions in the range and datagrams."""

    pos: np.ndarray
    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray


def _compact(batch: PacketBatch, pos: np.ndarray, sel: np.ndarray) -> _LanePackets:
    """Copy the selected segments into one small buffer (only they travel to the lane)."""
    lengths = batch.lengths[sel].astype(np.int64)
    data, offsets = _gather(batch.data, batch.offsets[sel], lengths)
    return _LanePackets(pos[sel], data, offsets, lengths)


def _split(rs: _RangeSpec, sa_set: _SaSet, lanes: int) -> tuple[_LanePackets, ...]:
    """Read a range and route its frames; returns one _LanePackets per lane."""
    routing = sa_set.routing(lanes)
    chunks, _, _ = _read_range(rs)
    per_lane: list[list[_LanePackets]] = [[] for _ in range(lanes)]
    base = 0
    for ch in chunks:
        n = len(ch)
        lane = _route(ch.batch, ch.ipv4, routing, base)
        pos = np.arange(base, base + n, dtype=np.int64)
        for k in range(lanes):
            sel = np.nonzero(lane == k)[0]
            if sel.size:
                per_lane[k].append(_compact(ch.batch, pos, sel))
        base += n
    out = []
    for parts in per_lane:
        if not parts:
            out.append(_LanePackets(np.zeros(0, np.int64), np.zeros(0, np.uint8),
                                    np.zeros(0, np.int64), np.zeros(0, np.int64)))
        elif len(parts) == 1:
            out.append(parts[0])
        else:
            shift = np.cumsum([0] + [p.data.size for p in parts[:-1]])
            out.append(_LanePackets(np.concatenate([p.pos for p in parts]),
                                    np.concatenate([p.data for p in parts]),
                                    np.concatenate([p.offsets + s for p, s in zip(parts, shift)]),
                                    np.concatenate([p.lengths for p in parts])))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Lanes: anti-replay state carried from step to step


@dataclasses.dataclass(frozen=True)
class _LaneState:
    """A lane's anti-replay state after a step: per key-file index of an SA with a window,
    ``(T, bitmap, fail_run)`` where bit ``i`` of ``bitmap`` stands for number ``T - i``, exactly
    as :meth:`natt.Offload.replay_state` exports it, and ``fail_run`` the SA's count of
    consecutive failed packets (``sa_stats``' ``replay_fail_run``: ESN resynchronisation,
    RFC 4303 Appendix A3). ``token`` names the Offload that holds exactly this state, so that
    the next step on the same worker may go on with it."""

    token: str
    # Not in ``repr``: a 65536-bit bitmap exceeds Python's int-to-decimal limit.
    windows: dict[int, tuple[int, int, int]] = dataclasses.field(repr=False)


@dataclasses.dataclass
class _LaneResult:
    """Decap results of one lane for one range, by frame position (outputs of OK frames only)."""

    pos: np.ndarray
    status: np.ndarray
    sa_index: np.ndarray
    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    seconds: float


@dataclasses.dataclass
class _CachedLane:
    token: str
    nic: Offload
    handles: list[int]


# Per worker process: the Offload each lane's last step left, keyed by (job, lane), and the jobs
# that have ended (a step still running when its job failed must not cache its Offload).
_LANE_CACHE: dict[tuple[str, int], _CachedLane] = {}
_ENDED_JOBS: set[str] = set()
_LANE_CACHE_LOCK = threading.Lock()
# Per job, the part and output files being written on this worker: a job that ends (the client
# stopped on Ctrl-C or a failure) waits for them, so none is written after its cleanup.
_WRITING: dict[str, int] = {}
_WRITING_DONE = threading.Condition()


def _initial_state(specs: Sequence[keyfile.SaSpec], routing: _Routing, lane: int) -> _LaneState:
    """Each SA's window as keys.install starts it inbound; no bitmap there means every number up
    to replay_seq seen: a full one (semantics §3)."""
    windows = {}
    for i in routing.lane_sas[lane]:
        if specs[i].replay_window > 0:
            top, bitmap, fail_run = keyfile._inbound_window(specs[i])
            windows[i] = (top, (1 << specs[i].replay_window) - 1 if bitmap is None else bitmap, fail_run)
    return _LaneState("", windows)


def _restore(specs: Sequence[keyfile.SaSpec], lane_sas: Sequence[int], state: _LaneState,
             backend: Optional[str]) -> tuple[Offload, list[int]]:
    """A fresh Offload with the lane's SAs (``lane_sas``, key-file indexes) installed in exactly
    ``state``'s anti-replay state (``replay_seq``/``replay_bitmap``/``replay_fail_run``,
    docs/semantics.md §3);
    returns it and the handle of every key-file index (0 for the SAs of other lanes)."""
    nic = Offload(backend=backend, max_sas=max(len(lane_sas), 1))
    try:
        mine = keyfile.install(nic, [specs[i] for i in lane_sas], direction="in",
                               replay_state={k: state.windows[i] for k, i in enumerate(lane_sas)
                                             if i in state.windows})
    except BaseException:
        nic.close()
        raise
    handles = [0] * len(specs)
    for i, h in zip(lane_sas, mine):
        handles[i] = h
    return nic, handles


def _step(sa_set: _SaSet, previous: Optional[tuple[_LaneState, _LaneResult]], pk: _LanePackets, job: str,
          lane: int, lanes: int, backend: Optional[str], threads: Optional[int], last: bool
          ) -> tuple[_LaneState, _LaneResult]:
    """Decap one range's packets of one lane, in order, continuing the lane's state from the
    previous step's result (``None`` for the first range)."""
    specs = sa_set.specs
    routing = sa_set.routing(lanes)
    prev = previous[0] if previous is not None else None
    if prev is None:
        prev = _initial_state(specs, routing, lane)
    if not pk.pos.size:
        # Nothing for this lane in this range: the state (and any cached Offload) carries on.
        if last:
            _forget_lane(job, lane)
        empty = np.zeros(0, np.int64)
        return prev, _LaneResult(empty, np.zeros(0, np.uint8), empty, np.zeros(0, np.uint8), empty, empty, 0.0)
    with _LANE_CACHE_LOCK:
        cached = _LANE_CACHE.pop((job, lane), None)
    if cached is not None and prev.token and cached.token == prev.token:
        nic, handles = cached.nic, cached.handles
    else:
        if cached is not None:
            cached.nic.close()
        nic, handles = _restore(specs, routing.lane_sas[lane], prev, backend)
    try:
        t0 = time.perf_counter()
        res = nic.decap(PacketBatch(pk.data, pk.offsets, pk.lengths), threads=threads)
        seconds = time.perf_counter() - t0
        status, sa_idx = res.status.copy(), sa_index(handles, res.sa)
        # The data path's own state, exported exactly (not recomputed from the results); only
        # an ESN SA counts failures (the rest are refused a non-zero replay_fail_run anyway).
        windows = {i: (*nic.replay_state(handles[i]),
                       nic.sa_stats(handles[i])["replay_fail_run"] if specs[i].uses_esn else 0)
                   for i in prev.windows}
        # The writer needs the outputs of OK packets only; the others are written from the input.
        ok = status == Status.OK
        if ok.all():
            data, offsets, lengths = res.data, res.offsets.copy(), res.lengths.copy()
        else:
            lengths = np.where(ok, res.lengths, 0)
            data, offsets = _gather(res.data, res.offsets, lengths)
        state = _LaneState(uuid.uuid4().hex, windows)
    except BaseException:
        nic.close()
        raise
    with _LANE_CACHE_LOCK:
        keep = not last and job not in _ENDED_JOBS
        if keep:
            _LANE_CACHE[(job, lane)] = _CachedLane(state.token, nic, handles)
    if not keep:
        nic.close()
    return state, _LaneResult(pk.pos, status, sa_idx, data, offsets, lengths, seconds)


def _forget_lane(job: str, lane: int) -> None:
    with _LANE_CACHE_LOCK:
        cached = _LANE_CACHE.pop((job, lane), None)
    if cached is not None:
        cached.nic.close()


def _forget_job(job: str) -> int:
    """Drop (and wipe the keys of) every cached lane Offload of ``job`` on this worker; from now
    on its tasks write nothing, and the files they are writing are finished (or abandoned) when
    this returns."""
    with _LANE_CACHE_LOCK:
        _ENDED_JOBS.add(job)
        mine = [k for k in _LANE_CACHE if k[0] == job]
        gone = [_LANE_CACHE.pop(k) for k in mine]
    for c in gone:
        c.nic.close()
    with _WRITING_DONE:
        # A part is one write of at most a few chunk sizes; _finish stops between parts.
        _WRITING_DONE.wait_for(lambda: not _WRITING.get(job), timeout=60)
    return len(gone)


def _job_ended(job: str) -> bool:
    with _LANE_CACHE_LOCK:
        return job in _ENDED_JOBS


@contextlib.contextmanager
def _writing(job: str) -> Iterator[bool]:
    """Yields False when ``job`` has ended on this worker (write nothing), else True, and
    :func:`_forget_job` waits until the block is left."""
    with _WRITING_DONE:
        live = not _job_ended(job)
        if live:
            _WRITING[job] = _WRITING.get(job, 0) + 1
    if not live:
        yield False
        return
    try:
        yield True
    finally:
        with _WRITING_DONE:
            _WRITING[job] -= 1
            if not _WRITING[job]:
                del _WRITING[job]
            _WRITING_DONE.notify_all()


# ----------------------------------------------------------------------------------------------
# Writing


def _header(rs: _RangeSpec) -> bytes:
    """The file header ``natt decap``'s writer puts first (``PcapWriter.like``)."""
    buf = io.BytesIO()
    # pcapng: a reader, constructed, has read the capture's first Section Header Block (whose
    # options the writer carries) and no interface yet: the header is the SHB alone.
    source = _NamedBytesIO(rs.header, rs.path) if rs.fmt == "pcap" else rs.path
    with pcap.PcapReader(source, chunk_size=pcap.MIN_CHUNK_SIZE) as r:     # the first block, not 8 MiB
        pcap.PcapWriter.like(r, buf).close()
    return buf.getvalue()


def _part(job: str, rs: _RangeSpec, n_specs: int, declared_before: int, last: bool, sas: InboundSas,
          drop_undecrypted: bool, want_status: bool, part_path: str, *steps: tuple[_LaneState, _LaneResult]
          ) -> Optional[dict[str, Any]]:
    """Write the range's records, in file order, to ``part_path``; return its statistics.

    ``declared_before`` is how many pcapng interfaces ``natt decap``'s writer has declared when it
    reaches this range (it declares them lazily, up to the highest one a chunk names). ``last``:
    the capture's last range, whose part ends with the interfaces that no packet named, as that
    writer (``PcapWriter.like``) declares them when it closes. ``sas``: the run's inbound SAs;
    ``drop_undecrypted``: leave out undecrypted ESP (``natt._capture.undecrypted``). Returns
    None, writing nothing, once ``job`` has ended (its client stopped or failed)."""
    results = [st[1] for st in steps]
    chunks, interfaces, truncated = _read_range(rs)
    total = sum(len(c) for c in chunks)
    status = np.full(total, Status.NOT_ESP, np.uint8)      # an empty segment is NOT_ESP (§1 step 1)
    sa_index = np.full(total, -1, np.int64)
    out_len = np.zeros(total, np.int64)
    out_off = np.zeros(total, np.int64)
    src = np.full(total, -1, np.int64)
    datas = [res.data for res in results]
    for k, res in enumerate(results):
        status[res.pos] = res.status
        sa_index[res.pos] = res.sa_index
        out_len[res.pos] = res.lengths
        out_off[res.pos] = res.offsets
        src[res.pos] = k
    # The lanes' output buffers side by side; each frame's output is found by offset (a
    # PacketBatch need not be in order), so nothing is copied per packet.
    data = np.concatenate(datas) if datas else np.zeros(0, np.uint8)
    lane_base = np.cumsum([0] + [d.size for d in datas[:-1]]).astype(np.int64)
    new_off = np.where(src >= 0, out_off + lane_base[np.maximum(src, 0)], 0) if datas else out_off

    buf = io.BytesIO()
    if rs.fmt == "pcap":
        with pcap.PcapReader(_NamedBytesIO(rs.header, rs.path)) as r0:
            writer = pcap.PcapWriter.like(r0, buf)
    else:
        # The reader's list, not a chunk's: a range without packets has no chunk.
        writer = pcap.PcapWriter(buf, fmt="pcapng", interfaces=interfaces[:declared_before], ipv4_as_raw=True)
    head = buf.tell()
    stats = CaptureStats([""] * n_specs)
    base = 0
    for ch in chunks:
        n = len(ch)
        sl = slice(base, base + n)
        outs = PacketBatch(data, np.ascontiguousarray(new_off[sl]), np.ascontiguousarray(out_len[sl]))
        stats.write_decapped(writer, ch, outs, status[sl], sa_index[sl], out_len[sl], sas, drop_undecrypted)
        base += n
    if last and rs.fmt == "pcapng":
        writer.declare_interfaces(interfaces)
    writer.close()
    records = buf.getbuffer()[head:]
    with _writing(job) as live:
        if not live:
            return None
        # Parts hold decrypted traffic until the job ends (for good, if nothing cleans up after
        # a crash): only their owner may read them, whatever the umask.
        os.makedirs(os.path.dirname(part_path), mode=0o700, exist_ok=True)
        tmp = part_path + ".tmp"
        with open(_private(tmp), "wb") as f:
            f.write(records)
        os.replace(tmp, part_path)      # a re-run task overwrites, never appends
    stats.crypto_seconds = sum(res.seconds for res in results)
    stats.truncated = truncated
    return {"status": status if want_status else None, "stats": stats}


def _finish(job: str, head: _RangeSpec, output: str, part_paths: list[str], *parts_done: Any) -> int:
    """Write the output capture: header, then every part in order; returns its size. An output
    that exists keeps its mode and owner (as ``natt decap -o`` does), a new one is no more
    readable than its input, a symbolic link keeps naming the file it names, and a failure
    leaves no temporary file; nor does the end of ``job`` (its client stopped or failed) while
    this runs, which leaves the output as it was (returns -1)."""
    with _writing(job) as live:
        if not live:
            return -1
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        target = os.path.realpath(output)
        # The job in the name: another job writing an output of the same name at the same time
        # has its own (a re-run task of this job overwrites its own).
        tmp = f"{target}.natt-tmp-{job}"
        replaced = False
        try:
            with open(_private(tmp), "wb") as out:
                give_as(out.fileno(), target, head.path)
                out.write(_header(head))
                out.flush()
                for p in part_paths:
                    if _job_ended(job):
                        return -1
                    with open(p, "rb") as f:
                        _append(f, out)
            try:
                os.replace(tmp, target)
            except OSError as e:
                # Named after the temporary file, the error said "<output>.natt-tmp-<job>: Is a
                # directory" when the output's name is taken by a directory: name the output.
                raise OSError(e.errno, e.strerror, output) from None
            replaced = True
        finally:
            if not replaced:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    # The parts stay until the job ends (_cleanup): if this task is re-run they are still there.
    return os.path.getsize(output)


def _append(src: Any, dst: Any) -> None:
    """Append file ``src`` to ``dst`` (both opened unbuffered-safe: ``dst`` flushed), in the
    kernel where it can (copy_file_range: no copy through Python, reflinks on some filesystems)."""
    size = os.fstat(src.fileno()).st_size
    copy = getattr(os, "copy_file_range", None)
    done = 0
    if copy is not None:
        try:
            while done < size:
                n = copy(src.fileno(), dst.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except OSError:          # e.g. across filesystems on old kernels: fall back below
            pass
    if done < size:
        src.seek(done)
        dst.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()


def _missing_dirs(path: str) -> list[str]:
    """The directories ``os.makedirs(path)`` would create, deepest first (absolute)."""
    missing = []
    d = os.path.abspath(path)
    while not os.path.lexists(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return missing


def _private(path: str) -> int:
    """``path`` created (or truncated) for writing with mode 0600, as an open descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _make_out_dir(out_dir: str) -> list[str]:
    """Create ``out_dir`` where the workers write; returns the directories that made (deepest
    first), which a job that fails removes again (and this call, if it fails halfway)."""
    out_dir = os.path.abspath(out_dir)      # what _missing_dirs lists: "a/../b" makes no "a"
    made = _missing_dirs(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except BaseException:
        _remove_dirs([d for d in made if os.path.isdir(d)])     # as far as makedirs got
        raise
    return made


def _remove_dirs(dirs: Sequence[str]) -> None:
    """Remove each of ``dirs`` (deepest first) while it is empty."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            break


def _cleanup(parts_dir: str, made: Sequence[str] = ()) -> None:
    shutil.rmtree(parts_dir, ignore_errors=True)
    _remove_dirs(made)


_T = TypeVar("_T")


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a thread of the worker, for ``client.run``: that runs a plain function in
    the worker's event loop itself, so one that blocks (:func:`_forget_job` waits for writes in
    progress, :func:`_cleanup` removes a tree of part files) would stall the worker's heartbeats
    and every other job's transfers for as long; a coroutine function it awaits there instead."""
    return await asyncio.to_thread(fn, *args)


# ----------------------------------------------------------------------------------------------
# The job


# Signals that stop a run: a terminal's Ctrl-C (and its hang-up) goes to every process of its
# foreground process group, ``kill -TERM -PGID`` and service managers signal them all as well.
_STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _local_cluster(**kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` of worker processes that leave Ctrl-C, SIGTERM and SIGHUP to
    this process: it stops the job and closes the cluster, which ends them. Signalled too (the
    whole process group is, by a terminal), each worker died with a KeyboardInterrupt traceback
    and the job waited for the dead workers.

    A thread's signal mask is inherited by the threads it starts and by the processes they spawn,
    exec included: the cluster is started with these signals blocked, so its threads (event loop,
    nannies, and the threads that spawn a worker process, now or when a nanny restarts one) and
    every worker have them blocked. The calling thread gets them back when the cluster is up (one
    that came meanwhile is delivered then). A worker still ends when the cluster closes it (a
    stop message, then SIGKILL) or when this process goes away (it watches a pipe from it)."""
    import distributed
    from multiprocessing import resource_tracker

    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
    cluster = None
    try:
        # The first process spawned starts multiprocessing's resource tracker (it unlinks the
        # semaphores of the cluster's queues), which ignores SIGINT and SIGTERM, and unblocks
        # them in the thread that starts it: start it here, with SIGHUP blocked for it, not from
        # the cluster's event loop; then block them again.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
        # The scheduler's HTTP server (and dashboard, with bokeh) on a free port of the loopback
        # interface: Dask's default, ":8787", listens on every interface, and warns on stderr
        # when another cluster has the port (None still means port 8787). A dashboard on a
        # known address: start a scheduler, and --dask.
        kwargs.setdefault("dashboard_address", "127.0.0.1:0")
        cluster = distributed.LocalCluster(processes=True, **kwargs)
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)     # runs the handler of one that came
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
    return cluster


def _from_here(path: PathLike) -> str:
    """``path`` made absolute against this process's working directory (an absolute one is kept
    as spelt: messages name it as the caller did)."""
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _outputs(paths: Sequence[str], out_dir: str, what: tuple[str, str] = ("paths", "out_dir"),
             keys: Optional[str] = None) -> list[str]:
    """The output of each of ``paths`` in ``out_dir``; ``ValueError`` naming the parameter
    (``what``: their names in the caller's terms) when two would collide or one would overwrite
    an input (its own or another) or the key file ``keys``, when there is no input, or when
    ``out_dir``, or a directory it would be made in, is something else than a directory (the
    workers' makedirs said only "File exists")."""
    if not paths:
        raise ValueError(f"{what[0]}: no capture given")
    d = out_dir
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise ValueError(f"{what[1]}: {d} is not a directory" + ("" if d == out_dir else f" ({out_dir} would be in it)"))
        parent = os.path.dirname(d.rstrip(os.sep)) or os.curdir
        if parent == d:
            break
        d = parent
    names = [os.path.basename(os.fspath(p)) for p in paths]
    dup = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if dup:
        raise ValueError(f"{what[0]}: two inputs share the name {dup[0]!r}; their outputs would "
                         f"collide in {out_dir}")
    outs = [os.path.join(out_dir, n) for n in names]
    # Any input, not only its own: an output name that is a symbolic or hard link to another
    # input (or out_dir a link to the inputs' directory) was written through, over a capture
    # other tasks were still reading. The check natt decap's -o and --report get (same_file),
    # by identity, so that a day of per-minute captures costs 1440 lookups, not 1440**2 checks.
    own_ids = [file_identity(p) for p in paths]
    inputs: dict[tuple[object, ...], str] = {}
    for p, i in zip(paths, own_ids):
        inputs.setdefault(i, p)
    key_id = file_identity(keys) if keys is not None else None
    for own, own_id, o in zip(paths, own_ids, outs):
        o_id = file_identity(o)
        if o_id == own_id:
            raise ValueError(f"{what[1]}: writing {o} would overwrite its input")
        if o_id in inputs:
            raise ValueError(f"{what[1]}: writing {o} would overwrite the input {inputs[o_id]}")
        if o_id == key_id:
            raise ValueError(f"{what[1]}: writing {o} would overwrite the key file {keys}")
    return outs


def _progress_bar(progress: Optional[bool], total: int) -> Any:
    from tqdm import tqdm
    show = progress if progress is not None else sys.stderr.isatty()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="decap (dask)", delay=1.0,
                disable=not show, file=sys.stderr, leave=False)


@overload
def decap_captures(paths: Sequence[PathLike], keys: Union[PathLike, Sequence[keyfile.SaSpec]],
                   out_dir: PathLike, client: Any = None, *, chunk_size: int = pcap.DEFAULT_CHUNK_SIZE,
                   threads: Optional[int] = None, drop_undecrypted: bool = False,
                   progress: Optional[bool] = None, backend: Optional[str] = None,
                   lanes: Optional[int] = None, mode: str = "tunnel", return_statuses: Literal[False] = False
                   ) -> CaptureStats: ...
@overload
def decap_captures(paths: Sequence[PathLike], keys: Union[PathLike, Sequence[keyfile.SaSpec]],
                   out_dir: PathLike, client: Any = None, *, chunk_size: int = pcap.DEFAULT_CHUNK_SIZE,
                   threads: Optional[int] = None, drop_undecrypted: bool = False,
                   progress: Optional[bool] = None, backend: Optional[str] = None,
                   lanes: Optional[int] = None, mode: str = "tunnel", return_statuses: Literal[True]
                   ) -> tuple[CaptureStats, list[np.ndarray]]: ...
@overload
def decap_captures(paths: Sequence[PathLike], keys: Union[PathLike, Sequence[keyfile.SaSpec]],
                   out_dir: PathLike, client: Any = None, *, chunk_size: int = pcap.DEFAULT_CHUNK_SIZE,
                   threads: Optional[int] = None, drop_undecrypted: bool = False,
                   progress: Optional[bool] = None, backend: Optional[str] = None,
                   lanes: Optional[int] = None, mode: str = "tunnel", return_statuses: bool = False
                   ) -> Union[CaptureStats, tuple[CaptureStats, list[np.ndarray]]]: ...
def decap_captures(paths: Sequence[PathLike], keys: Union[PathLike, Sequence[keyfile.SaSpec]],
                   out_dir: PathLike, client: Any = None, *, chunk_size: int = pcap.DEFAULT_CHUNK_SIZE,
                   threads: Optional[int] = None, drop_undecrypted: bool = False,
                   progress: Optional[bool] = None, backend: Optional[str] = None,
                   lanes: Optional[int] = None, mode: str = "tunnel", return_statuses: bool = False
                   ) -> Union[CaptureStats, tuple[CaptureStats, list[np.ndarray]]]:
    """Decap every capture of ``paths`` on a Dask cluster into ``out_dir`` (one output per input,
    same file name, same format, every frame in its original order).

    ``keys`` is a key file (natt JSON or Wireshark ``esp_sa``; ``mode`` as for ``natt decap``)
    or a list of :class:`natt.keys.SaSpec`; every SA is installed inbound. ``client`` is a
    ``distributed.Client``; ``None`` takes the current one (``distributed.get_client()``) or, when
    there is none, starts a ``distributed.LocalCluster`` of worker processes (Dask's default size
    for the machine) for this call and closes it before returning (its workers leave Ctrl-C,
    SIGTERM and SIGHUP to the calling process, whose KeyboardInterrupt stops the job as any
    failure does). ``chunk_size`` is the octets
    of capture per task; ``threads`` the data-path threads per task; ``lanes`` the number of SA
    lanes (default: the cluster's worker threads, at most one per SA key). ``progress`` shows a
    bar on stderr (default: when stderr is a terminal).

    Returns the merged per-SA summary, the :class:`natt.cli.CaptureStats` ``natt decap`` prints,
    equal to that of one process decapsulating the captures in order with one Offload (module
    docstring). With ``return_statuses``, returns ``(summary, statuses)``: per capture, the
    :class:`natt.Status` of every frame in file order (``NOT_ESP`` for frames that are not IPv4).

    Raises :class:`natt.keys.KeyFileError` for unusable keys before anything runs,
    :class:`natt.pcap.PcapError` (same message and file offset as the single-process reader) for
    a corrupt capture, and ``OSError`` for one that cannot be read or written. A capture that
    ends inside a record is decapsulated up to it, and the stats' ``truncated`` says so, as in
    ``natt decap``. After
    a failure, or a KeyboardInterrupt while it waits, no part file is left behind and an
    ``out_dir`` that the call created is removed again when nothing was written into it, but
    outputs of captures that were already finished stay.
    """
    import distributed
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    t_start = time.perf_counter()
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths: expected a list of captures, got one {type(paths).__name__}; pass [path]")
    key_path: Optional[str] = None
    if isinstance(keys, (str, os.PathLike)):
        key_path = os.fspath(keys)
        specs = keyfile.load(key_path, mode=mode)
    else:
        # SPIs and ports as ints: the tasks route by them (a numpy SPI is fine for install).
        specs = keyfile._canonical(keys)
    if not specs:
        raise keyfile.KeyFileError("the key set holds no SA")
    pcap.check_chunk_size(chunk_size)
    _check_threads(threads)
    if backend is None:
        backend = "fast" if "fast" in backends() else "reference"
    # Refuse a bad SA set here, not in a hundred tasks: install it once on a throwaway Offload.
    with Offload(backend=backend, max_sas=len(specs)) as probe:
        keyfile.install(probe, specs, direction="in")
        sas = InboundSas.of(probe)
    # The workers resolve paths against their own working directory (that of `dask worker`,
    # not this process's): a relative path read another capture, or none, and wrote the outputs
    # elsewhere than out_dir -- over an input, even, that the check below saw as another file.
    files = [_from_here(p) for p in paths]
    out_dir = _from_here(out_dir)
    outputs = _outputs(files, out_dir, keys=key_path)

    own_cluster = None
    if client is None:
        try:
            client = distributed.get_client()
        except ValueError:
            own_cluster = _local_cluster()
    job = uuid.uuid4().hex[:16]
    # Created by the workers that write into it (the client may not see the shared storage).
    parts_dir = os.path.join(out_dir, f".natt-dask-{job}")
    futures: list[Any] = []
    made: list[str] = []      # the directories the job made for out_dir, removed if it fails
    missing_here = _missing_dirs(out_dir)
    done = False
    try:
        if own_cluster is not None:
            client = distributed.Client(own_cluster)
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"].items())
        n_threads = sum(w.get("nthreads", 1) for _, w in workers) or 1
        n_keys = len({(s.port, s.spi) for s in specs})
        if lanes is None:
            # One lane per worker thread: lanes are pinned to workers, so more lanes would add
            # tasks without adding parallelism.
            lanes = max(1, min(n_keys, n_threads))
        elif isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes: expected a positive integer, got {lanes!r}")

        made = client.submit(_make_out_dir, out_dir, key=f"natt-outdir-{job}", pure=False).result()
        # Stage 1: cut the captures into ranges (on the workers: they see the files).
        scan = [client.submit(_scan, i, p, o, chunk_size, key=(f"natt-scan-{job}", i), pure=False)
                for i, (p, o) in enumerate(zip(files, outputs))]
        # One future at a time, not client.gather: a gather cut short by Ctrl-C leaves asyncio
        # tasks whose exceptions ("AllExit") are logged to stderr as never retrieved.
        plans: list[_FilePlan] = [f.result() for f in scan]
        del scan
        # The SA set is data of the graph, not scattered: the scheduler holds it for the job, so
        # a worker that replaces one that died (or --workers 1's only worker, restarted) gets it
        # again. Scattered, it was lost with the last worker holding it, and with it the job
        # ("lost dependencies"), which the captures could not rebuild. Its key names no key.
        sa_set = (f"natt-sas-{job}", 0)

        # Stage 2: the graph. Keys are (stage-job, integers): never anything derived from keys.
        # Three kinds of layer: reading/routing, one per lane (annotated with the lane's worker:
        # RSS-style affinity keeps a lane on one worker so its Offload is reused), and writing.
        read: dict[Any, Any] = {sa_set: _SaSet(specs)}
        lane_layers: list[dict[Any, Any]] = [{} for _ in range(lanes)]
        write: dict[Any, Any] = {}
        part_keys, finish_keys, sizes = [], [], []
        prev_step: list[Any] = [None] * lanes
        steps_total = sum(len(p.ranges) for p in plans)
        g = 0
        for plan in plans:
            declared = 0
            part_paths = []
            file_parts = []
            for r in range(len(plan.ranges)):
                rs = _range_spec(plan, r)
                split = (f"natt-split-{job}", g)
                read[split] = (_split, rs, sa_set, lanes)
                steps = []
                for k in range(lanes):
                    # Only lane k's packets travel to lane k's worker, not the whole range.
                    lane_in = (f"natt-lanein-{job}", k, g)
                    read[lane_in] = (operator.getitem, split, k)
                    step = (f"natt-step-{job}", k, g)
                    lane_layers[k][step] = (_step, sa_set, prev_step[k], lane_in, job, k, lanes, backend,
                                            threads, g == steps_total - 1)
                    prev_step[k] = step
                    steps.append(step)
                part = (f"natt-part-{job}", g)
                part_path = os.path.join(parts_dir, f"{plan.index:06d}-{r:08d}.part")
                write[part] = (_part, job, rs, len(specs), declared, r == len(plan.ranges) - 1, sas, drop_undecrypted,
                               return_statuses, part_path, *steps)
                declared = max(declared, plan.ranges[r].top)
                part_paths.append(part_path)
                file_parts.append(part)
                part_keys.append(part)
                sizes.append(plan.ranges[r].end - plan.ranges[r].start)
                g += 1
            fin = (f"natt-finish-{job}", plan.index)
            head = _RangeSpec(plan.path, plan.fmt, plan.prefixes[0] if plan.prefixes else b"", b"", 0, 0)
            write[fin] = (_finish, job, head, plan.output, part_paths, *file_parts)
            finish_keys.append(fin)

        layers: dict[str, Any] = {f"natt-read-{job}": MaterializedLayer(read)}
        deps: dict[str, set[str]] = {f"natt-read-{job}": set()}
        for k, layer in enumerate(lane_layers):
            ann = {"workers": [workers[k % len(workers)][0]], "allow_other_workers": True} if workers else None
            layers[f"natt-lane-{job}-{k}"] = MaterializedLayer(layer, annotations=ann)
            deps[f"natt-lane-{job}-{k}"] = {f"natt-read-{job}"}
        layers[f"natt-write-{job}"] = MaterializedLayer(write)
        deps[f"natt-write-{job}"] = set(layers) - {f"natt-write-{job}"}
        graph = HighLevelGraph(layers, deps)
        futures = client.get(graph, part_keys + finish_keys, sync=False)
        part_futures = futures[: len(part_keys)]
        finish_futures = futures[len(part_keys):]
        size_of = {f.key: s for f, s in zip(part_futures, sizes)}
        order = {f.key: i for i, f in enumerate(part_futures)}
        range_status: list[Any] = [None] * len(part_futures)
        range_stats: list[Any] = [None] * len(part_futures)
        stats = CaptureStats([s.label() for s in specs], keyfile.same_sa(specs, "in"))
        with _progress_bar(progress, sum(p.size for p in plans)) as bar:
            for fut in distributed.as_completed(part_futures):
                d = fut.result()
                if return_statuses:
                    range_status[order[fut.key]] = d["status"]
                range_stats[order[fut.key]] = d["stats"]
                bar.update(size_of[fut.key])
            for f in finish_futures:
                f.result()
        # In input order, not as the parts came in: the first example of a hint (spi_example),
        # and which capture was cut short, are those of the captures in the order given.
        for st in range_stats:
            stats.merge(st)
        stats.elapsed = time.perf_counter() - t_start
        done = True
        if not return_statuses:
            return stats
        per_file, i = [], 0
        for plan in plans:
            k = len(plan.ranges)
            per_file.append(np.concatenate(range_status[i: i + k]) if k else np.zeros(0, np.uint8))
            i += k
        return stats, per_file
    finally:
        try:
            if client is not None:        # (None: Client(own_cluster) failed)
                # On failure, stop what is still queued and, with the job's futures, drop its
                # SA set from the scheduler and worker memory; then wipe every lane Offload of
                # the job.
                if futures:
                    client.cancel(futures)
                # On every worker: the job's tasks write nothing more, and what they were writing
                # is finished or gone (a task still running is not stopped by the cancel). Only
                # then can the part files go (the client may not see the storage the workers
                # write to): run out of band (client.run), not behind tasks in the workers'
                # task threads, and off their event loops (_in_thread).
                client.run(_in_thread, _forget_job, job, on_error="ignore")
                client.run(_in_thread, _cleanup, parts_dir, [] if done else made, on_error="ignore")
        except Exception:   # pragma: no cover - a cluster going away while we clean up
            pass
        finally:
            # Also after a second Ctrl-C (KeyboardInterrupt, or SIGTERM as natt.cli raises it)
            # cut the above short.
            shutil.rmtree(parts_dir, ignore_errors=True)
            if not done:
                # Here too, those missing here as well (the client may not see the workers' storage);
                # all of those when the workers never said which they made (Ctrl-C came first).
                _remove_dirs([d for d in (made or missing_here) if d in missing_here and os.path.isdir(d)])
            if own_cluster is not None:
                try:
                    if client is not None:
                        client.close()
                finally:
                    own_cluster.close()
