"""Streaming pcap / pcapng reader and writer that hands IPv4 datagrams to natt as batches.

Reading::

    with natt.pcap.PcapReader("capture.pcapng") as reader:
        with natt.pcap.PcapWriter.like(reader, "out.pcapng") as writer:
            for chunk in reader:                      # a few MiB of records at a time
                res = nic.decap(chunk.batch)          # one segment per frame
                writer.write_chunk(chunk, res.batch(), replace=res.status == natt.Status.OK)

A :class:`Chunk` covers a run of consecutive packet records. ``chunk.batch`` has one segment
per frame, aligned with every per-frame array: for an IPv4 frame the segment is the datagram
(from the IPv4 header to the end of the captured frame, link padding and any FCS included,
which decap ignores past the IPv4 total length), sliced out of the read buffer without a copy;
for any other frame it is empty, and ``chunk.ipv4`` is False. A whole capture is never held in
memory: the reader keeps one chunk (``chunk_size`` octets, default 8 MiB) and the unfinished
record that follows it.

Formats: classic pcap (both byte orders; microsecond magic ``a1b2c3d4``, nanosecond magic
``a1b23c4d``, and Kuznetzov's ``a1b2cd34`` with its 24-octet record header; the variants patched
libpcaps wrote with longer record headers, Red Hat 6.1, Nokia IPSO and SuSE 6.3, are told apart
by where their records fall, as Wireshark does) and pcapng (every
section with its own byte order; Interface Description, Enhanced Packet, Simple Packet and the
obsolete Packet block; each interface with its own link type, ``if_tsresol`` and ``if_tsoffset``).
Other pcapng blocks (name resolution, statistics, secrets, custom) are skipped.

Link types: Ethernet (``LINKTYPE_ETHERNET`` 1, up to 8 802.1Q / 802.1ad / QinQ tags),
Linux cooked v1 (113; the VLAN tags ``tcpdump -i any`` puts back, likewise) and v2 (276), raw IPv4 (228), raw IP (101, and DLT_RAW's values 12 and,
on OpenBSD, 14) when the first nibble is 4, and the BSD loopback headers: ``LINKTYPE_NULL`` (0:
a 4-octet address family in the capturing host's byte order, so either) and ``LINKTYPE_LOOP``
(108, OpenBSD: network byte order), with family 2 (AF_INET on every BSD and macOS). Frames of
any other kind pass through untouched.

Writing: :class:`PcapWriter` writes records back in the input's format. A replaced frame keeps
its link header octet for octet (none of Ethernet, 802.1Q or Linux cooked headers carry a length
that would need fixing) but for the field that names the protocol, set to IPv6 when the new
datagram is (a tunnel SA's inner IPv6; raw IPv4, link type 228, is written as raw IP, 101),
followed by the new datagram, and by a new FCS when a classic pcap
header declares one; its captured and original lengths become the new frame length. Frames not
replaced are written as read, with their original lengths.
Timestamps are kept: classic pcap keeps the input's resolution and byte order (a Kuznetzov
input, or another with longer record headers, is written with the standard magic and 16-octet
record headers: what its records had beyond those is dropped); pcapng is written
little-endian with nanosecond ``if_tsresol`` on every interface (exact for every decimal
resolution up to 1 ns) and the input's ``if_tsoffset``, one section whose interfaces are every
section's interfaces in order, numbered as read: each is declared before the first record that
names it, and a :meth:`PcapWriter.like` writer declares those that no record names when it closes
(a capture of interfaces and no packets keeps them).

pcapng options are carried over (:attr:`Chunk.options`, :attr:`Interface.options`,
:attr:`PcapReader.section_options`): every frame's (comments, ``epb_flags``, drop count,
packet id, queue, verdict, process and thread ids, custom and unknown options), every
interface's and the first section header's, each list ending in ``opt_endofopt`` as writers
must (draft-ietf-opsawg-pcapng §3.5). An obsolete Packet Block's Drops Count is read as an
``epb_dropcount`` after the block's options, as Wireshark reads it, unless it is 0xFFFF ("not
available", Appendix A) or the block has an ``epb_dropcount`` of its own. Left out are:
``epb_hash`` on a frame natt replaced (it hashes data the frame no longer has), the custom
options 19372 and 19373 (§3.5.1: not to be copied by an application that manipulates the
file), options of a length their code does not allow (§3.5: a writer MUST NOT write them),
``if_fcslen`` (a replaced frame has no FCS and ``epb_flags`` cannot say "none": 0 is "not
known", §4.3.1; for the same reason a replaced
frame's ``epb_flags`` lose their FCS length), the input's ``if_tsresol`` and ``if_tsoffset``
(natt writes its own, those its timestamps are in), its ``shb_userappl`` (natt names itself)
and a later section's header options (the output has one section). The output is
little-endian: a big-endian section's options are converted where their layout is known (the
numbers in ``epb_flags``, ``epb_dropcount``, ``epb_packetid``, ``epb_queue``, eBPF verdicts,
``epb_processid_threadid``, ``if_speed``... and a custom option's PEN; strings, addresses and
MD5 or SHA-1 hashes as they are) and left out where not (binary custom data, CRC32 and
Toeplitz hashes, hardware verdicts, ``if_tzone``, BPF ``if_filter`` programs, unknown codes).
A Simple Packet Block has no
timestamp: it is read with ``ts_ns`` 0 and written as an Enhanced Packet Block stamped 0 (1970)
(pcapng §4.4). ``ts_ns`` is int64 nanoseconds since 1970: a
pcapng timestamp outside 1677-09-21 .. 2262-04-11 (legal there, 64-bit ticks plus a 64-bit
offset in seconds) is a :class:`PcapError` rather than a wrapped-around time.

Corrupt or truncated input raises :class:`PcapError` (a ``ValueError``) whose ``offset`` is the
file offset of the record at fault; records before it have already been yielded (the chunk that
would have held it ends before it). An option whose value runs past its block is such an error,
at the option's offset (a list without ``opt_endofopt`` is not: it ends with its block, §3.5), and
so is a block of more than 65 536 options (pcapng sets no limit; natt's per-option arrays would
take ten times the block's octets). An ``opt_endofopt`` with a length (§3.5 gives it none) is
held to the rules of other options: one whose length runs past its block is the error above,
and one whose length fits, like an option of a length its code does not allow, is read (it
ends its list) but not written (natt ends each list with its own, of length 0). tshark 4.0
does the same: it reads the second kind and refuses a file with the first.
A pcapng file's first Section Header Block is read when the reader is constructed, and its
errors raised there.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import functools
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Literal, NamedTuple, Optional, Union, overload

import numpy as np

from ._batch import PacketBatch, copy_segments
from ._version import __version__

__all__ = [
    "PcapError", "PcapTruncated", "Interface", "FrameOptions", "Chunk", "PcapReader", "PcapWriter",
    "read_frames", "write_datagrams",
    "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_BSD_RAW", "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2", "LINKTYPE_IPV4", "LINKTYPE_NULL", "LINKTYPE_LOOP", "LINKTYPE_OPENBSD_RAW",
    "IPV4_LINKTYPES",
]

LINKTYPE_NULL = 0         # BSD loopback (macOS lo0, utun): AF_ value, host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_BSD_RAW = 12     # DLT_RAW on most BSDs: raw IP (version in the first nibble)
LINKTYPE_OPENBSD_RAW = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101        # LINKTYPE_RAW: raw IPv4 or IPv6
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LOOP = 108       # OpenBSD loopback: AF_ value, network byte order
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276
#: The link types whose IPv4 frames natt finds (module docstring); other frames pass through.
IPV4_LINKTYPES = (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_BSD_RAW, LINKTYPE_OPENBSD_RAW, LINKTYPE_RAW,
                  LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_LINUX_SLL2)
_AF_INET_BSD = 2          # AF_INET in <sys/socket.h> of every BSD and of macOS

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
# A BSD loopback header's AF_INET6 differs by OS (24 NetBSD/OpenBSD/Npcap, 28 FreeBSD, 30 macOS);
# readers take all three (libpcap pcap-common.c, BSD_AFNUM_INET6_*). natt writes the first.
_AF_INET6_BSD = 24
# 802.1Q C-tag, 802.1ad S-tag, and the pre-standard QinQ values still seen in captures.
_VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
_MAX_VLAN_TAGS = 8

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34   # patched libpcap: 24-octet record header (ifindex, protocol, type)
# Record header lengths each magic has been written with, most common first. Patched libpcaps of
# 1999 kept a magic and lengthened the header (Wireshark's wiretap/libpcap.c reads them all,
# editcap -F writes them): the standard magic also came with 24 octets (Red Hat 6.1, "ss990417")
# and 20 (Nokia IPSO), the modified one with 28 (SuSE 6.3, "ss990915"). The first 16 octets are
# always the standard header; which length a file has shows only in where its records fall.
_PCAP_RECORD_HEADERS = {_PCAP_MAGIC_US: (16, 24, 20), _PCAP_MAGIC_NS: (16,), _PCAP_MAGIC_KUZNETZOV: (24, 28)}
_PROBE_RECORDS = 16
_PCAP_FCS_P = 0x04000000             # link-type field: the FCS length (bits 28-31) is present

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_PB = 0x00000002     # obsolete Packet Block
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006
_PCAPNG_BOM = 0x1A2B3C4D

# A record longer than this is taken as corruption rather than a frame (libpcap's
# MAXIMUM_SNAPLEN is 262144; wiretap accepts up to 256 MiB for a few link types).
_MAX_RECORD = 1 << 28
DEFAULT_CHUNK_SIZE = 8 << 20
MIN_CHUNK_SIZE = 4096
#: A run holds about three chunks' worth at once (the chunk, the data path's output, the records
#: being written; natt.dask about eight per worker thread, docs/dask.md), and a bigger chunk buys
#: no speed (2 MiB ran as fast as the default 8 MiB, docs/dask.md). 1 GiB, 128 times the default,
#: still fits the memory of a machine that handles such captures; a larger number is a slip, which
#: would otherwise end in numpy's MemoryError.
MAX_CHUNK_SIZE = 1 << 30

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]


class PcapError(ValueError):
    """A capture file is corrupt, truncated or of an unsupported kind.

    ``offset`` is the file offset (octets from the start of the file) of the header or record
    at fault, or ``None`` when the error is not about one place in the file.
    """

    def __init__(self, message: str, offset: Optional[int] = None) -> None:
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at file offset {offset})")


class PcapTruncated(PcapError):
    """The file ends inside a record: a capture cut short, by a killed tcpdump or one still
    writing. Raised, like every PcapError, after the records before it have been handed out;
    ``natt decap``/``encap`` keep those and warn, as tshark does."""


@dataclasses.dataclass(frozen=True)
class Interface:
    """One capture interface: classic pcap has exactly one, pcapng one per IDB.

    ``tsresol`` is the pcapng ``if_tsresol`` octet (6 = microseconds, 9 = nanoseconds; high bit
    set = a power of two) and ``tsoffset`` the ``if_tsoffset`` seconds added to every timestamp
    (at most 9223372036 either way, the reach of int64 nanoseconds). ``options`` are the
    Interface Description Block's other options (``if_name``, ``if_description``, ``if_filter``,
    ``if_speed``, comments, ...) as ``(code, value)`` pairs, the values little-endian as natt
    writes pcapng: :class:`PcapReader` converts a big-endian section's where it knows their
    layout and leaves out the others, and leaves out ``if_fcslen`` (see the module docstring).

    ``if_name`` (code 2) is among ``options`` as read, octet for octet, every one of them in its
    place, as for comments: pcapng says UTF-8 without a NUL, once, but natt passes on what it
    reads. ``name`` is its text, for display: the last ``if_name``'s value decoded as UTF-8
    (undecodable octets replaced, trailing NULs dropped). A writer writes ``name`` as an
    ``if_name`` only when ``options`` hold none; when they do, they are what is written, and a
    ``name`` other than "" or their text is refused (it would not reach the file).
    """

    linktype: int
    snaplen: int = 262144
    tsresol: int = 6
    tsoffset: int = 0
    name: str = ""
    options: tuple[tuple[int, bytes], ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class FrameOptions:
    """The pcapng options of a :class:`Chunk`'s packet blocks, one entry per option, in file order.

    Option ``k`` belongs to frame ``frame[k]``, has code ``code[k]`` (1 ``opt_comment``, 2
    ``epb_flags``, 3 ``epb_hash``, ...) and its value is ``data[pos[k] : pos[k] + length[k]]``, in
    the byte order of the section it was read in (``big_endian``). ``frame`` is int32, ``code``
    and ``length`` uint16 (the widths of the file's fields: add to a length in a wider type),
    ``pos`` int64: 16 octets an option, which may take as few as 4 in the file. ``data`` is None
    when the values are where the file has them, in the chunk's ``buffer``; it is an array of their own
    when the reader made some up (an obsolete Packet Block's Drops Count, as ``epb_dropcount``).
    The ``opt_endofopt`` that ends a list, and whatever follows it in the block, are not listed.
    """

    frame: np.ndarray
    code: np.ndarray
    pos: np.ndarray
    length: np.ndarray
    big_endian: bool
    data: Optional[np.ndarray] = None

    def values(self, buffer: np.ndarray) -> np.ndarray:
        """The array ``pos`` indexes: ``data``, or the chunk's ``buffer`` when that is None."""
        return buffer if self.data is None else self.data


@dataclasses.dataclass(eq=False)
class Chunk:
    """A run of consecutive packet records, parsed.

    Every per-frame array has one entry per record, in file order:

    * ``batch`` -- :class:`natt.PacketBatch` over ``buffer``: frame ``i``'s IPv4 datagram, or
      an empty segment when ``ipv4[i]`` is False;
    * ``ipv4`` (bool) -- the frame carries IPv4 by its link type (Ethertype 0x0800, or raw IP
      whose first nibble is 4);
    * ``ts_ns`` (int64) -- timestamp, nanoseconds since the epoch;
    * ``iface`` (int32) -- interface index into ``interfaces`` (always 0 for classic pcap);
    * ``linktype`` (int32) -- link type of the frame's interface;
    * ``link_len`` (int64) -- octets of link header before the IPv4 header (0 when not IPv4);
    * ``frame_offsets``, ``caplen`` (int64) -- the captured frame is
      ``buffer[frame_offsets[i] : frame_offsets[i] + caplen[i]]``;
    * ``origlen`` (int64) -- the frame's length on the wire;
    * ``file_offsets`` (int64) -- where each record starts in the file (for error messages).

    ``options`` holds the pcapng options of the packet blocks (:class:`FrameOptions`), or is None
    when none has any (always for classic pcap); :meth:`frame_options` gives one frame's.
    """

    buffer: np.ndarray
    batch: PacketBatch
    ipv4: np.ndarray
    ts_ns: np.ndarray
    iface: np.ndarray
    linktype: np.ndarray
    link_len: np.ndarray
    frame_offsets: np.ndarray
    caplen: np.ndarray
    origlen: np.ndarray
    file_offsets: np.ndarray
    interfaces: tuple[Interface, ...]
    options: Optional[FrameOptions] = None

    def __len__(self) -> int:
        return int(self.caplen.size)

    def frame(self, i: int) -> bytes:
        """Captured frame ``i`` (link header included), as bytes."""
        o = int(self.frame_offsets[i])
        return self.buffer[o: o + int(self.caplen[i])].tobytes()

    def frame_options(self, i: int) -> list[tuple[int, bytes]]:
        """Frame ``i``'s pcapng options as ``(code, value)`` pairs in file order, the values in
        their section's byte order (``options.big_endian``); [] when it has none."""
        o = self.options
        if o is None:
            return []
        lo, hi = np.searchsorted(o.frame, [i, i + 1]).tolist()
        data = o.values(self.buffer)
        return [(c, data[p: p + n].tobytes())
                for c, p, n in zip(o.code[lo:hi].tolist(), o.pos[lo:hi].tolist(), o.length[lo:hi].tolist())]

    def __repr__(self) -> str:
        return f"Chunk({len(self)} frames, {int(self.ipv4.sum())} IPv4)"


# ----------------------------------------------------------------------------------------------
# Link layer


def _gather_be16(buf: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit values at ``pos`` (0 where ``valid`` is False; never reads out of bounds)."""
    last = buf.size - 2
    p = np.where(valid, pos, 0)
    if buf.size < 2:
        return np.zeros(pos.shape, np.int64)
    p = np.minimum(p, last)
    v = (buf[p].astype(np.int64) << 8) | buf[p + 1]
    return np.where(valid, v, 0)


def _link_layer(buf: np.ndarray, linktype: np.ndarray, foff: np.ndarray, caplen: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: (is IPv4, link header length), vectorised per link type."""
    n = foff.size
    ipv4 = np.zeros(n, bool)
    link_len = np.zeros(n, np.int64)
    single = n and not (linktype != linktype[0]).any()
    for lt in ([int(linktype[0])] if single else np.unique(linktype).tolist()):
        sel = np.arange(n) if single else np.nonzero(linktype == lt)[0]
        fo, cl = foff[sel], caplen[sel]
        if lt in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
            # The Ethertype ends either header. libpcap puts back the VLAN tag the kernel took
            # off in both: an SLL v1 frame reads SLL(0x8100) | TCI | 0x0800 (pcap-linux.c,
            # set_vlan_offset: SLL_HDR_LEN - 2).
            hl = np.full(sel.size, 14 if lt == LINKTYPE_ETHERNET else 16, np.int64)
            ok = cl >= hl
            et = _gather_be16(buf, fo + hl - 2, ok)
            # Each 802.1Q/802.1ad tag is 4 octets (TPID, TCI) before the next Ethertype.
            for _ in range(_MAX_VLAN_TAGS):
                tagged = ok & np.isin(et, _VLAN_ETHERTYPES)
                if not tagged.any():
                    break
                ok = ok & (~tagged | (cl >= hl + 4))
                hl = np.where(tagged, hl + 4, hl)
                et = np.where(tagged, _gather_be16(buf, fo + hl - 2, tagged & ok), et)
            is4 = ok & (et == _ETHERTYPE_IPV4) & (cl > hl)
        elif lt == LINKTYPE_LINUX_SLL2:
            hl = np.full(sel.size, 20, np.int64)
            ok = cl > 20
            is4 = ok & (_gather_be16(buf, fo, ok) == _ETHERTYPE_IPV4)
        elif lt == LINKTYPE_IPV4:
            hl = np.zeros(sel.size, np.int64)
            is4 = cl > 0
        elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
            hl = np.full(sel.size, 4, np.int64)
            ok = cl > 4
            hi, lo = _gather_be16(buf, fo, ok), _gather_be16(buf, fo + 2, ok)
            family = hi << 16 | lo                               # network byte order
            if lt == LINKTYPE_NULL:                              # the capturing host's: either
                swapped = (lo & 0xFF) << 24 | (lo >> 8) << 16 | (hi & 0xFF) << 8 | hi >> 8
                is4 = ok & ((family == _AF_INET_BSD) | (swapped == _AF_INET_BSD))
            else:
                is4 = ok & (family == _AF_INET_BSD)
        elif lt in (LINKTYPE_RAW, LINKTYPE_BSD_RAW, LINKTYPE_OPENBSD_RAW):
            hl = np.zeros(sel.size, np.int64)
            ok = cl > 0
            first = buf[np.where(ok, np.minimum(fo, max(buf.size - 1, 0)), 0)] if buf.size else np.zeros(sel.size, np.uint8)
            is4 = ok & ((first >> 4) == 4)
        else:
            continue
        ipv4[sel] = is4
        link_len[sel] = np.where(is4, hl, 0)
    return ipv4, link_len


def _make_batch(buf: np.ndarray, foff: np.ndarray, caplen: np.ndarray, ipv4: np.ndarray,
                link_len: np.ndarray) -> PacketBatch:
    offsets = np.ascontiguousarray(np.where(ipv4, foff + link_len, foff), dtype=np.int64)
    lengths = np.ascontiguousarray(np.where(ipv4, caplen - link_len, 0), dtype=np.int64)
    return PacketBatch(buf, offsets, lengths)


# ----------------------------------------------------------------------------------------------
# Record walking: the one inherently sequential step (each record's position depends on the
# length of the one before it). It only reads one length per record; every other field is
# then gathered for the whole chunk at once with numpy.


def _u32_views(buf: np.ndarray) -> list[memoryview]:
    """Four native-order uint32 views of ``buf`` at byte offsets 0..3, so that the 32-bit value
    at any offset ``q`` is ``views[q & 3][q >> 2]`` (a fast memoryview index, no copy)."""
    mv = buf.data             # = memoryview(buf)
    out = []
    for k in range(4):
        m = max((buf.size - k) // 4, 0)
        out.append(mv[k: k + 4 * m].cast("I"))
    return out


# The record walk in C when the compiled core provides it (same contract as _walk below);
# the Python walk is the fallback and the reference for its tests.
_c_walk: Optional[Callable[[np.ndarray, int, int, int, int, bool, bool, bool], tuple[np.ndarray, int, bool]]]
try:
    from ._fastpath import pcap_walk as _c_walk
except ImportError:  # pragma: no cover - installs without the extension
    _c_walk = None


_c_option_walk: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray, bool, int],
                                   tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, int, bool]]]
try:
    from ._fastpath import pcapng_option_walk as _c_option_walk
except ImportError:  # pragma: no cover - installs without the extension, or built before it had it
    _c_option_walk = None


_RUN_MIN = 16          # records a vectorised run check must cover to be worth its numpy overhead
_RUN_MAX = 1 << 16


def _walk(buf: np.ndarray, start: int, len_at: int, base: int, min_len: int, swap: bool,
          pad4: bool, trailer: bool) -> tuple[np.ndarray, int, bool]:
    """Offsets (int64 array) of the complete records in ``buf[start:]``, where it stopped, and
    whether it stopped at a record whose trailing length is wrong.

    A record at ``p`` is ``base + L`` octets long where ``L`` is the 32-bit value at
    ``p + len_at`` (pcap: 16 + caplen; pcapng: ``base`` 0 and ``L`` the block length, at
    least ``min_len`` and, with ``pad4``, a multiple of 4). Stops at the first record that is
    incomplete or whose length is impossible: ``(offsets, stop, False)``. With ``trailer``
    (pcapng, draft-ietf-opsawg-pcapng section 3.1: a block ends with its Block Total Length
    again), a complete record whose last 4 octets are not ``L`` stops it too, as
    ``(offsets, stop, True)``: that record is at ``stop`` and it is corrupt, not unread. The
    walk compares the trailer because it is at the block anyway: a separate numpy pass over
    the blocks made reading 200 000 60-octet frames about 8 % slower (benchmarks/HISTORY.md,
    "The twenty-first session").

    Each position depends on the length before it, so this step is sequential. Two things keep
    it fast in Python: one memoryview index per record, and runs of equal-length records
    (bulk transfers at the MTU, fixed-size test traffic) confirmed in one numpy step: if the
    record at ``p`` is ``L`` long, the candidates ``p + k*L`` are checked together and every
    one up to the first whose length differs is a real record.
    """
    if _c_walk is not None:
        big_endian = swap != (sys.byteorder == "big")
        return _c_walk(buf, start, len_at, base, min_len, big_endian, pad4, trailer)
    if trailer and base + min_len < len_at + 8:     # the trailer must lie past the length field
        raise ValueError("pcap_walk: with trailer, base + min_len must be at least len_at + 8")
    views = _u32_views(buf)
    end = buf.size
    need = len_at + 4
    pieces: list[np.ndarray] = []
    offs = array.array("q")
    append = offs.append
    p = start
    prev = -1            # size of the record before; a run is tried only after two equal sizes
    run = _RUN_MIN
    big = swap != (sys.byteorder == "big")
    dt = np.dtype(">u4" if big else "<u4")
    cols = np.arange(4)
    order: Literal["big", "little"] = "big" if sys.byteorder == "little" else "little"
    bad_trailer = False
    while p + need <= end:
        q = p + len_at
        v = views[q & 3][q >> 2]
        if swap:
            v = int.from_bytes(v.to_bytes(4, sys.byteorder), order)
        if v < min_len or (pad4 and v & 3):
            break
        size = base + v
        nxt = p + size
        if nxt > end:
            break
        if trailer:
            t = nxt - 4
            w = views[t & 3][t >> 2]
            if swap:
                w = int.from_bytes(w.to_bytes(4, sys.byteorder), order)
            if w != v:
                bad_trailer = True
                break
        append(p)
        p = nxt
        if size != prev:
            prev = size
            continue
        prev = -1
        m = min(run, (end - p) // size)      # candidates that would fit whole
        if m < _RUN_MIN:
            continue
        cand = p + len_at + size * np.arange(m, dtype=np.int64)
        same = buf[cand[:, None] + cols].view(dt).ravel() == v
        if trailer:     # a candidate with a wrong trailer ends the run; the step above stops at it
            same &= buf[(cand + (size - len_at - 4))[:, None] + cols].view(dt).ravel() == v
        k = m if same.all() else int(same.argmin())
        if k:
            if len(offs):
                pieces.append(np.frombuffer(offs, dtype=np.int64).copy())
                offs = array.array("q")
                append = offs.append
            pieces.append(cand[:k] - len_at)
            p += k * size
        run = min(run * 2, _RUN_MAX) if k == m else _RUN_MIN
    if len(offs):
        pieces.append(np.frombuffer(offs, dtype=np.int64).copy())
    if not pieces:
        return np.zeros(0, np.int64), p, bad_trailer
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), p, bad_trailer


def _gather_u32(buf: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """32-bit values at byte positions ``pos`` (all in bounds), as int64."""
    return _gather_words(buf, pos, 1, big_endian)[:, 0]


def _gather_words(buf: np.ndarray, pos: np.ndarray, words: int, big_endian: bool) -> np.ndarray:
    """``words`` consecutive 32-bit values at each of ``pos`` (all in bounds): an (n, words)
    int64 array.

    One word at one alignment (every pcapng block is 4-aligned) is a 1-D take through a word
    view of ``buf``. Anything else is one take of ``4 * words``-octet rows from a strided view
    whose row ``p`` starts at octet ``p``: numpy copies each row as one run, where an (n, words)
    index array (made per alignment group) cost it an index per element. Reading pcapng headers
    (7 words) went from about 65 to 15 ns a block, a classic pcap's (4 words, records at two
    alignments) from about 80 to 13 (commit ``999c7d0``; whole reads: BENCHMARKS.md, "The
    twenty-fifth session (28 November), later").
    """
    dt = np.dtype(">u4" if big_endian else "<u4")
    if pos.size == 0:
        return np.empty((pos.size, words), np.int64)
    if words == 1:
        first = int(pos[0]) & 3
        if buf.size > first and not ((pos & 3) != first).any():
            view = np.frombuffer(buf, dtype=dt, offset=first, count=(buf.size - first) // 4)
            return view[pos >> 2, None].astype(np.int64)
    width = 4 * words
    step = buf.strides[0]
    rows = np.lib.stride_tricks.as_strided(buf, shape=(max(buf.size - width + 1, 0), width), strides=(step, step),
                                           writeable=False)
    out: np.ndarray = rows[pos].view(dt).astype(np.int64)
    return out


def _gather_u16(buf: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    b0 = buf[pos].astype(np.int64)
    b1 = buf[pos + 1].astype(np.int64)
    u16: np.ndarray = (b0 << 8) | b1 if big_endian else (b1 << 8) | b0
    return u16


@overload
def _tsresol_to_ns(ticks: int, tsresol: int) -> int: ...
@overload
def _tsresol_to_ns(ticks: np.ndarray, tsresol: int) -> np.ndarray: ...
def _tsresol_to_ns(ticks: Any, tsresol: int) -> Any:
    """Timestamps in units of ``if_tsresol`` -> nanoseconds (pcapng §4.2, option if_tsresol).

    Exact integer arithmetic on Python ints, and the same modulo 2**64 on uint64 arrays: right
    there whenever the result (plus any offset, added modulo 2**64 too) fits in 64 bits, which
    :func:`_last_tick` makes sure of.
    """
    v = tsresol & 0x7F
    if tsresol & 0x80:   # 2**-v seconds per tick
        whole = ticks >> v
        frac = ticks & ((1 << v) - 1)
        if v <= 32:
            return whole * 1_000_000_000 + ((frac * 1_000_000_000) >> v)
        # frac * 10**9 would need 93 bits: floor it through 2**32 first (floor(floor(a/b)/c)
        # == floor(a/(b*c))), every step within 64 bits.
        part = ((frac >> 32) * 1_000_000_000 + (((frac & 0xFFFFFFFF) * 1_000_000_000) >> 32)) >> (v - 32)
        return whole * 1_000_000_000 + part
    if v <= 9:
        return ticks * (10 ** (9 - v))
    return ticks // (10 ** (v - 9))


_NS_MAX = (1 << 63) - 1                   # int64 nanoseconds: up to 2262-04-11
_TSOFFSET_MAX = _NS_MAX // 1_000_000_000   # if_tsoffset seconds whose nanoseconds int64 holds
_TSOFFSET_MIN = -_TSOFFSET_MAX             # (back to 1677-09-21)


@functools.lru_cache(maxsize=1024)    # a bisection of some 64 steps, once per chunk per interface
def _last_tick(tsresol: int, tsoffset: int) -> int:
    """The last pcapng timestamp (ticks) of an interface whose time, ``if_tsoffset`` seconds
    included, int64 nanoseconds hold; -1 when none does. (With ``tsoffset`` at least
    _TSOFFSET_MIN, tick 0 is never too early.)"""
    off = tsoffset * 1_000_000_000
    lo, hi = -1, 1 << 64        # nanoseconds grow with ticks: bisect between fits and does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _tsresol_to_ns(mid, tsresol) + off <= _NS_MAX else (lo, mid)
    return lo


def _ns_since_epoch(ticks: np.ndarray, itf: Interface) -> tuple[np.ndarray, np.ndarray]:
    """(int64 nanoseconds, out of range) for uint64 ``ticks`` of interface ``itf``."""
    last = _last_tick(itf.tsresol, itf.tsoffset)
    bad = ticks > np.uint64(last) if last >= 0 else np.ones(ticks.shape, bool)
    ns = _tsresol_to_ns(ticks, itf.tsresol) + np.uint64(itf.tsoffset * 1_000_000_000 % (1 << 64))
    return ns.view(np.int64), bad


# ----------------------------------------------------------------------------------------------
# pcapng options (draft-ietf-opsawg-pcapng §3.5): a list of (code, length, value padded to 4)
# ending at opt_endofopt or at the end of the block. natt writes pcapng little-endian, so the
# options of a big-endian section are rewritten; the numbers in a value turn with the byte order
# (§3.6.1), and an option whose layout natt does not know is left out rather than written wrong.


class _OptionRule(NamedTuple):
    """What pcapng says of one option code in one kind of block.

    ``least``: its length, or with ``exact`` False the least length it may have (§3.5: a writer
    MUST NOT write an option of another length, so natt drops such an option). ``numbers``: the
    (offset, width) of the integers in its value, whose octets a change of byte order reverses;
    ``kinds``, when set, the values of its first octet (a hash algorithm, a verdict or filter
    type) for which that layout is known. ``portable`` False: no layout is known at all.
    ``sized``: (first octet, length) pairs, the one length a value of that kind may have.
    """

    least: int
    exact: bool = False
    numbers: tuple[tuple[int, int], ...] = ()
    kinds: Optional[tuple[int, ...]] = None
    portable: bool = True
    sized: tuple[tuple[int, int], ...] = ()


_OPT_COMMENT = 1
_OPT_FLAGS = 2          # epb_flags / the obsolete Packet Block's pack_flags (§4.3.1, appendix A)
_OPT_HASH = 3           # epb_hash / pack_hash: a hash of the packet data
_OPT_DROPCOUNT = 4      # epb_dropcount: packets lost between this one and the one before
# Custom options "that should not be copied to a new file if the pcapng file is manipulated"
# (§3.5.1); natt rewrites every block, and Wireshark's editcap leaves them out as well.
_OPT_CUSTOM_NO_COPY = (19372, 19373)
_IF_NAME, _IF_TSRESOL, _IF_FCSLEN, _IF_TSOFFSET = 2, 9, 13, 14
_SHB_USERAPPL = 4

_STRING = _OptionRule(0)
_U32 = _OptionRule(4, True, ((0, 4),))
_U64 = _OptionRule(8, True, ((0, 8),))
_COMMON_OPTIONS = {
    _OPT_COMMENT: _STRING,
    2988: _OptionRule(4, numbers=((0, 4),)),   # custom, UTF-8 data after the PEN, a number (§3.5.1)
    2989: _OptionRule(4, portable=False),      # custom, binary data: laid out as the PEN's owner says
}
_SHB_OPTIONS = {**_COMMON_OPTIONS, 2: _STRING, 3: _STRING, _SHB_USERAPPL: _STRING}   # §4.1
_IDB_OPTIONS = {   # §4.2; if_tsresol and if_tsoffset are Interface fields
    **_COMMON_OPTIONS, _IF_NAME: _STRING, 3: _STRING, 4: _OptionRule(8, True), 5: _OptionRule(17, True),
    6: _OptionRule(6, True), 7: _OptionRule(8, True), 8: _U64,
    10: _OptionRule(4, True, portable=False),   # if_tzone: "never specified in greater detail"
    11: _OptionRule(1, kinds=(0,)),             # if_filter: a libpcap filter string; BPF code has no layout yet
    12: _STRING, 15: _STRING, 16: _U64, 17: _U64, 18: _STRING,
}
_EPB_OPTIONS = {   # §4.3; the obsolete Packet Block's pack_flags and pack_hash are the same
    **_COMMON_OPTIONS, _OPT_FLAGS: _U32,
    # MD5 and SHA-1 hashes are octet strings; the 4-octet ones (CRC32, Toeplitz) have no stated order.
    # Each algorithm's hash has its length (2 CRC32, 3 MD5, 4 SHA-1, 5 Toeplitz; §4.3.1).
    _OPT_HASH: _OptionRule(1, kinds=(3, 4), sized=((2, 5), (3, 17), (4, 21), (5, 5))),
    _OPT_DROPCOUNT: _U64, 5: _U64, 6: _U32,     # epb_dropcount, epb_packetid, epb_queue
    # epb_verdict: eBPF TC and XDP, a 64-bit number (Wireshark refuses a file with another length)
    7: _OptionRule(1, numbers=((1, 8),), kinds=(1, 2), sized=((1, 9), (2, 9))),
    8: _OptionRule(8, True, ((0, 4), (4, 4))),  # epb_processid_threadid
}


# Fewer option lists than this still going: the rest are walked one option at a time. A numpy
# step costs tens of microseconds however few lists it moves, a Python step about one; a block
# with a long list (valid: 16000 empty comments fit in 64 KiB) would otherwise cost a numpy step
# per option. Either way the work is bounded by the octets of options.
_OPTION_WALK_VECTOR_MIN = 64
# Options natt reads in one block. pcapng sets no limit, but a block of millions of 4-octet
# options (a 256 MiB block holds 67 million) would cost gigabytes of per-option arrays and a
# Python step each; 65536 is four times the 16384 empty options a 64 KiB list holds.
_MAX_BLOCK_OPTIONS = 65536
# Octets of IDBs whose options are walked and converted together (PcapReader._parse_idbs): enough
# for thousands of small IDBs in one numpy pass, few enough that the walk's columns (16 octets an
# option, at most 4 MiB then) are small beside the interfaces' own options.
_IDB_GROUP = 1 << 20


def _option_walk(buf: np.ndarray, start: np.ndarray, end: np.ndarray, big: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[tuple[int, str]]]:
    """The options of the blocks whose option lists are ``buf[start[b]:end[b]]`` (each a multiple
    of 4 octets, as blocks and packet data are padded to 4): per option, in file order, its block
    ``b``, code, value position and value length (int32, uint16, int64 and uint16, as
    :class:`FrameOptions` holds them). A list ends at opt_endofopt or, lacking one, at
    the end of its block (§3.5: readers MUST NOT assume it is there). The last item is the first
    option in the file that natt cannot take, as (position, what is wrong), or None: one whose
    value runs past its block (opt_endofopt included), or one past the ``_MAX_BLOCK_OPTIONS`` of
    its block.

    In C (:func:`natt._fastpath.pcapng_option_walk`) when the extension is there: some 1 us and
    120 octets of intermediate arrays an option here, where a 12 MiB capture of empty options
    took 2.5 s and 390 MiB; there the arrays returned are all it allocates. Here, vectorised
    across blocks, one numpy step per place in the lists, while there are
    ``_OPTION_WALK_VECTOR_MIN`` lists or more going; the rest one option at a time."""
    def past_block(q: int, c: int, n: int) -> tuple[int, str]:
        return q, f"corrupt pcapng option (code {c}, length {n}): it runs past the end of its block"

    too_many = f"more than {_MAX_BLOCK_OPTIONS} options in one pcapng block; natt reads at most that many"
    if _c_option_walk is not None:
        frame, code, pos, olen, at, at_code, at_len, at_many = _c_option_walk(
            buf, np.ascontiguousarray(start, np.int64), np.ascontiguousarray(end, np.int64), big, _MAX_BLOCK_OPTIONS)
        fault = None if at < 0 else (at, too_many) if at_many else past_block(at, at_code, at_len)
        return frame, code, pos, olen, fault
    blk = np.nonzero(end > start)[0]
    p, e = start[blk], end[blk]
    # Per step: (block, code, value position, length, place of the option in its list).
    parts: list[tuple[np.ndarray, ...]] = []
    bad: Optional[tuple[int, str]] = None
    step = 0
    while blk.size >= _OPTION_WALK_VECTOR_MIN:
        w = _gather_u32(buf, p, big)        # p + 4 <= e: both are 4 apart from the list's start
        code, olen = (w >> 16, w & 0xFFFF) if big else (w & 0xFFFF, w >> 16)
        more = code != 0
        many = more & (step >= _MAX_BLOCK_OPTIONS)
        over = many | (p + 4 + olen > e)
        if over.any():
            k = int(np.argmax(over))        # blocks are in file order
            if bad is None or p[k] < bad[0]:
                bad = (int(p[k]), too_many) if many[k] else past_block(int(p[k]), int(code[k]), int(olen[k]))
            more &= ~over
        parts.append((blk[more], code[more], p[more] + 4, olen[more], np.full(int(more.sum()), step)))
        p = p + 4 + ((olen + 3) & ~3)
        go = more & (p < e)
        blk, p, e = blk[go], p[go], e[go]
        step += 1
    # The columns of the rest, 8 octets per value (a tuple per option took some 300).
    cols = [array.array("q") for _ in range(5)]
    put_b, put_c, put_p, put_n, put_place = (col.append for col in cols)
    fmt, view = (">HH" if big else "<HH"), buf.data
    for b, q, stop in zip(blk.tolist(), p.tolist(), e.tolist()):
        place = step
        while q < stop:
            c, n = struct.unpack_from(fmt, view, q)
            many = c != 0 and place >= _MAX_BLOCK_OPTIONS
            if many or q + 4 + n > stop:
                if bad is None or q < bad[0]:
                    bad = (q, too_many) if many else past_block(q, c, n)
                break
            if not c:
                break
            put_b(b)
            put_c(c)
            put_p(q + 4)
            put_n(n)
            put_place(place)
            q += 4 + ((n + 3) & ~3)
            place += 1
    if cols[0]:
        parts.append(tuple(np.frombuffer(col, np.int64) for col in cols))
    if not parts:
        return (np.zeros(0, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.int64), np.zeros(0, np.uint16),
                bad)
    b_all, code_all, pos_all, olen_all, place_all = (np.concatenate([x[k] for x in parts]) for k in range(5))
    # In file order a block's options follow the earlier blocks' ones, each at its place in its list.
    count = np.bincount(b_all, minlength=start.size)
    order = np.empty(b_all.size, np.int64)
    order[(np.cumsum(count) - count)[b_all] + place_all] = np.arange(b_all.size)
    return (np.repeat(np.arange(start.size, dtype=np.int32), count), code_all[order].astype(np.uint16),
            pos_all[order], olen_all[order].astype(np.uint16), bad)


def _writable(rules: dict[int, _OptionRule], buf: np.ndarray, code: np.ndarray, pos: np.ndarray,
              length: np.ndarray, swap: bool) -> tuple[np.ndarray, list[tuple[np.ndarray, int, int]]]:
    """Which of the options (``code``, value at ``pos`` in ``buf``, ``length``) natt writes, by
    ``rules`` (the block kind's): every one but the custom options not to be copied and those of
    a length their code does not allow; with ``swap`` (a big-endian section, written
    little-endian) only those whose layout is known. And the numbers to reverse then, as
    (options, offset, width)."""
    keep = ~np.isin(code, _OPT_CUSTOM_NO_COPY)
    known = np.zeros(code.size, bool)
    numbers: list[tuple[np.ndarray, int, int]] = []
    # A value's first octet (a hash algorithm, a verdict type...), gathered only for the codes
    # whose rule looks at it: an int64 index per option took twice the octets of the options.
    first = np.zeros(code.size, np.uint8)
    for c in np.flatnonzero(np.bincount(code)).tolist():             # the codes there are
        rule = rules.get(c)
        if rule is None:
            continue
        sel = code == c
        if rule.sized or rule.kinds is not None:
            at = np.flatnonzero(sel & (length > 0))
            first[at] = buf[pos[at]]
        keep &= ~sel | ((length == rule.least) if rule.exact else (length >= rule.least))
        for kind, size in rule.sized:
            keep &= ~(sel & (first == kind)) | (length == size)
        if swap and rule.portable:
            end = max((off + width for off, width in rule.numbers), default=0)
            sel &= length >= end
            if rule.kinds is not None:
                sel &= np.isin(first, rule.kinds)
            known |= sel
            numbers += [(sel, off, width) for off, width in rule.numbers]
    if swap:
        keep &= known
    return keep, numbers


def _reverse(buf: np.ndarray, pos: np.ndarray, width: int) -> None:
    """Reverse the ``width`` octets at each of ``pos`` in place: a number to the other byte order."""
    at = pos[:, None] + np.arange(width)
    buf[at] = buf[at[:, ::-1]]


def _block_options(block: bytes, at: int, big: bool, rules: dict[int, _OptionRule]
                   ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], Optional[tuple[int, str]]]:
    """The options of one SHB or IDB, from octet ``at`` to its trailing Block Total Length: as
    read (code, value in the section's byte order), and as natt writes them (little-endian, by
    ``rules``); and the option at fault, as :func:`_option_walk` gives it."""
    buf = np.frombuffer(block, np.uint8)
    _, code, pos, olen, bad = _option_walk(buf, np.array([at], np.int64), np.array([len(block) - 4], np.int64), big)
    if bad is not None:
        return [], [], bad
    read = [(c, block[p: p + n]) for c, p, n in zip(code.tolist(), pos.tolist(), olen.tolist())]
    keep, numbers = _writable(rules, buf, code, pos, olen, big)
    out = buf.copy()
    for sel, off, width in numbers:
        _reverse(out, pos[sel & keep] + off, width)
    written = [(c, out[p: p + n].tobytes()) for c, p, n in zip(code[keep].tolist(), pos[keep].tolist(),
                                                                 olen[keep].tolist())]
    return read, written, None


def _with_drop_counts(buf: np.ndarray, o: Optional[FrameOptions], drops: np.ndarray, big: bool
                      ) -> Optional[FrameOptions]:
    """``o``, the options of a chunk over ``buf``, with an epb_dropcount (in the section's byte
    order) after the options of every frame whose ``drops`` is known (an obsolete Packet Block's
    Drops Count; 0xFFFF is "not available", pcapng Appendix A) and that has no epb_dropcount of its
    own. Wireshark reads a Packet Block so. The values made up are not in ``buf``: every value is
    copied to an array of the options' own (a cost only chunks of Packet Blocks pay)."""
    if o is None:
        frame, code, pos, length = (np.zeros(0, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.int64),
                                    np.zeros(0, np.uint16))
    else:
        frame, code, pos, length = o.frame, o.code, o.pos, o.length
    add = drops != 0xFFFF
    add[frame[code == _OPT_DROPCOUNT]] = False
    new = np.nonzero(add)[0]
    if not new.size:
        return o
    wide = length.astype(np.int64)
    have = int(wide.sum())
    data = np.empty(have + 8 * new.size, np.uint8)
    at = np.cumsum(wide) - wide
    copy_segments(data, at, buf if o is None else o.values(buf), pos, wide)
    data[have:] = drops[new].astype(">u8" if big else "<u8").view(np.uint8)
    frame = np.concatenate([frame, new.astype(np.int32)])
    order = np.argsort(frame, kind="stable")     # a frame's own options first, in file order
    return FrameOptions(frame[order], np.concatenate([code, np.full(new.size, _OPT_DROPCOUNT, np.uint16)])[order],
                        np.concatenate([at, have + 8 * np.arange(new.size)])[order],
                        np.concatenate([length, np.full(new.size, 8, np.uint16)])[order], big, data)


def _if_name_text(options: Sequence[tuple[int, bytes]]) -> str:
    """:attr:`Interface.name` of an interface with ``options``: the last if_name's text, "" if none."""
    names = [v for c, v in options if c == _IF_NAME]
    return names[-1].decode("utf-8", "replace").rstrip("\0") if names else ""


def _trailing_length_error(name: str, block: str, trail: int, blen: int, offset: int) -> PcapError:
    return PcapError(f"{name}: corrupt pcapng {block}: it ends with a Block Total Length of {trail}, "
                     f"and begins with {blen}", offset)


def _check_block_len(name: str, block: str, blen: int, opt_len: int) -> None:
    """``ValueError`` naming ``name`` when its pcapng ``block``, ``blen`` octets with ``opt_len``
    of options, would be longer than the blocks PcapReader takes (so it would not read back)."""
    if blen > _MAX_RECORD:
        raise ValueError(f"{name}: its {block} would be {blen} octets, {opt_len} of them options; natt "
                         f"reads blocks of at most {_MAX_RECORD} octets")


def _pack_options(options: Sequence[tuple[int, bytes]]) -> bytes:
    """``options`` as a little-endian option list with its opt_endofopt, or b"" when empty."""
    if not options:
        return b""
    return b"".join(struct.pack("<HH", code, len(v)) + v + b"\0" * _pad4(len(v)) for code, v in options) \
        + struct.pack("<HH", 0, 0)


# ----------------------------------------------------------------------------------------------
# Reader


def check_chunk_size(chunk_size: int) -> None:
    """Raise ``ValueError`` naming ``chunk_size`` unless it is an int in MIN_CHUNK_SIZE .. MAX_CHUNK_SIZE."""
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
            or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE):
        raise ValueError(f"chunk_size: {MIN_CHUNK_SIZE} .. {MAX_CHUNK_SIZE} octets (4 KiB .. 1 GiB), "
                         f"got {chunk_size!r}")


def _readinto(f: BinaryIO, view: memoryview) -> int:
    """Read up to ``len(view)`` octets of ``f`` into ``view``; 0 at the end of the file. Through
    ``readinto`` when ``f`` is an ``io`` binary stream, else ``read``: ``BinaryIO`` promises no
    ``readinto`` (``tempfile.SpooledTemporaryFile`` has none before Python 3.11)."""
    if isinstance(f, (io.RawIOBase, io.BufferedIOBase)):
        return f.readinto(view) or 0
    data = f.read(len(view))
    view[: len(data)] = data
    return len(data)


class PcapReader:
    """Iterate over a pcap or pcapng capture as :class:`Chunk` objects.

    ``source`` is a path or a binary file object opened for reading (not closed by the reader
    unless it opened it). ``chunk_size`` is the number of octets read per chunk
    (``MIN_CHUNK_SIZE`` .. ``MAX_CHUNK_SIZE``, 4 KiB .. 1 GiB); a record larger than that is read
    whole. ``format`` (``"pcap"`` or ``"pcapng"``) is known once the reader is constructed;
    ``interfaces`` lists every interface seen so far (pcapng: filled in as Interface Description
    Blocks are read). A classic pcap header's ``fcs_len`` is the FCS
    length its link-type field declares, in octets (None when it declares none). pcapng:
    ``section_options`` are the first Section Header Block's options (``shb_comment``,
    ``shb_hardware``, ``shb_os``, ``shb_userappl``, ...) as ``(code, value)`` pairs, read when
    the reader is constructed and converted as :class:`Interface` options are. Iterate once.
    """

    def __init__(self, source: PathOrFile, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        if isinstance(source, (str, os.PathLike)):
            self._file: BinaryIO = open(source, "rb")
            self._owns = True
            self.name = os.fspath(source)
        else:
            self._file = source
            self._owns = False
            self.name = getattr(source, "name", "<stream>")
        self.interfaces: list[Interface] = []
        self.format = ""
        self.byteorder = "<"           # of the classic pcap file / of the current pcapng section
        self.nanosecond = False        # classic pcap: nanosecond magic
        self.snaplen = 262144
        self.fcs_len: Optional[int] = None   # classic pcap: octets of FCS per frame, if the header says
        self.section_options: tuple[tuple[int, bytes], ...] = ()
        self._rec_hdr = 16
        self._max_cap = _MAX_RECORD    # classic pcap: the largest captured length taken as sane
        self._pos = 0                  # file offset of self._buf[0]
        self._buf = np.zeros(0, np.uint8)
        self._eof = False
        self._section_base = 0         # interface index of the current section's interface 0
        self._started = False
        try:
            self._read_file_header()
        except BaseException:
            self.close()
            raise

    # -- plumbing --------------------------------------------------------------------------

    def __enter__(self) -> "PcapReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owns and not self._file.closed:
            self._file.close()

    def _fill(self, want: int) -> None:
        """Make ``self._buf`` hold at least ``want`` octets unless the file ends first.

        Reads straight into a new array after the unconsumed tail (one copy of the tail, none
        of the data): chunks handed out earlier keep their own buffers.

        Each round reads at most what the buffer already holds or a chunk, whichever is more:
        ``want`` comes from a length field in the file (up to ``_MAX_RECORD``, 256 MiB), and
        allocating all of it before reading gave a 300 KB file with one lying block length a
        256 MiB buffer. Doubling keeps the copies of the tail within twice the record's size.
        """
        while self._buf.size < want and not self._eof:
            need = max(min(want - self._buf.size, self._buf.size), self.chunk_size)
            tail = self._buf.size
            new = np.empty(tail + need, np.uint8)
            new[:tail] = self._buf
            view = new.data[tail:]
            got = 0
            while got < need:
                n = _readinto(self._file, view[got:])
                if not n:
                    self._eof = True
                    break
                got += n
            self._buf = new[: tail + got]

    def _consume(self, n: int) -> None:
        self._pos += n
        self._buf = self._buf[n:]

    def _read_file_header(self) -> None:
        self._fill(24)
        b = self._buf
        if b.size < 4:
            raise PcapError(f"{self.name}: empty or too short to be a capture file ({b.size} octets)", 0)
        head = b[:4].tobytes()
        if head == struct.pack("<I", _PCAPNG_SHB):
            self.format = "pcapng"
            # The first SHB now, so that its options are known before any chunk (PcapWriter.like).
            self._consume(self._parse_shb())
            return
        for order in ("<", ">"):
            magic = struct.unpack(order + "I", head)[0]
            if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS, _PCAP_MAGIC_KUZNETZOV):
                break
        else:
            # Wireshark saves compressed captures and tshark reads them; natt reads the capture
            # formats only, so it names the compression and the command that undoes it (xz and
            # bzip2 too, which captures are archived with).
            for magic_prefix, what, tool in ((b"\x1f\x8b", "gzip", "gunzip"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
                                             (b"\x04\x22\x4d\x18", "lz4", "unlz4"), (b"\xfd7zX", "xz", "unxz"),
                                             (b"BZh", "bzip2", "bunzip2")):
                if head.startswith(magic_prefix):
                    raise PcapError(f"{self.name}: {what}-compressed; decompress it first ({tool} -k), or "
                                    f"pipe it in: {tool} -c FILE | natt ... -", 0)
            raise PcapError(f"{self.name}: not a pcap or pcapng file (magic {head.hex()})", 0)
        if b.size < 24:
            raise PcapError(f"{self.name}: pcap file header truncated ({b.size} of 24 octets)", 0)
        self.format = "pcap"
        self.byteorder = order
        self.nanosecond = magic == _PCAP_MAGIC_NS
        _, major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "IHHiIII", b[:24].tobytes())
        if major != 2:
            raise PcapError(f"{self.name}: unsupported pcap version {major}.{minor}", 4)
        self.snaplen = snaplen
        # Above the snap length is corruption, but some writers understate it (TSO frames).
        self._max_cap = min(max(snaplen, 262144), _MAX_RECORD)
        # The upper bits of the link-type field may carry FCS information (pcap-savefile(5),
        # "LinkType and additional information": |FCS len|R|P|Reserved3|Link-layer type|, the
        # FCS length in 16-bit units when P is set); the link type proper is the low 16 bits.
        if network & _PCAP_FCS_P:
            self.fcs_len = 2 * (network >> 28)
        self.interfaces.append(Interface(network & 0xFFFF, snaplen, 9 if self.nanosecond else 6))
        self._consume(24)
        self._rec_hdr = self._probe_record_header(_PCAP_RECORD_HEADERS[magic])

    def _probe_record_header(self, lengths: tuple[int, ...]) -> int:
        """The first record header length, of ``lengths``, under which the first records (up
        to ``_PROBE_RECORDS``) are sane (a fraction below a second or just at it, a captured
        length at most the maximum and the original length, which is not 0) and end where the
        file does or the look-ahead stops. If none is, the one with the most sane records among
        those walked, preferring one under which every captured length fits and the records end
        where the file does.

        The usual length (the first) is taken before any of that when its records fit and end
        so and none has a fraction out of place, however odd their original lengths: a
        longer header misplaces the records read as standard, which shows in captured lengths
        or fractions, whereas an original length is the one field a walk does not need, and
        the one a cut or fuzzed capture gets wrong. Counting such records as insane took short
        standard captures (three records, one of them empty, or with an original length of 0
        or 1) for Red Hat 6.1 or Nokia ones, whose walk over two records happened to fit;
        tshark reads them as standard. An original length below the captured one still counts
        against the longer headers, as it does in Wireshark's guess.

        An odd record (a fraction, or an original length, out of place) does not stop the walk:
        its captured length still says where the next record is. Stopping there took a
        standard capture whose second record had an original length of 0 for a Red Hat 6.1 or
        Nokia one, which had more sane records before the first odd one, and refused it as
        corrupt; tshark reads it (and natt writes records with their original lengths)."""
        if len(lengths) == 1:
            return lengths[0]
        self._fill(1 << 16)
        buf, size, fmt = self._buf.data, self._buf.size, self.byteorder + "III"
        second = 1_000_000_000 if self.nanosecond else 1_000_000

        def fit(h: int) -> tuple[bool, int, int, bool]:
            """(every captured length fits and the records end where the file does or the
            look-ahead stops, sane records, records walked, every fraction in place)."""
            p = n = sane = 0
            fracs = True
            while n < _PROBE_RECORDS:
                if p + h > size:            # at the end: whole records only, or a cut one
                    return p == size or not self._eof, sane, n, fracs
                frac, cap, orig = struct.unpack_from(fmt, buf, p + 4)
                if cap > self._max_cap:
                    return False, sane, n, fracs
                fracs &= frac <= second
                sane += not (frac > second or cap > orig or orig == 0)
                p += h + cap
                n += 1
            return True, sane, n, fracs
        fits = [fit(h) for h in lengths]
        if fits[0][0] and fits[0][3]:
            return lengths[0]
        for h, (whole, sane, n, _) in zip(lengths, fits):
            if whole and sane == n:
                return h
        return lengths[max(range(len(lengths)), key=lambda i: (fits[i][:2], -i))]

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Chunk]:
        if self._started:
            raise RuntimeError("a PcapReader can be iterated only once")
        self._started = True
        return self._chunks_pcap() if self.format == "pcap" else self._chunks_pcapng()

    def _truncated(self, what: str) -> PcapError:
        return PcapTruncated(f"{self.name}: truncated {what}: the file ends {self._buf.size} octets "
                             f"into it", self._pos)

    def _chunks_pcap(self) -> Iterator[Chunk]:
        big = self.byteorder == ">"
        swap = big != (sys.byteorder == "big")
        h = self._rec_hdr
        max_cap = self._max_cap
        iface = self.interfaces[0]
        while True:
            self._fill(self.chunk_size)
            buf = self._buf
            if buf.size == 0:
                return
            off, stop, _ = _walk(buf, 0, 8, h, 0, swap, False, False)     # no trailer in classic pcap
            if off.size:
                hdr = _gather_words(buf, off, 4, big)
                sec, frac, caplen, origlen = hdr[:, 0], hdr[:, 1], hdr[:, 2], hdr[:, 3]
                # A fraction field of a second or more (invalid, but some writers round up to
                # 1000000 us) is carried into the seconds; past the last second the 32-bit
                # field holds, the time could not be written back as classic pcap.
                late = sec + frac // (1_000_000_000 if self.nanosecond else 1_000_000) > 0xFFFFFFFF
                bad = (caplen > max_cap) | late
                if bad.any():
                    i = int(np.argmax(bad))
                    # Records before the bad one are still good: hand them out first.
                    if i:
                        yield self._pcap_chunk(buf, off[:i], sec[:i], frac[:i], caplen[:i], origlen[:i], iface)
                    if late[i]:
                        raise PcapError(f"{self.name}: corrupt pcap record: timestamp {int(sec[i])} s plus a "
                                        f"fraction field of {int(frac[i])} is past 2106-02-07, the last second "
                                        f"pcap holds", self._pos + int(off[i]))
                    raise PcapError(f"{self.name}: corrupt pcap record: captured length "
                                    f"{int(caplen[i])} exceeds the maximum {max_cap}", self._pos + int(off[i]))
                yield self._pcap_chunk(buf, off, sec, frac, caplen, origlen, iface)
                self._consume(stop)
                continue
            # Not even one complete record in the buffer.
            if self._eof:
                if buf.size < h:
                    raise self._truncated("pcap record header")
                cap = int(_gather_u32(buf, np.zeros(1, np.int64) + 8, big)[0])
                if cap > max_cap:
                    raise PcapError(f"{self.name}: corrupt pcap record: captured length {cap} "
                                    f"exceeds the maximum {max_cap}", self._pos)
                raise self._truncated(f"pcap record ({h + cap} octets)")
            cap = int(_gather_u32(buf, np.zeros(1, np.int64) + 8, big)[0])
            if cap > max_cap:
                raise PcapError(f"{self.name}: corrupt pcap record: captured length {cap} "
                                f"exceeds the maximum {max_cap}", self._pos)
            self._fill(h + cap)

    def _pcap_chunk(self, buf: np.ndarray, off: np.ndarray, sec: np.ndarray, frac: np.ndarray,
                    caplen: np.ndarray, origlen: np.ndarray, iface: Interface) -> Chunk:
        n = off.size
        ts = sec * 1_000_000_000 + (frac if self.nanosecond else frac * 1000)
        foff = off + self._rec_hdr
        linktype = np.full(n, iface.linktype, np.int32)
        ipv4, link_len = _link_layer(buf, linktype, foff, caplen)
        return Chunk(buf, _make_batch(buf, foff, caplen, ipv4, link_len), ipv4, ts,
                     np.zeros(n, np.int32), linktype, link_len, foff, caplen, origlen,
                     off + self._pos, tuple(self.interfaces))

    # -- pcapng ----------------------------------------------------------------------------

    def _parse_shb(self) -> int:
        """Parse the SHB at the start of the buffer; returns its length."""
        self._fill(12)
        b = self._buf
        if b.size < 12:
            raise self._truncated("pcapng Section Header Block")
        bom = b[8:12].tobytes()
        if bom == struct.pack("<I", _PCAPNG_BOM):
            order = "<"
        elif bom == struct.pack(">I", _PCAPNG_BOM):
            order = ">"
        else:
            raise PcapError(f"{self.name}: corrupt pcapng Section Header Block: byte-order magic "
                            f"{bom.hex()}", self._pos + 8)
        length: int = struct.unpack(order + "I", b[4:8].tobytes())[0]
        if length < 28 or length % 4 or length > _MAX_RECORD:
            raise PcapError(f"{self.name}: corrupt pcapng Section Header Block length {length}", self._pos + 4)
        self._fill(length)
        if self._buf.size < length:
            raise self._truncated("pcapng Section Header Block")
        trail = struct.unpack(order + "I", self._buf[length - 4: length].tobytes())[0]
        if trail != length:
            raise _trailing_length_error(self.name, "Section Header Block", trail, length, self._pos + length - 4)
        major = struct.unpack(order + "H", self._buf[12:14].tobytes())[0]
        if major != 1:
            raise PcapError(f"{self.name}: unsupported pcapng version {major}", self._pos + 12)
        self.byteorder = order
        self._section_base = len(self.interfaces)
        _, written = self._options(self._buf[:length].tobytes(), 24, self._pos, _SHB_OPTIONS)
        if self._pos == 0:
            self.section_options = tuple(written)
        return length

    def _option_error(self, bad: tuple[int, str], base: int) -> PcapError:
        """The PcapError of :func:`_option_walk`'s option at fault; ``base``: the file offset of
        octet 0 of what it walked."""
        p, what = bad
        return PcapError(f"{self.name}: {what}", base + p)

    def _options(self, block: bytes, at: int, file_offset: int, rules: dict[int, _OptionRule]
                 ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """:func:`_block_options` of a block at ``file_offset``; an option at fault is a PcapError."""
        read, written, bad = _block_options(block, at, self.byteorder == ">", rules)
        if bad is not None:
            raise self._option_error(bad, file_offset)
        return read, written

    def _parse_idbs(self, buf: np.ndarray, at: np.ndarray) -> Optional[tuple[int, PcapError]]:
        """Parse the IDBs at offsets ``at`` of ``buf`` (in file order) into ``self.interfaces``,
        up to the first at fault: None, or (its index in ``at``, its PcapError).

        A group of IDBs of at most ``_IDB_GROUP`` octets at a time (or one larger IDB): the
        options of all the IDBs of a chunk at once took 16 octets of walk columns, and some
        more of Python ints, an option that may take 4, on top of what the interfaces keep."""
        ends = np.cumsum(_gather_u32(buf, at + 4, self.byteorder == ">"))
        i = 0
        while i < at.size:
            j = max(i + 1, int(np.searchsorted(ends, (int(ends[i - 1]) if i else 0) + _IDB_GROUP, side="right")))
            fault = self._parse_idb_group(buf, at[i:j])
            if fault is not None:
                return i + fault[0], fault[1]
            i = j
        return None

    def _parse_idb_group(self, buf: np.ndarray, at: np.ndarray) -> Optional[tuple[int, PcapError]]:
        """:meth:`_parse_idbs` of one group of IDBs (``at``: their offsets in ``buf``).

        Their options are walked and sorted out together, one numpy pass for all of them: a
        pass per IDB (some 30 numpy calls) cost about 70 us an IDB, so a file of 20 000
        small IDBs took seconds; what is left per IDB is a few Python steps per option."""
        o = self.byteorder
        big = o == ">"
        blen = _gather_u32(buf, at + 4, big)
        # First fault so far: (index, error); the option walk and the checks below can only
        # move it earlier, as parsing the IDBs one by one would have raised the earliest.
        fault: Optional[tuple[int, PcapError]] = None
        short = blen < 20
        if short.any():
            k = int(np.argmax(short))
            fault = k, PcapError(f"{self.name}: corrupt pcapng Interface Description Block", self._pos + int(at[k]))
        n = at.size if fault is None else fault[0]
        at, blen = at[:n], blen[:n]
        b, code, pos, olen, bad = _option_walk(buf, at + 16, at + blen - 4, big)
        if bad is not None:
            k = int(np.searchsorted(at, bad[0], side="right")) - 1
            if k < n:
                fault, n = (k, self._option_error(bad, self._pos)), k
        head = _gather_words(buf, at[:n] + 8, 2, big)       # LinkType, Reserved; SnapLen
        linktypes = ((head[:, 0] >> 16) if big else (head[:, 0] & 0xFFFF)).tolist()
        snaplens = head[:, 1].tolist()
        if not n:
            return fault
        # Options of the IDBs from the fault on are not wanted (their values lie past ``hi``).
        count = np.bincount(b, minlength=n)[:n]
        m = int(count.sum())
        code, pos, olen = code[:m], pos[:m], olen[:m]
        # The values, as read and as written, from one copy of the octets the IDBs span.
        lo, hi = int(at[0]), int(at[n - 1] + blen[n - 1])
        raw = buf[lo:hi].tobytes()
        keep, numbers = _writable(_IDB_OPTIONS, buf, code, pos, olen, big)
        if numbers:
            seg = buf[lo:hi].copy()
            for sel, off, width in numbers:
                _reverse(seg, pos[sel & keep] + off - lo, width)
            out = seg.tobytes()
        else:
            out = raw
        bounds = np.concatenate([[0], np.cumsum(count)]).tolist()
        dropped = (_IF_TSRESOL, _IF_TSOFFSET, _IF_FCSLEN)
        # The options as Python ints 8192 at a time, across IDBs and within one: about 100 octets
        # an option in lists, which for all of them (or all of one IDB's 65536) at once came to
        # more than the 4 an empty option takes and the 8 an interface keeps of it.
        batch_lo = batch_hi = 0
        codes: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        keeps: list[bool] = []
        for i in range(n):
            tsresol, tsoffset = 6, 0
            others = []
            # Equal options share one tuple: thousands of empty comments in an IDB (valid, and
            # what fuzzing makes) cost a pointer each, not a tuple each (some 60 octets).
            same: dict[tuple[int, bytes], tuple[int, bytes]] = {}
            for j in range(bounds[i], bounds[i + 1]):
                if j == batch_hi:
                    batch_lo, batch_hi = j, min(m, j + 8192)
                    s = slice(batch_lo, batch_hi)
                    codes, starts, ends = code[s].tolist(), (pos[s] - lo).tolist(), (pos[s] + olen[s] - lo).tolist()
                    keeps = keep[s].tolist()
                k = j - batch_lo
                c = codes[k]
                if c == _IF_TSRESOL:
                    if ends[k] > starts[k]:
                        tsresol = raw[starts[k]]
                elif c == _IF_TSOFFSET:
                    if ends[k] - starts[k] >= 8:    # seconds
                        tsoffset = struct.unpack_from(o + "q", raw, starts[k])[0]
                # The writer writes its own if_tsresol and the if_tsoffset of ``tsoffset``.
                # if_fcslen is left out: a frame natt replaces has no FCS, and pcapng cannot say
                # "none" for one frame (epb_flags' FCS length 0 means "not known", §4.3.1).
                if keeps[k] and c not in dropped:
                    pair = (c, out[starts[k]: ends[k]])
                    others.append(same.setdefault(pair, pair))
            file_offset = self._pos + int(at[i])
            if (tsresol & 0x7F) > 63 or (not tsresol & 0x80 and (tsresol & 0x7F) > 18):
                return i, PcapError(f"{self.name}: unsupported if_tsresol {tsresol:#x}", file_offset)
            # An offset int64 nanoseconds cannot hold would put every packet of the interface out of
            # range, or (before 1677) make in-range times that no nanosecond EPB could write back.
            if not _TSOFFSET_MIN <= tsoffset <= _TSOFFSET_MAX:
                return i, PcapError(f"{self.name}: if_tsoffset {tsoffset} s is outside 1677-09-21 .. 2262-04-11, "
                                    f"the range of natt's int64 nanoseconds", file_offset)
            opts = tuple(others)
            self.interfaces.append(Interface(linktypes[i], snaplens[i], tsresol, tsoffset, _if_name_text(opts), opts))
        return fault

    def _chunks_pcapng(self) -> Iterator[Chunk]:
        while True:
            self._fill(self.chunk_size)
            buf = self._buf
            if buf.size == 0:
                return
            if buf.size < 12:
                raise self._truncated("pcapng block header")
            big = self.byteorder == ">"
            btype = int(_gather_u32(buf, np.zeros(1, np.int64), big)[0])
            if btype == _PCAPNG_SHB:
                self._consume(self._parse_shb())
                continue
            swap = big != (sys.byteorder == "big")
            # The walk also checks each block's trailing Block Total Length (pcapng §3.1), and
            # says when it stopped at a whole block whose trailer is wrong (not one cut short).
            off, stop, bad_trailer = _walk(buf, 0, 4, 0, 12, swap, True, True)
            # One gather of the first 7 words of every block: type, length and, for packet
            # blocks, the whole EPB header. A block may be as short as 12 octets (pcapng §3.1),
            # and at the end of the buffer 7 words would run past it (an IDB without options is
            # 20, what editcap writes for an empty selection): those get type and length alone.
            # Every other word is 0 for them; only an SPB (16 octets or more) is a packet block
            # that short, and its fields are read on their own below.
            safe = off <= buf.size - 28
            if safe.all():
                hdr = _gather_words(buf, off, 7, big)
            else:
                hdr = np.zeros((off.size, 7), np.int64)
                hdr[safe] = _gather_words(buf, off[safe], 7, big)
                hdr[~safe, :2] = _gather_words(buf, off[~safe], 2, big)
            types = hdr[:, 0]
            error: Optional[PcapError] = None
            # A new section may change byte order: end this chunk at its SHB.
            shb = np.nonzero(types == _PCAPNG_SHB)[0]
            if shb.size:
                k = int(shb[0])
                stop = int(off[k])
                off, types, hdr = off[:k], types[:k], hdr[:k]
            elif stop + 4 <= buf.size and buf[stop: stop + 4].tobytes() == b"\n\r\r\n":
                # The walk stopped at a next section, whose lengths it may have read in the wrong
                # byte order: _parse_shb reads that SHB, and checks its trailer, next time round.
                pass
            elif bad_trailer:
                # A whole block that does not end with its length: corrupt, raised once the
                # blocks before it are yielded.
                blen = int(_gather_u32(buf, np.array([stop + 4], np.int64), big)[0])
                trail = int(_gather_u32(buf, np.array([stop + blen - 4], np.int64), big)[0])
                error = _trailing_length_error(self.name, "block", trail, blen, self._pos + stop + blen - 4)
            elif stop < buf.size:
                # The walk stopped before the end: a block not read whole yet, or corruption.
                blen = int(_gather_u32(buf, np.array([stop + 4], np.int64), big)[0]) if stop + 8 <= buf.size else -1
                if blen != -1 and (blen < 12 or blen % 4 or blen > _MAX_RECORD):
                    error = PcapError(f"{self.name}: corrupt pcapng block length {blen}", self._pos + stop + 4)
                elif self._eof:
                    error = PcapTruncated(f"{self.name}: truncated pcapng block: the file ends "
                                          f"{buf.size - stop} octets into it", self._pos + stop)
            if off.size:
                yield from self._pcapng_runs(buf, off, hdr, big)
            if error is not None:
                raise error
            self._consume(stop)
            if not off.size and not shb.size:
                # Not one whole block in the buffer: read until the next block is complete.
                self._fill(blen)

    def _pcapng_runs(self, buf: np.ndarray, off: np.ndarray, hdr: np.ndarray, big: bool) -> Iterator[Chunk]:
        """One chunk of the packet blocks among the blocks at ``off`` (``hdr``: their first 7
        words); IDBs among them are parsed first, other blocks skipped.

        A block at fault ends the run: the packets before it are yielded as a chunk, then its
        PcapError is raised (the module's promise; classic pcap keeps it the same way)."""
        types = hdr[:, 0]
        n_before = len(self.interfaces)      # interfaces of earlier runs
        end = off.size                       # the blocks before this one are sound so far
        error: Optional[PcapError] = None
        # Each block's trailing length was checked by the walk (_walk, pcapng §3.1).
        if not (types == _PCAPNG_EPB).all():
            idb = np.nonzero(types == _PCAPNG_IDB)[0]
            fault = self._parse_idbs(buf, off[idb]) if idb.size else None
            if fault is not None:
                end, error = int(idb[fault[0]]), fault[1]
        while True:
            try:
                chunk = self._pcapng_chunk(buf, off[:end], hdr[:end], big, n_before)
                break
            except PcapError as e:
                if e.offset is None:    # not about one block (none of the checks raises such)
                    raise
                # Each check refuses the first packet it finds at fault, but a later check may
                # refuse an earlier packet: parse again the blocks before the one holding the
                # error's offset, until every check passes. The error kept is then the earliest
                # record's; ``end`` shrinks every time, so this ends.
                end = int(np.searchsorted(off, e.offset - self._pos, side="right")) - 1
                error = e
        if chunk is not None:
            yield chunk
        if error is not None:
            raise error

    def _pcapng_chunk(self, buf: np.ndarray, off: np.ndarray, hdr: np.ndarray, big: bool,
                      n_before: int) -> Optional[Chunk]:
        """The chunk of the packet blocks among the blocks at ``off`` (their IDBs already parsed;
        ``n_before`` interfaces came before them), or None when there is none. A packet block at
        fault raises PcapError with its file offset."""
        types = hdr[:, 0]
        is_epb = types == _PCAPNG_EPB
        all_epb = bool(is_epb.all())
        is_pkt = is_epb if all_epb else is_epb | (types == _PCAPNG_SPB) | (types == _PCAPNG_PB)
        is_idb = types == _PCAPNG_IDB
        n_idb = int(is_idb.sum())
        # IDBs inside this run are parsed before any packet is interpreted: a packet can only
        # name an interface whose IDB came earlier, which the check below enforces.
        idb_before = (np.cumsum(is_idb) - is_idb)[is_pkt] if n_idb else 0
        if all_epb:
            po, ph = off, hdr
        else:
            po, ph = off[is_pkt], hdr[is_pkt]
        pt = ph[:, 0]
        if po.size == 0:
            return None
        blen = ph[:, 1]
        n = po.size
        iface = ph[:, 2].copy()
        ticks = (ph[:, 3].astype(np.uint64) << 32) | ph[:, 4].astype(np.uint64)
        caplen = ph[:, 5].copy()
        origlen = ph[:, 6].copy()
        drops = None
        if all_epb:
            foff = po + 28
            epb = None
        else:
            epb = pt != _PCAPNG_SPB
            foff = np.where(epb, po + 28, po + 12)
            pb = pt == _PCAPNG_PB
            if pb.any():
                iface = np.where(pb, _gather_u16(buf, po + 8, big), iface)
                drops = np.where(pb, _gather_u16(buf, po + 10, big), 0xFFFF)
        short = (caplen + 32 > blen) | (blen < 32)
        if epb is not None:
            short &= epb
        if short.any():
            k = int(np.argmax(short))
            raise PcapError(f"{self.name}: corrupt pcapng packet block: captured length "
                            f"{int(caplen[k])} does not fit its block of {int(blen[k])} octets",
                            self._pos + int(po[k]))
        if epb is not None and not epb.all():
            s = np.nonzero(~epb)[0]
            if n_before + n_idb == 0:
                raise PcapError(f"{self.name}: Simple Packet Block without an interface", self._pos + int(po[s[0]]))
            snap = self.interfaces[self._section_base].snaplen if len(self.interfaces) > self._section_base else 0
            # pcapng §4.4: the captured length is the original length cut to the snap length, and
            # the block (16 octets around the data) must hold it; the rest of the block is padding.
            tiny = blen[s] < 16
            if tiny.any():
                k = int(s[np.argmax(tiny)])
                raise PcapError(f"{self.name}: corrupt pcapng Simple Packet Block: {int(blen[k])} octets, "
                                f"at least 16", self._pos + int(po[k]))
            origlen[s] = _gather_u32(buf, po[s] + 8, big)
            c = np.minimum(origlen[s], snap) if snap else origlen[s]
            over = c > blen[s] - 16
            if over.any():
                k = int(np.argmax(over))
                raise PcapError(f"{self.name}: corrupt pcapng Simple Packet Block: captured length {int(c[k])} "
                                f"does not fit its block of {int(blen[s[k]])} octets", self._pos + int(po[s[k]]))
            caplen[s] = c
            iface[s] = 0
            ticks[s] = 0   # an SPB has no timestamp
        # An EPB or Packet Block has options when it holds 4 octets or more past its padded data
        # and the 32 around it (both multiples of 4); an SPB has none (§4.4). The test is cheap,
        # as a capture without options (tcpdump's) must be.
        room = blen - caplen
        if epb is not None:
            room = np.where(epb, room, 0)
        options = None
        if int(room.max()) >= 36:
            start = foff + caplen + (-caplen % 4)
            end = po + blen - 4
            b, code, pos, olen, worst = _option_walk(buf, start if epb is None else np.where(epb, start, end), end, big)
            if worst is not None:
                raise self._option_error(worst, self._pos)
            options = FrameOptions(b, code, pos, olen, big)
        if drops is not None:
            options = _with_drop_counts(buf, options, drops, big)
        # Interface ids are per section; make them global indexes into self.interfaces.
        known = np.broadcast_to(idb_before + n_before - self._section_base, iface.shape)
        bad = iface >= known
        if bad.any():
            k = int(np.argmax(bad))
            raise PcapError(f"{self.name}: packet block names interface {int(iface[k])}, but the "
                            f"section has {int(known[k])} interface(s) before it", self._pos + int(po[k]))
        iface = iface + self._section_base
        ifs = self.interfaces
        first = int(iface[0])
        if not (iface != first).any():
            linktype = np.full(n, ifs[first].linktype, np.int32)
            ts, bad = _ns_since_epoch(ticks, ifs[first])
        else:
            # The frames grouped by interface with one sort, not a pass over all of them per
            # interface: a chunk naming thousands of interfaces cost frames x interfaces.
            used, inv = np.unique(iface, return_inverse=True)
            inv = inv.reshape(-1)
            linktype = np.array([ifs[k].linktype for k in used.tolist()], np.int32)[inv]
            ts = np.empty(n, np.int64)
            bad = np.empty(n, bool)
            order = np.argsort(inv, kind="stable")
            bounds = np.searchsorted(inv[order], np.arange(used.size + 1)).tolist()
            for g, k in enumerate(used.tolist()):
                m = order[bounds[g]: bounds[g + 1]]
                ts[m], bad[m] = _ns_since_epoch(ticks[m], ifs[k])
        if bad.any():
            # Years past 2262 (or a huge if_tsoffset) are valid pcapng but beyond int64
            # nanoseconds; wrapping them would hand out wrong, even negative, times.
            k = int(np.argmax(bad))
            itf = ifs[int(iface[k])]
            secs = (_tsresol_to_ns(int(ticks[k]), itf.tsresol) + itf.tsoffset * 1_000_000_000) // 1_000_000_000
            raise PcapError(f"{self.name}: packet timestamp {secs} s since 1970 (if_tsresol {itf.tsresol:#x}, "
                            f"if_tsoffset {itf.tsoffset} s) is outside 1677-09-21 .. 2262-04-11, the range of "
                            f"natt's int64 nanoseconds", self._pos + int(po[k]))
        ipv4, link_len = _link_layer(buf, linktype, foff, caplen)
        return Chunk(buf, _make_batch(buf, foff, caplen, ipv4, link_len), ipv4, ts,
                     iface.astype(np.int32), linktype, link_len, foff, caplen, origlen,
                     po + self._pos, tuple(ifs), options)


# ----------------------------------------------------------------------------------------------
# Writer


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int in ``lo .. hi`` (the
    range of the header field it goes into, which struct would refuse with its own error)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name}: an integer from {lo} to {hi}, got {value!r}")


def _check_interface(itf: object, name: str) -> None:
    if not isinstance(itf, Interface):
        raise ValueError(f"{name}: a natt.pcap.Interface, got {type(itf).__name__}")
    # IDB fields (pcapng §4.2): LinkType is 16 bits, SnapLen 32 bits.
    _check_int(f"{name}.linktype", itf.linktype, 0, 0xFFFF)
    _check_int(f"{name}.snaplen", itf.snaplen, 0, 0xFFFFFFFF)
    _check_int(f"{name}.tsoffset", itf.tsoffset, _TSOFFSET_MIN, _TSOFFSET_MAX)   # as PcapReader takes
    # The writer writes these itself, from the fields (if_tsresol: always nanoseconds).
    _check_options(f"{name}.options", itf.options, (_IF_TSRESOL, _IF_TSOFFSET))
    text = _if_name_text(itf.options)
    if itf.name and any(c == _IF_NAME for c, _ in itf.options) and itf.name != text:
        raise ValueError(f"{name}.name: {itf.name!r}, but its if_name option, which is what is written, "
                         f"reads {text!r}; change or drop the if_name options too")


def _check_options(name: str, options: object, own: tuple[int, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``options`` is a sequence of ``(code, value)``
    pairs an option list holds (pcapng §3.5: 16-bit codes, not opt_endofopt, and values of at
    most 65535 octets, as bytes), none of a code in ``own``, which the writer writes itself."""
    if not isinstance(options, (tuple, list)):
        raise ValueError(f"{name}: a sequence of (code, value) pairs, got {type(options).__name__}")
    for k, opt in enumerate(options):
        if not (isinstance(opt, tuple) and len(opt) == 2 and isinstance(opt[1], bytes)):
            raise ValueError(f"{name}[{k}]: a (code, value) pair with a bytes value, got {opt!r}")
        _check_int(f"{name}[{k}] code", opt[0], 1, 0xFFFF)
        if opt[0] in own:
            raise ValueError(f"{name}[{k}]: option code {opt[0]} is written by natt itself")
        if len(opt[1]) > 0xFFFF:
            raise ValueError(f"{name}[{k}]: a value of {len(opt[1])} octets; an option holds at most 65535")


def _as_written(linktype: int) -> int:
    """The link type a :meth:`PcapWriter.like` writer gives frames read as ``linktype``:
    LINKTYPE_IPV4 (228) says IPv4 for every frame, and decap may replace one with IPv6 (a tunnel
    SA's inner packet), so those files are written as LINKTYPE_RAW (101), raw IPv4 or IPv6 by
    the version nibble; the frames themselves are the same octets."""
    return LINKTYPE_RAW if linktype == LINKTYPE_IPV4 else linktype


# Options _OptionLists takes at a time. Its temporaries, some 120 octets an option, stay near 4 MiB
# however many options a chunk holds (16384 empty ones fit one 64 KiB list, 67 million a 256 MiB
# block), and a step's few dozen numpy calls cost little beside 32768 options' own work.
_OPTION_SLICE = 1 << 15


class _OptionLists:
    """The option lists of the Enhanced Packet Blocks natt writes for frames ``idx`` of a chunk
    of ``n`` frames, from the chunk's options ``o`` (their values in ``buffer``; ``rep``: the
    frames replaced), little-endian, each ending in opt_endofopt: ``lengths``, in octets per
    record (0 when it has none), then the octets themselves, which :meth:`put` writes straight
    into the records. Made and written ``_OPTION_SLICE`` options at a time: at once, and
    gathered into an array of their own first, they took 100 octets an option of int64
    temporaries, 25 times the size of a file of empty options.

    Every option is kept but those :func:`_writable` leaves out and, on a replaced frame,
    the hash of the data it no longer has (epb_hash); a replaced frame's epb_flags lose
    their FCS length, as the frame has no FCS (§4.3.1: 0 is "not known")."""

    def __init__(self, o: FrameOptions, buffer: np.ndarray, n: int, idx: np.ndarray, rep: np.ndarray) -> None:
        self._o, self._buffer = o, buffer
        self._record = np.full(n, -1, np.int64)
        self._record[idx] = np.arange(idx.size)
        self._changed = np.zeros(n, bool)
        self._changed[idx] = rep
        self._keep = np.empty(o.code.size, bool)
        self._sums = np.zeros(idx.size, np.int64)      # octets of each record's options
        for a in range(0, o.code.size, _OPTION_SLICE):
            s = slice(a, a + _OPTION_SLICE)
            frame, code, length = o.frame[s], o.code[s], o.length[s]
            keep, _ = _writable(_EPB_OPTIONS, buffer, code, o.pos[s], length, o.big_endian)
            rec = self._record[frame]
            keep &= (rec >= 0) & ~(self._changed[frame] & (code == _OPT_HASH))
            self._keep[s] = keep
            rec = rec[keep]
            if rec.size:       # a record's options are together, in record order: rec[0] .. rec[-1]
                size = 4 + ((length[keep].astype(np.int64) + 3) & ~3)
                self._sums[rec[0]: rec[-1] + 1] += np.bincount(rec - rec[0], weights=size).astype(np.int64)
        # opt_endofopt: a writer MUST end a list with it (§3.5)
        self.lengths = np.where(self._sums > 0, self._sums + 4, 0)

    def put(self, out: np.ndarray, at: np.ndarray) -> None:
        """Write the lists into ``out``, record ``r``'s at ``at[r]``, over zeros (they are its
        pads and opt_endofopt)."""
        o = self._o
        # Where an option goes: its record's list, plus the options kept before it less the
        # earlier records' ones.
        base = at - (np.cumsum(self._sums) - self._sums)
        done = 0
        for a in range(0, o.code.size, _OPTION_SLICE):
            s = slice(a, a + _OPTION_SLICE)
            k = np.flatnonzero(self._keep[s])
            if not k.size:
                continue
            code, length, frame = o.code[s][k], o.length[s][k].astype(np.int64), o.frame[s][k]
            size = 4 + ((length + 3) & ~3)
            before = np.cumsum(size)
            dst = base[self._record[frame]] + (done - size + before)
            done += int(before[-1])
            head = np.empty((k.size, 2), "<u2")
            head[:, 0], head[:, 1] = code, length
            copy_segments(out, dst, head.view(np.uint8).reshape(-1), np.arange(0, 4 * k.size, 4, dtype=np.int64),
                          np.full(k.size, 4, np.int64))
            copy_segments(out, dst + 4, self._buffer, o.pos[s][k], length)
            if o.big_endian:      # asked again rather than kept: a mask an option per number
                _, numbers = _writable(_EPB_OPTIONS, self._buffer, o.code[s], o.pos[s], o.length[s], True)
                for sel, off, width in numbers:
                    _reverse(out, dst[sel[k]] + 4 + off, width)
            flags = dst[(code == _OPT_FLAGS) & self._changed[frame]] + 4
            out[flags] &= 0x1F                    # bits 5..8, little-endian: the top 3 of octet 0 ...
            out[flags + 1] &= 0xFE                # ... and the lowest of octet 1


class PcapWriter:
    """Write packet records as classic pcap or pcapng.

    ``fmt`` is ``"pcap"`` or ``"pcapng"``. For classic pcap, ``linktype``, ``nanosecond``,
    ``byteorder`` (``"<"`` or ``">"``) and ``fcs_len`` (octets of FCS ending every frame, even,
    or None: not said; replaced frames get a new one) choose the file header; for pcapng, ``interfaces``
    lists the interfaces to declare up front (more are declared as records name them, see
    :meth:`write_chunk`, or by :meth:`declare_interfaces`). Use :meth:`like` to write in a
    reader's format.

    ``grow`` raises every snap length written (``snaplen``, and each interface's, those declared
    later included) by that many octets, up to 262144; a pcapng snap length of 0 (no limit)
    stays 0. Records longer than their snap length are still written, as readers take them
    (tshark, and PcapReader up to the larger of snaplen and 262144): a snap length is a capture
    setting that TSO frames already exceed, so the writer keeps headers truthful by ``grow``
    rather than by refusing or cutting frames.

    ``ipv4_as_raw`` writes the link type LINKTYPE_IPV4 (228; the file's, or an interface's) as
    LINKTYPE_RAW (101), whose frames are the same octets but may be IPv6 too, as a decap
    replacing frames may write (a tunnel SA's inner IPv6); :meth:`like` sets it. A replaced
    frame whose new datagram is IPv6 gets a link header that says so (see :meth:`write_chunk`).

    pcapng: ``section_options`` are the Section Header Block's options as ``(code, value)``
    pairs, values little-endian (:attr:`PcapReader.section_options`); natt writes its own
    ``shb_userappl`` (code 4), "natt" and its version, as the application that made the section.
    Each interface's :attr:`Interface.options` go into its IDB, and :meth:`write_chunk` carries
    the frames' options.

    Arguments that do not fit the format raise ``ValueError`` naming the parameter: the
    constructor's before ``dest`` is created or truncated, a write's before it writes anything.
    """

    def __init__(self, dest: PathOrFile, *, fmt: str = "pcap", linktype: int = LINKTYPE_ETHERNET,
                 nanosecond: bool = False, byteorder: str = "<", snaplen: int = 262144,
                 interfaces: Iterable[Interface] = (), fcs_len: Optional[int] = None, grow: int = 0,
                 ipv4_as_raw: bool = False, section_options: Sequence[tuple[int, bytes]] = ()) -> None:
        # Everything is checked before ``dest`` is created or truncated.
        if fmt not in ("pcap", "pcapng"):
            raise ValueError(f"fmt: 'pcap' or 'pcapng', got {fmt!r}")
        if byteorder not in ("<", ">"):
            raise ValueError(f"byteorder: '<' or '>', got {byteorder!r}")
        if byteorder != "<" and fmt != "pcap":
            raise ValueError("byteorder: classic pcap only (natt writes pcapng little-endian, which every "
                             "reader takes)")
        _check_int("linktype", linktype, 0, 0xFFFF)
        _check_int("snaplen", snaplen, 0, 0xFFFFFFFF)
        _check_int("grow", grow, 0, 0xFFFFFFFF)
        if fcs_len is not None:
            if fmt != "pcap":
                raise ValueError("fcs_len: classic pcap only (its file header carries it)")
            _check_int("fcs_len", fcs_len, 0, 30)
            if fcs_len % 2:
                raise ValueError(f"fcs_len: a whole number of 16-bit units, got {fcs_len}")
        interfaces = list(interfaces)
        if interfaces and fmt == "pcap":
            raise ValueError("interfaces: pcapng only (a classic pcap file has one link type: linktype)")
        for k, itf in enumerate(interfaces):
            _check_interface(itf, f"interfaces[{k}]")
        if section_options and fmt == "pcap":
            raise ValueError("section_options: pcapng only (a classic pcap file header has none)")
        _check_options("section_options", section_options, (_SHB_USERAPPL,))
        self.fmt = fmt
        self.byteorder = byteorder if fmt == "pcap" else "<"
        self.nanosecond = nanosecond
        self._ipv4_as_raw = bool(ipv4_as_raw)
        self.linktype = _as_written(linktype) if self._ipv4_as_raw else linktype
        self._grow = grow
        self.snaplen = self._grown(snaplen)
        self.fcs_len = fcs_len
        self._declared: list[Interface] = []
        # like(): the reader whose interfaces close() declares where no record named them.
        self._source: Optional[PcapReader] = None
        self.frames_written = 0
        if fmt == "pcap":
            magic = _PCAP_MAGIC_NS if nanosecond else _PCAP_MAGIC_US
            field = self.linktype if fcs_len is None else self.linktype | _PCAP_FCS_P | (fcs_len // 2) << 28
            header = struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, self.snaplen, field)
            idbs = []
        else:
            # SHB: byte-order magic, version 1.0, section length unknown (-1), the options given
            # and natt's shb_userappl: the application that made this section (§4.1).
            body = struct.pack("<IHHq", _PCAPNG_BOM, 1, 0, -1) + _pack_options(
                [*section_options, (_SHB_USERAPPL, f"natt {__version__}".encode())])
            _check_block_len("section_options", "Section Header Block", 12 + len(body), len(body) - 16)
            header = struct.pack("<II", _PCAPNG_SHB, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
            idbs = self._idbs(interfaces, 0, "interfaces")
        if isinstance(dest, (str, os.PathLike)):
            self._file: BinaryIO = open(dest, "wb")
            self._owns = True
        else:
            self._file = dest
            self._owns = False
        try:
            self._write(header)
            self._declare(idbs)
        except BaseException:
            # No writer comes back to close it: the file (a full disk, a closed pipe) would stay
            # open for as long as anything holds this exception's traceback.
            self._close_owned()
            raise

    @classmethod
    def like(cls, reader: PcapReader, dest: PathOrFile, *, grow: int = 0) -> "PcapWriter":
        """A writer producing the same format as ``reader`` (pcap: same link type, timestamp
        resolution, byte order and FCS length; pcapng: the reader's interfaces, with the same
        numbers, each declared at the first chunk whose records name it, and those no record
        names when the writer closes, and the first section's options but its ``shb_userappl``).
        ``grow``: how many octets replaced frames may be longer than the frames read
        (``natt._batch.ENCAP_OVERHEAD`` for encap), added to the snap lengths."""
        if reader.format == "pcap":
            itf = reader.interfaces[0]
            return cls(dest, fmt="pcap", linktype=itf.linktype, nanosecond=reader.nanosecond,
                       byteorder=reader.byteorder, snaplen=max(reader.snaplen, 65535),
                       fcs_len=reader.fcs_len, grow=grow, ipv4_as_raw=True)
        writer = cls(dest, fmt="pcapng", interfaces=reader.interfaces, grow=grow, ipv4_as_raw=True,
                     section_options=[o for o in reader.section_options if o[0] != _SHB_USERAPPL])
        # A pcapng reader learns its interfaces as it reads, and one that no packet names reaches
        # no chunk (a capture of interfaces and no packets would come out as a bare SHB):
        # close() asks the reader for them.
        writer._source = reader
        return writer

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Declare the interfaces of a :meth:`like` writer's reader that no record named (pcapng),
        flush, and close the file if this writer opened it."""
        if self._file.closed:
            return
        try:
            if self._source is not None:
                self.declare_interfaces(self._source.interfaces)
                self._source = None
            self._file.flush()
        except BaseException:
            # The file is closed all the same: a flush that failed (ENOSPC) fails again on every
            # retry, and the descriptor would stay open for as long as the writer is referenced.
            self._close_owned()
            raise
        if self._owns:
            self._file.close()

    def _close_owned(self) -> None:
        """Close the file if this writer opened it, after an error that is being raised: the
        buffered octets are lost, and the second failure to write them is not reported."""
        if self._owns:
            try:
                self._file.close()      # flushes again, and releases the descriptor even if that fails
            except OSError:
                pass

    def _write(self, data: bytes | memoryview) -> None:
        # A raw stream (sys.stdout.buffer under ``python -u`` or PYTHONUNBUFFERED, a FileIO the
        # caller opened with buffering=0) may take part of a write and say how much; the rest
        # would be lost without an error. Buffered streams take it all or raise.
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = self._file.write(view)
            if not n:
                # None: a non-blocking stream that is full; there is no event loop here to wait on.
                raise BlockingIOError(errno.EAGAIN, "the output stream took none of a write (full and non-blocking)")
            view = view[n:]

    def _grown(self, snaplen: int) -> int:
        # A snap length is a promise that no record is longer (pcap-savefile(5) SnapLen, pcapng
        # §4.2 SnapLen): one the writer copied must cover frames that grew. Never lowered; raised
        # no further than libpcap's MAXIMUM_SNAPLEN, 262144; 0, pcapng's "no limit", stays.
        return max(snaplen, min(snaplen + self._grow, 262144)) if snaplen else 0

    def _idbs(self, interfaces: Sequence[Interface], first: int, name: str) -> list[tuple[Interface, bytes]]:
        """Each of ``interfaces`` as it is declared, and its Interface Description Block; those are
        interfaces ``first``, ``first + 1``, ... of the output, and ``name[k]`` in the caller's
        terms (a ``ValueError`` names one whose block would be longer than PcapReader takes)."""
        return [self._idb(itf, f"{name}[{k}]") for k, itf in enumerate(interfaces, first)]

    def _declare(self, idbs: list[tuple[Interface, bytes]]) -> None:
        """Write the blocks of :meth:`_idbs` (after every check of the call, so that a refused
        call leaves no trace)."""
        for itf, block in idbs:
            self._write(block)
            self._declared.append(itf)

    def _idb(self, itf: Interface, name: str) -> tuple[Interface, bytes]:
        itf = dataclasses.replace(itf, snaplen=self._grown(itf.snaplen),
                                  linktype=_as_written(itf.linktype) if self._ipv4_as_raw else itf.linktype)
        # Nanosecond resolution for every interface: the reader hands out nanoseconds. The input's
        # if_tsoffset is kept: times before 1970 (a negative offset) have no other way into the
        # unsigned EPB timestamp (pcapng §4.2 if_tsoffset, §4.3 Timestamp).
        # The interface's other options follow (Interface.options: little-endian already).
        own = [(_IF_TSRESOL, b"\x09")]
        if itf.tsoffset:
            own.append((_IF_TSOFFSET, struct.pack("<q", itf.tsoffset)))
        # An if_name among the options holds the octets read; ``name`` is only their text then.
        if itf.name and not any(c == _IF_NAME for c, _ in itf.options):
            own.append((_IF_NAME, itf.name.encode()))
        opts = _pack_options([*own, *itf.options])
        blen = 20 + len(opts)
        _check_block_len(name, "Interface Description Block", blen, len(opts))
        return itf, (struct.pack("<IIHHI", _PCAPNG_IDB, blen, itf.linktype & 0xFFFF, 0, itf.snaplen)
                     + opts + struct.pack("<I", blen))

    def declare_interfaces(self, interfaces: Sequence[Interface]) -> int:
        """pcapng: declare every interface of ``interfaces`` past the ones this writer has
        declared, in order, so that interface ``i`` of the output is ``interfaces[i]`` (the
        first ones are taken as declared already: a reader's list, as it grows, can be passed
        again and again). Returns how many were declared. :meth:`write_chunk` does this for the
        interfaces its records name; this is for those that no record names."""
        if self.fmt != "pcapng":
            raise ValueError("declare_interfaces: pcapng only (a classic pcap file has one interface)")
        new = list(interfaces)[len(self._declared):]
        for k, itf in enumerate(new, len(self._declared)):
            _check_interface(itf, f"interfaces[{k}]")
        self._declare(self._idbs(new, len(self._declared), "interfaces"))
        return len(new)

    def _max_caplen(self) -> int:
        """The longest frame a record may hold: what PcapReader accepts, so that everything
        written reads back (classic pcap: the larger of the snap length and libpcap's
        MAXIMUM_SNAPLEN, 262144, as other readers refuse more; pcapng: the block limit)."""
        if self.fmt == "pcap":
            return min(max(self.snaplen, 262144), _MAX_RECORD)
        return _MAX_RECORD - 32

    def _check_caplen(self, caplen: np.ndarray, name: str, index: np.ndarray) -> None:
        top = self._max_caplen()
        if caplen.size and int(caplen.max()) > top:
            k = int(np.argmax(caplen > top))
            raise ValueError(f"{name}[{int(index[k])}]: a {int(caplen[k])}-octet frame; a {self.fmt} record "
                             f"written here holds at most {top}")

    @staticmethod
    def _check_blocks(chunk: Chunk, idx: np.ndarray, caplen: np.ndarray, opt_len: np.ndarray) -> None:
        """Raise ``ValueError`` naming the first of frames ``idx`` of ``chunk`` whose Enhanced
        Packet Block, ``caplen`` octets of frame and ``opt_len`` of options, would be longer than
        the blocks PcapReader takes. A frame :meth:`_check_caplen` passes fits a block on its own,
        but not always with its options: a list may hold 65536 options of up to 65535 octets, and
        gains an opt_endofopt, or an epb_dropcount from a Packet Block, on the way through natt."""
        blen = 32 + caplen + (-caplen % 4) + opt_len
        if not blen.size or int(blen.max()) <= _MAX_RECORD:
            return
        k = int(np.argmax(blen > _MAX_RECORD))
        i = int(idx[k])
        raise ValueError(f"chunk: frame {i} (read at file offset {int(chunk.file_offsets[i])}) would be a "
                         f"{int(blen[k])}-octet pcapng block, {int(caplen[k])} octets of frame and "
                         f"{int(opt_len[k])} of options; natt reads blocks of at most {_MAX_RECORD} octets")

    def _ticks(self, ts_ns: np.ndarray, iface: np.ndarray) -> np.ndarray:
        """pcapng EPB timestamps (uint64 nanoseconds since each interface's if_tsoffset)."""
        # write_frames declares its default interface (no offset) once its records pass.
        offsets = [d.tsoffset * 1_000_000_000 for d in self._declared] or [0]
        ticks = np.array(ts_ns, np.int64).view(np.uint64)    # a copy, modulo 2**64 like EPB times
        if not ts_ns.size:
            return ticks
        first = int(iface[0])
        for k in [first] if not (iface != first).any() else np.unique(iface).tolist():
            m = iface == k
            # Never past 2**64 ticks: an offset is at least -2**63 ns (_TSOFFSET_MIN).
            earliest = int(ts_ns[m].min())
            if earliest < offsets[k]:
                raise ValueError(f"ts_ns: {earliest} ns is before pcapng interface {k}'s if_tsoffset, "
                                 f"{offsets[k]} ns, and EPB timestamps are unsigned")
            if offsets[k]:
                ticks[m] -= np.uint64(offsets[k] % (1 << 64))
        return ticks

    def _record_headers(self, ts_ns: np.ndarray, caplen: np.ndarray, origlen: np.ndarray,
                        iface: np.ndarray, opt_len: Optional[np.ndarray] = None) -> np.ndarray:
        """Per-record headers as an (n, h) uint8 array (pcap: 16 octets; pcapng EPB: 28, the
        block length counting ``opt_len`` octets of options per record)."""
        n = ts_ns.size
        if self.fmt == "pcap":
            if n and (int(ts_ns.min()) < 0 or int(ts_ns.max()) >= 2**32 * 1_000_000_000):
                bad = int(ts_ns.min()) if int(ts_ns.min()) < 0 else int(ts_ns.max())
                raise ValueError(f"ts_ns: {bad} ns cannot be written to pcap (0 .. 2**32 s)")
            dt = np.dtype([("sec", "u4"), ("frac", "u4"), ("cap", "u4"), ("orig", "u4")])
            dt = dt.newbyteorder(">" if self.byteorder == ">" else "<")
            h = np.empty(n, dt)
            sec, rem = np.divmod(ts_ns, 1_000_000_000)
            h["sec"] = sec
            h["frac"] = rem if self.nanosecond else rem // 1000
            h["cap"] = caplen
            h["orig"] = origlen
            return h.view(np.uint8).reshape(n, 16)
        dt = np.dtype([("type", "<u4"), ("blen", "<u4"), ("if", "<u4"), ("hi", "<u4"), ("lo", "<u4"),
                       ("cap", "<u4"), ("orig", "<u4")])
        h = np.empty(n, dt)
        h["type"] = _PCAPNG_EPB
        blen = 32 + caplen + (-caplen % 4)
        h["blen"] = blen if opt_len is None else blen + opt_len
        h["if"] = iface
        t = self._ticks(ts_ns, iface)
        h["hi"] = t >> np.uint64(32)
        h["lo"] = t & np.uint64(0xFFFFFFFF)
        h["cap"] = caplen
        h["orig"] = origlen
        return h.view(np.uint8).reshape(n, 28)

    def _records(self, hdrs: np.ndarray, caplen: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 options: Optional[_OptionLists] = None) -> tuple[np.ndarray, np.ndarray]:
        """The octets of ``len(hdrs)`` records: each header, then its ``caplen`` octets gathered
        from ``parts`` (``(buffer, offsets, lengths)``, one after another, lengths summing to
        ``caplen``), then for pcapng the zero pad, the record's list of ``options`` (as
        :meth:`_frame_options` gives them) and the trailing Block Total Length, which repeats
        the header's (octets 4..7); and where in them each frame starts."""
        n, hsize = hdrs.shape
        ng = self.fmt == "pcapng"
        pad = -caplen % 4 if ng else 0
        rec_len = hsize + caplen + pad + (4 if ng else 0)
        if options is not None:
            rec_len = rec_len + options.lengths
        pos = np.cumsum(rec_len) - rec_len
        out = (np.zeros if ng else np.empty)(int(rec_len.sum()), np.uint8)   # pcapng pads are zero
        hflat = hdrs.reshape(-1)
        h_off = np.arange(n, dtype=np.int64) * hsize
        copy_segments(out, pos, hflat, h_off, np.full(n, hsize, np.int64))
        pos = frames = pos + hsize
        for buf, offsets, lengths in parts:
            copy_segments(out, pos, buf, offsets, lengths)
            pos = pos + lengths
        if options is not None:
            options.put(out, pos + pad)
            pad = pad + options.lengths      # the trailing length comes after them
        if ng:
            copy_segments(out, pos + pad, hflat, h_off + 4, np.full(n, 4, np.int64))
        return out, frames

    @staticmethod
    def _say_ipv6(out: np.ndarray, frames: np.ndarray, linktype: np.ndarray, link: np.ndarray,
                  replaced: np.ndarray, data: np.ndarray, offsets: np.ndarray) -> None:
        """Where a replacing datagram is IPv6 (a tunnel SA's inner packet, next header 41), make
        the link header kept in front of it say so, as it said IPv4 for the ESP packet: the
        Ethertype before it (Ethernet after any VLAN tags, Linux cooked v1), Linux cooked v2's
        protocol, a BSD loopback header's address family (in the byte order it had). Raw IP
        says it by the version nibble; LINKTYPE_IPV4 cannot, which is why :meth:`like` writes
        it as LINKTYPE_RAW."""
        if not data.size:
            return
        first = data[np.minimum(np.where(replaced, offsets, 0), data.size - 1)]
        v6 = replaced & ((first >> 4) == 6)
        if not v6.any():
            return
        ether = v6 & ((linktype == LINKTYPE_ETHERNET) | (linktype == LINKTYPE_LINUX_SLL))
        sll2 = v6 & (linktype == LINKTYPE_LINUX_SLL2)
        for at in (frames[ether] + link[ether] - 2, frames[sll2]):
            out[at], out[at + 1] = _ETHERTYPE_IPV6 >> 8, _ETHERTYPE_IPV6 & 0xFF
        bsd = v6 & ((linktype == LINKTYPE_NULL) | (linktype == LINKTYPE_LOOP))
        if bsd.any():
            at = frames[bsd][:, None] + np.arange(4)
            big = (out[at] == np.array([0, 0, 0, _AF_INET_BSD], np.uint8)).all(axis=1)
            out[at] = np.where(big[:, None], np.array([0, 0, 0, _AF_INET6_BSD], np.uint8),
                               np.array([_AF_INET6_BSD, 0, 0, 0], np.uint8))

    def write_chunk(self, chunk: Chunk, datagrams: Optional[PacketBatch] = None,
                    replace: Optional[np.ndarray] = None, keep: Optional[np.ndarray] = None) -> int:
        """Write ``chunk``'s frames, in order; returns how many were written.

        Frame ``i`` is written as read unless ``replace[i]``: then its link header (the
        ``link_len[i]`` octets before the IPv4 header) is followed by ``datagrams[i]`` (and, when
        the file header declares an FCS, a new one: see ``fcs_len``); if that datagram is IPv6,
        the header's Ethertype, protocol or address family says IPv6 instead. Only IPv4 frames
        can be replaced. Frames with ``keep[i]`` False are left out.

        A record longer than PcapReader reads back (classic pcap: a frame longer than the larger
        of the snap length and 262144 octets; pcapng: a block of more than 256 MiB, its options
        included) is a ``ValueError`` naming the frame, and an interface whose IDB would be one
        a ``ValueError`` naming the interface, raised before anything of the chunk is written.
        """
        n = len(chunk)
        if replace is None:
            replace = np.zeros(n, bool)
        replace = np.asarray(replace, bool)
        if replace.shape != (n,):
            raise ValueError(f"replace: expected {n} flags, got shape {replace.shape}")
        if replace.any():
            if datagrams is None or len(datagrams) != n:
                raise ValueError("datagrams: one entry per frame is needed when replacing frames")
            if (replace & ~chunk.ipv4).any():
                raise ValueError("replace: only IPv4 frames can be replaced")
        keepm = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
        if keepm.shape != (n,):
            raise ValueError(f"keep: expected {n} flags, got shape {keepm.shape}")
        if self.fmt == "pcap" and n:
            written = chunk.linktype
            if self._ipv4_as_raw:       # frames read as raw IPv4 are written as raw IP
                written = np.where(written == LINKTYPE_IPV4, _as_written(LINKTYPE_IPV4), written)
            if (written != self.linktype).any():
                raise ValueError("a classic pcap file has one link type; this chunk has frames of another")
        idx = np.nonzero(keepm)[0]
        rep = replace[idx]
        link = chunk.link_len[idx]
        if datagrams is not None and rep.any():
            dlen = np.where(rep, datagrams.lengths[idx] if len(datagrams) == n else 0, 0)
        else:
            dlen = np.zeros(idx.size, np.int64)
        fcs = np.where(rep, self.fcs_len or 0, 0)
        caplen = np.where(rep, link + dlen + fcs, chunk.caplen[idx])
        self._check_caplen(caplen, "datagrams", idx)
        origlen = np.where(rep, caplen, chunk.origlen[idx])
        options = None
        if self.fmt == "pcapng" and chunk.options is not None:
            options = self._frame_options(chunk.options, chunk.options.values(chunk.buffer), len(chunk), idx, rep)
        if self.fmt == "pcapng":
            if options is not None:
                self._check_blocks(chunk, idx, caplen, options.lengths)
            top = int(chunk.iface.max()) + 1 if n else 0
            # After the checks, so that a refused chunk leaves no trace, not even an IDB.
            self._declare(self._idbs(chunk.interfaces[len(self._declared):top], len(self._declared),
                                     "chunk.interfaces"))
        if idx.size == 0:
            return 0
        hdrs = self._record_headers(chunk.ts_ns[idx], caplen, origlen, chunk.iface[idx],
                                    None if options is None else options.lengths)
        first = np.where(rep, link, chunk.caplen[idx])        # octets taken from the frame as read
        parts = [(chunk.buffer, chunk.frame_offsets[idx], first)]
        if datagrams is not None and rep.any():
            parts.append((datagrams.data, datagrams.offsets[idx], dlen))
            if self.fcs_len:
                parts.append((self._fcs(chunk, datagrams, idx, rep), np.arange(idx.size) * self.fcs_len, fcs))
        out, frames = self._records(hdrs, caplen, parts, options)
        if datagrams is not None and rep.any():
            self._say_ipv6(out, frames, chunk.linktype[idx], link, rep & (dlen > 0),
                           datagrams.data, datagrams.offsets[idx])
        self._write(out.data)
        self.frames_written += idx.size
        return int(idx.size)

    @staticmethod
    def _frame_options(o: FrameOptions, buffer: np.ndarray, n: int, idx: np.ndarray, rep: np.ndarray
                       ) -> Optional[_OptionLists]:
        """The option lists of the records of frames ``idx`` of a chunk of ``n`` frames, whose
        options are ``o``, their values in ``buffer`` (``rep``: the frames replaced), or None
        when no record has any."""
        lists = _OptionLists(o, buffer, n, idx, rep)
        return lists if lists.lengths.any() else None

    def _fcs(self, chunk: Chunk, datagrams: PacketBatch, idx: np.ndarray, rep: np.ndarray) -> np.ndarray:
        """``fcs_len`` octets per frame ``idx``: the FCS of the new frame (link header, then the
        datagram) where ``rep``. The header promises every frame ends in one, and a replaced frame
        lost the one it was read with. A 4-octet FCS is the CRC-32 of IEEE 802.3 §3.2.9 (Ethernet,
        802.11 and 32-bit HDLC FCS alike), least significant octet first; other lengths, whose CRC
        depends on the link, are zeros."""
        fcs_len = self.fcs_len or 0      # called only when the header declares an FCS
        out = np.zeros((idx.size, fcs_len), np.uint8)
        if fcs_len == 4:
            frames, data = chunk.buffer.data, datagrams.data.data
            sel = np.nonzero(rep)[0]
            crcs = []
            for i in idx[sel].tolist():
                fo, o = int(chunk.frame_offsets[i]), int(datagrams.offsets[i])
                crc = zlib.crc32(frames[fo: fo + int(chunk.link_len[i])])
                crcs.append(zlib.crc32(data[o: o + int(datagrams.lengths[i])], crc))
            out[sel] = np.array(crcs, "<u4").view(np.uint8).reshape(-1, 4)
        return out.reshape(-1)

    def write_frames(self, frames: Iterable[bytes], ts_ns: Optional[Iterable[int]] = None,
                     iface: int = 0) -> int:
        """Write whole link-layer frames (no parsing) of interface ``iface`` (pcapng: one of
        those declared; the writer's ``linktype`` is declared if none is yet); ``ts_ns`` has one
        integer timestamp per frame, by default all 0."""
        frames = [bytes(f) for f in frames]
        n = len(frames)
        # Checked before anything is written (an IDB included), so a refused call leaves no trace.
        top = max(len(self._declared), 1) if self.fmt == "pcapng" else 1
        if isinstance(iface, bool) or not isinstance(iface, (int, np.integer)) or not 0 <= iface < top:
            raise ValueError(f"iface: an interface this writer has declared, 0 .. {top - 1}, got {iface!r}")
        if ts_ns is None:
            ts = np.zeros(n, np.int64)
        else:
            given = np.asarray(list(ts_ns))
            if given.shape != (n,):
                raise ValueError(f"ts_ns: one timestamp per frame, {n} in all; got shape {given.shape}")
            # Floats would be rounded, and integers past int64 come as dtype object.
            if n and (given.dtype.kind not in "iu" or int(given.max()) >= 2**63):
                raise ValueError(f"ts_ns: integer nanoseconds within int64, got {given.dtype} values")
            ts = given.astype(np.int64)
        caplen = np.array([len(f) for f in frames], np.int64)
        self._check_caplen(caplen, "frames", np.arange(n))
        hdrs = self._record_headers(ts, caplen, caplen, np.full(n, iface, np.int64))
        if self.fmt == "pcapng" and not self._declared:
            self._declare(self._idbs([Interface(self.linktype)], 0, "interfaces"))
        data = np.frombuffer(b"".join(frames), np.uint8)
        self._write(self._records(hdrs, caplen, [(data, np.cumsum(caplen) - caplen, caplen)])[0].data)
        self.frames_written += n
        return n


# ----------------------------------------------------------------------------------------------
# Conveniences


_ETH_HEADER = bytes.fromhex("020000000002" "020000000001" "0800")


def write_datagrams(dest: PathOrFile, datagrams: Iterable[bytes], *, ts_ns: Optional[Iterable[int]] = None,
                    fmt: str = "pcap", linktype: int = LINKTYPE_ETHERNET, nanosecond: bool = True) -> int:
    """Write IPv4 datagrams as a capture: each in an Ethernet frame (locally administered
    MAC addresses) for ``LINKTYPE_ETHERNET``, or bare for ``LINKTYPE_IPV4``/``LINKTYPE_RAW``."""
    if linktype == LINKTYPE_ETHERNET:
        frames = [_ETH_HEADER + bytes(d) for d in datagrams]
    elif linktype in (LINKTYPE_IPV4, LINKTYPE_RAW):
        frames = [bytes(d) for d in datagrams]
    else:
        raise ValueError(f"linktype: write_datagrams supports 1, 101 and 228, got {linktype}")
    with PcapWriter(dest, fmt=fmt, linktype=linktype, nanosecond=nanosecond) as w:
        return w.write_frames(frames, ts_ns)


def read_frames(source: PathOrFile) -> list[tuple[int, int, bytes, Optional[bytes]]]:
    """Every record of a capture as ``(ts_ns, interface, frame, ipv4_datagram_or_None)``.

    Reads the whole file: for tests and small captures. Use :class:`PcapReader` for big ones.
    """
    out = []
    with PcapReader(source) as r:
        for c in r:
            for i in range(len(c)):
                out.append((int(c.ts_ns[i]), int(c.iface[i]), c.frame(i),
                            c.batch[i] if c.ipv4[i] else None))
    return out
