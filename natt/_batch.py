"""Packet batches and per-batch results (DESIGN "Packet batches", "Data path").

A batch is one contiguous ``uint8`` buffer plus ``int64`` offsets and lengths,
one entry per packet. Everything is validated once, here, so the kernels can
trust bounds and dtypes (they still re-check each segment against the buffer,
because the caller keeps write access to the arrays).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, SupportsIndex, Union, overload

import numpy as np

from ._constants import ENCAP_OVERHEAD, Status


__all__ = ["PacketBatch", "BatchResult", "DecapResult", "EncapResult", "ENCAP_OVERHEAD", "as_batch",
           "copy_segments"]

BytesLike = Union[bytes, bytearray, memoryview, np.ndarray]

_MAX_SEGMENT = 2**31 - 1


def _index_array(name: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy int64 array, got {type(a).__name__}")
    if a.dtype != np.int64:
        raise ValueError(f"{name}: dtype must be int64, got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got {a.ndim} dimensions")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (use np.ascontiguousarray)")
    if not a.flags.aligned:     # the kernels read it through int64_t *, undefined if misaligned
        raise ValueError(f"{name}: not aligned to 8 octets (np.frombuffer at an odd offset?); pass a.copy()")
    return a


class _Segments:
    """Packet ``i`` of a batch-shaped object: ``data[offsets[i] : offsets[i] + lengths[i]]``."""

    __slots__ = ()
    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.size)

    # An ndarray is SupportsIndex as well (a 0-D one converts): the list overload comes first.
    @overload
    def __getitem__(self, i: Union[slice, np.ndarray, Sequence[int]]) -> list[bytes]: ...  # type: ignore[overload-overlap]

    @overload
    def __getitem__(self, i: SupportsIndex) -> bytes: ...

    def __getitem__(self, i: Union[SupportsIndex, slice, np.ndarray, Sequence[int]]) -> Union[bytes, list[bytes]]:
        """Packet ``i`` as bytes (negative ``i`` counts from the end); a list of them for a
        slice, for a sequence or array of indices, or for a boolean mask of one flag per packet
        (numpy's rules: ``res[res.status == Status.OK]`` is the packets that decapped)."""
        # A plain int first, with one check: iterating a result goes through here per packet.
        if type(i) is not int:
            if isinstance(i, slice):
                return [self[k] for k in range(*i.indices(len(self)))]
            if (isinstance(i, np.ndarray) and i.ndim) or (
                    isinstance(i, Sequence) and not isinstance(i, (str, bytes, bytearray))):
                return [self[k] for k in self._picked(np.asarray(i))]
            try:
                i = operator.index(i)  # type: ignore[arg-type]  # str, bytes: the TypeError below
            except TypeError:
                raise TypeError(f"packet index: an integer, a slice, indices or a boolean mask, "
                                f"got {type(i).__name__}") from None
        try:
            o = int(self.offsets[i])
        except IndexError:
            # numpy's own message speaks of "axis 0": say it in packets, as an index array does.
            raise IndexError(f"packet index {i} out of range for {len(self)} packets") from None
        return self.data[o: o + int(self.lengths[i])].tobytes()

    def _picked(self, a: np.ndarray) -> list[int]:
        """The packet numbers an index array or boolean mask ``a`` picks (``IndexError`` past
        the end, as for one index)."""
        n = len(self)
        if a.dtype == bool:
            if a.shape != (n,):
                raise IndexError(f"packet mask: one flag per packet ({n}), got shape {a.shape}")
            return np.flatnonzero(a).tolist()
        if a.size == 0:
            return []
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise TypeError(f"packet indices: a 1-D sequence of integers or a boolean mask, got {a.ndim}-D {a.dtype}")
        bad = (a >= n) | (a < -n)
        if bad.any():
            raise IndexError(f"packet index {int(a[np.argmax(bad)])} out of range for {n} packets")
        picks: list[int] = np.where(a < 0, a + n, a).tolist()
        return picks

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]


class PacketBatch(_Segments):
    """A batch of packets in one buffer: ``data[offsets[i] : offsets[i] + lengths[i]]``.

    ``data`` is a 1-D C-contiguous ``uint8`` array, or a bytes-like object (viewed as
    one, not copied); ``offsets`` and ``lengths`` are 1-D C-contiguous ``int64`` arrays
    of equal size. Segments must lie
    inside ``data`` and must each be shorter than 2**31 octets; anything else
    raises ``ValueError`` naming the field. Segments may overlap, in any order:
    the data path only reads a batch, so one packet may appear many times
    (``offsets`` all 0 makes a batch of copies without copying).
    """

    __slots__ = ("data", "offsets", "lengths")

    def __init__(self, data: Union[np.ndarray, bytes, bytearray, memoryview], offsets: np.ndarray,
                 lengths: np.ndarray) -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                data = np.frombuffer(data, dtype=np.uint8)
            except BufferError:     # a strided memoryview (memoryview(buf)[::2])
                raise ValueError("data: must be C-contiguous (pass bytes(data))") from None
            except ValueError:
                raise ValueError("data: cannot be read (a released memoryview?)") from None
        if not isinstance(data, np.ndarray):
            raise ValueError(f"data: expected a numpy uint8 array, got {type(data).__name__}{_data_hint(data)}")
        if data.dtype != np.uint8:
            raise ValueError(f"data: dtype must be uint8, got {data.dtype}")
        if data.ndim != 1:
            raise ValueError(f"data: must be one-dimensional, got {data.ndim} dimensions")
        if not data.flags.c_contiguous:
            raise ValueError("data: must be C-contiguous (use np.ascontiguousarray)")
        offsets = _index_array("offsets", offsets)
        lengths = _index_array("lengths", lengths)
        if offsets.shape != lengths.shape:
            raise ValueError(f"offsets/lengths: sizes differ ({offsets.size} vs {lengths.size})")
        if offsets.size:
            if int(offsets.min()) < 0:
                raise ValueError(f"offsets: negative offset at index {int(np.argmin(offsets))}")
            if int(lengths.min()) < 0:
                raise ValueError(f"lengths: negative length at index {int(np.argmin(lengths))}")
            if int(lengths.max()) > _MAX_SEGMENT:
                raise ValueError(f"lengths: segment {int(np.argmax(lengths))} is 2**31 octets or longer")
            # Bound the offsets first: offsets + lengths must not wrap around int64
            # (an offset near 2**63 would otherwise yield a negative end that passes).
            if int(offsets.max()) > data.size:
                i = int(np.argmax(offsets))
                raise ValueError(f"offsets: segment {i} starts at {int(offsets[i])}, "
                                 f"past the end of data ({data.size} octets)")
            ends = offsets + lengths
            if int(ends.max()) > data.size:
                i = int(np.argmax(ends > data.size))
                raise ValueError(f"offsets/lengths: segment {i} ends at {int(ends[i])}, "
                                 f"past the end of data ({data.size} octets)")
        self.data = data
        self.offsets = offsets
        self.lengths = lengths

    @classmethod
    def from_packets(cls, packets: Iterable[BytesLike]) -> "PacketBatch":
        """Copy an iterable of bytes-like packets into one new batch.

        A packet is its octets as the buffer protocol gives them (``bytes(p)``), whatever the
        item type: a numpy array of ``>u2`` contributes two octets per item, never a cast.
        """
        _refuse_one_packet(packets)
        views = [_octets(i, p) for i, p in enumerate(packets)]
        lengths = np.fromiter((v.nbytes for v in views), dtype=np.int64, count=len(views))
        offsets = np.zeros(len(views), dtype=np.int64)
        if len(views) > 1:
            np.cumsum(lengths[:-1], out=offsets[1:])
        data = np.frombuffer(b"".join(views), dtype=np.uint8) if views else np.zeros(0, np.uint8)
        return cls(data, offsets, lengths)

    def __repr__(self) -> str:
        n = len(self)
        return f"PacketBatch({_count(n, 'packet')}, {_count(int(self.lengths.sum()) if n else 0, 'octet')})"


def _data_hint(data: Any) -> str:
    """What a list or tuple given as ``PacketBatch``'s ``data`` most likely meant: packets are
    ``from_packets``' job (the constructor wraps one buffer already laid out), octets as ints
    are one ``np.array`` away. Only these two guesses: anything else gets no hint."""
    if not isinstance(data, (list, tuple)):
        return ""
    if data and all(isinstance(v, int) for v in data):
        return " (the octets of the buffer? use np.array(data, dtype=np.uint8))"
    return f" (a {type(data).__name__} of packets? use PacketBatch.from_packets([...]))"


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def _refuse_one_packet(packets: Any) -> None:
    """``ValueError`` for one packet where an iterable of packets belongs: iterated, a bytes
    object or a 1-D numpy array (``res.data`` too) would give one-octet packets. ``TypeError``
    for a str or anything not iterable, naming ``packets`` (``iter(None)``'s own message names
    no argument)."""
    if isinstance(packets, str) or not isinstance(packets, Iterable):
        raise TypeError(f"packets: expected a PacketBatch or an iterable of bytes-like packets, "
                        f"got {type(packets).__name__}")
    if isinstance(packets, (bytes, bytearray, memoryview)):
        raise ValueError("packets: expected a PacketBatch or an iterable of packets, got one bytes object")
    if isinstance(packets, np.ndarray) and packets.ndim <= 1 and not packets.dtype.hasobject:
        raise ValueError(f"packets: expected a PacketBatch or an iterable of packets, got one "
                         f"{packets.ndim}-D numpy array of {packets.dtype} (one packet: pass [packet])")


def _octets(i: int, p: Any) -> memoryview:
    """Packet ``i`` of ``from_packets`` as a flat view of its octets."""
    if isinstance(p, np.ndarray) and p.dtype.hasobject:
        raise TypeError(f"packets[{i}]: a numpy array of Python objects holds no packet octets")
    if isinstance(p, np.generic):
        raise TypeError(f"packets[{i}]: a numpy {type(p).__name__} scalar is not a packet")
    try:
        v = memoryview(p)
    except TypeError:
        # A packet object of a library (scapy's IP(), Ether()) converts with bytes(), which natt does
        # not do for it: an Ether() would give the link header too, and natt wants the IPv4 datagram.
        hint = (" (convert it: bytes() of the IPv4 datagram, e.g. bytes(p[IP]) for a scapy packet)"
                if hasattr(type(p), "__bytes__") else "")
        raise TypeError(f"packets[{i}]: expected a bytes-like packet, got {type(p).__name__}{hint}") from None
    except ValueError:
        raise ValueError(f"packets[{i}]: cannot be read (a released memoryview?)") from None
    return v.cast("B") if v.c_contiguous else memoryview(v.tobytes())


def as_batch(packets: Union[PacketBatch, Iterable[BytesLike]]) -> PacketBatch:
    """A ``PacketBatch`` as is, or a new one copied from an iterable of bytes-like packets."""
    if isinstance(packets, PacketBatch):
        return packets
    return PacketBatch.from_packets(packets)


class _StatusCounts(dict[Status, int]):
    """:meth:`BatchResult.counts`: a plain dict (its repr, its equality) in which a status that
    no packet ended with reads as 0; a key that is no status is still a KeyError."""

    __slots__ = ()

    def __missing__(self, key: Any) -> int:
        try:
            value = None if isinstance(key, bool) else operator.index(key)
        except TypeError:
            value = None
        if value in Status._value2member_map_:
            return 0
        raise KeyError(key)


class BatchResult(_Segments):
    """Per-packet results of one ``decap``/``encap`` call, plus the output batch.

    ``status`` (uint8, :class:`natt.Status`), ``sa`` (int64 handle, 0 if none),
    ``seq`` (uint64 full sequence number, 0 if not parsed), ``next_header``
    (uint8), and the output batch ``data``/``offsets``/``lengths``. Output
    packet ``i`` occupies a slot starting at ``offsets[i]``; ``res[i]`` copies it.
    A slot can be longer than its output (decap's is as long as the input): the
    octets after an output belong to no packet. They are zero in a new buffer, but
    in a reused result they may hold an earlier batch's output, so take packets
    through ``offsets``/``lengths`` (``res[i]``, ``res.batch()``), not ``data`` whole.

    A call that raises leaves its ``out=`` result as it was, or, once the batch had been
    laid out in it, empty (no packets): never half-filled.

    A result can be passed back as ``out=`` to reuse its buffers: it grows
    when a batch needs more room and otherwise allocates nothing. The call
    writes into the result's own arrays and binds its seven attributes to them
    again, so an array you bound to one of them yourself is left as it was.
    """

    # A dict, so that help(res) and help(natt.DecapResult) say what each field holds: the
    # public classes are the subclasses, which would otherwise list the names bare.
    __slots__ = {
        "status": "numpy uint8 array: each packet's natt.Status (natt.Status(res.status[i]) names it).",
        "sa": "numpy int64 array: handle of the SA that handled each packet, 0 if none.",
        "seq": "numpy uint64 array: each packet's full (ESN-inferred) sequence number, 0 if not parsed.",
        "next_header": "numpy uint8 array: each packet's ESP next header (4 IPv4, 41 IPv6, 6 TCP...), "
                       "0 if not reached.",
        "data": "numpy uint8 array: the output buffer; packet i is data[offsets[i]:offsets[i] + lengths[i]] "
                "(res[i]).",
        "offsets": "numpy int64 array: where each output packet starts in data.",
        "lengths": "numpy int64 array: each output packet's length in octets.",
        "_status": None, "_sa": None, "_seq": None, "_nh": None, "_data": None, "_offsets": None,
        "_lengths": None, "_views": None,
    }

    def __init__(self) -> None:
        self._status = np.zeros(0, np.uint8)
        self._sa = np.zeros(0, np.int64)
        self._seq = np.zeros(0, np.uint64)
        self._nh = np.zeros(0, np.uint8)
        self._offsets = np.zeros(0, np.int64)
        self._lengths = np.zeros(0, np.int64)
        self._data = np.zeros(0, np.uint8)
        self.status, self.sa, self.seq, self.next_header = self._status, self._sa, self._seq, self._nh
        self.offsets, self.lengths, self.data = self._offsets, self._lengths, self._data
        self._views = (self.status, self.sa, self.seq, self.next_header, self.offsets, self.lengths, self.data)

    def _prepare(self, batch: PacketBatch, slot_extra: int) -> None:
        """Size the result for ``batch``: slot ``i`` holds ``lengths[i] + slot_extra`` octets."""
        # Not an array only if rebound since the batch was made: _layout_slots says so.
        lengths = batch.lengths
        n = lengths.size if isinstance(lengths, np.ndarray) else 0
        if self._status.size < n:
            cap = max(n, 2 * self._status.size)
            self._status = np.empty(cap, np.uint8)
            self._sa = np.empty(cap, np.int64)
            self._seq = np.empty(cap, np.uint64)
            self._nh = np.empty(cap, np.uint8)
            self._offsets = np.empty(cap, np.int64)
            self._lengths = np.empty(cap, np.int64)
        nbytes = _layout_slots(batch.offsets, lengths, batch.data, self._data, self._offsets, self._lengths, slot_extra)
        if self._data.size < nbytes:
            # Zeroed: slot tails are never written, and fresh memory may hold anything the
            # process freed (np.zeros of this size maps zero pages: no slower than np.empty).
            try:
                self._data = np.zeros(max(nbytes, self._data.size + self._data.size // 2), np.uint8)
            except BaseException:
                self._clear()           # the offsets are laid out already
                raise
        views = self._views
        status, data = views[0], views[6]
        if status.size == n and data.size == nbytes and status.base is self._status and data.base is self._data:
            # Steady state (one call per packet): the views from the last call still fit. Put
            # back all of them, not only those found unchanged: the kernels write where
            # out.offsets says and into the arrays the attributes name, so a view the caller
            # rebound (res.offsets = res.offsets.copy(), one array aliasing another) would keep
            # a stale layout, and a packet's output would overwrite the next one's under OK.
            (self.status, self.sa, self.seq, self.next_header, self.offsets, self.lengths, self.data) = views
            return
        self.status = self._status[:n]
        self.sa = self._sa[:n]
        self.seq = self._seq[:n]
        self.next_header = self._nh[:n]
        self.offsets = self._offsets[:n]
        self.lengths = self._lengths[:n]
        self.data = self._data[:nbytes]
        self._views = (self.status, self.sa, self.seq, self.next_header, self.offsets, self.lengths, self.data)

    def _clear(self) -> None:
        """Show no packets: after a call that raised, the views would describe a batch that was
        laid out but never filled."""
        self.status, self.sa, self.seq, self.next_header = self._status[:0], self._sa[:0], self._seq[:0], self._nh[:0]
        self.offsets, self.lengths, self.data = self._offsets[:0], self._lengths[:0], self._data[:0]

    def counts(self) -> dict[Status, int]:
        """How many packets ended with each status. Statuses with no packet are left out (so
        ``counts() == {Status.OK: 3}`` holds) but read as 0: ``counts()[Status.REPLAY]``."""
        c = np.bincount(self.status, minlength=len(Status))
        return _StatusCounts({Status(v): int(c[v]) for v in range(len(Status)) if c[v]})

    def batch(self) -> PacketBatch:
        """The output packets as a :class:`PacketBatch` (shares this result's buffer)."""
        return PacketBatch(self.data, self.offsets, self.lengths)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.name}={n}" for s, n in self.counts().items())
        return f"{type(self).__name__}({_count(len(self), 'packet')}: {counts or 'none'})"


class DecapResult(BatchResult):
    """Result of :meth:`natt.Offload.decap`; output slot ``i`` is as long as input ``i``.

    ``res[i]`` is packet ``i``'s output as bytes: the decrypted packet when
    ``res.status[i] == Status.OK``, nothing for ``DUMMY``, and for every other
    status the input packet unchanged (ESP, IKE, anything else): keep
    ``res[res.status == Status.OK]`` for the cleartext. ``len(res)``, iteration
    (bytes), slices, index arrays and boolean masks work as on a list;
    ``res.counts()`` tallies the statuses; ``res.batch()`` is the output as a
    :class:`PacketBatch`. Pass a result back as ``out=`` to reuse its buffers.
    The per-packet arrays are listed below (help(natt.DecapResult)).
    """

    __slots__ = ()


class EncapResult(BatchResult):
    """Result of :meth:`natt.Offload.encap`; output slot ``i`` is ``ENCAP_OVERHEAD`` longer than input ``i``.

    ``res[i]`` is packet ``i``'s output as bytes: the ESP-in-UDP packet when
    ``res.status[i] == Status.OK``, nothing for ``SEQ_OVERFLOW``, and for
    ``MALFORMED`` and ``ERROR`` the input unchanged, which here is the
    *cleartext* inner packet (an ``ERROR`` for a segment outside the batch's
    buffer: nothing): send only ``res[res.status == Status.OK]``.
    ``sa`` and ``next_header`` are set only on ``OK``. Otherwise as
    :class:`DecapResult`: ``len``, iteration, slices and masks, ``counts()``,
    ``batch()`` (a :class:`PacketBatch` to pass to ``decap``), ``out=``.
    """

    __slots__ = ()


def _layout_slots_numpy(batch_offsets: Any, batch_lengths: Any, batch_data: Any, data: np.ndarray,
                        offsets: np.ndarray, lengths: np.ndarray, slot_extra: int) -> int:
    """``natt._fastpath.layout_slots`` in numpy, for installs without the extension: check the
    batch's arrays and that they do not overlap the result's (same messages), lay out the
    output slots of the batch in a result whose buffers are ``data``, ``offsets`` and ``lengths``;
    returns the octets they take."""
    for name, arr, dtype in (("offsets", batch_offsets, np.int64), ("lengths", batch_lengths, np.int64),
                             ("data", batch_data, np.uint8)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"batch.{name}: expected a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise ValueError(f"batch.{name}: wrong dtype {arr.dtype}")
        if arr.ndim != 1 or not arr.flags.c_contiguous:
            raise ValueError(f"batch.{name}: must be one-dimensional and C-contiguous")
        if not arr.flags.aligned:
            raise ValueError(f"batch.{name}: not aligned to its dtype (np.frombuffer at an odd offset?); "
                             "pass a copy")
        if name == "lengths" and arr.size != batch_offsets.size:
            raise ValueError(f"batch.lengths: has {arr.size} elements, the batch has {batch_offsets.size} packets")
        if any(np.may_share_memory(arr, mine) for mine in (data, offsets, lengths)):
            # Laying out this result would overwrite the packets before they are read.
            raise ValueError("out: this result's buffers hold the input packets (out=res with "
                             "res.batch(), or a view into them); pass another result, or copy "
                             "the batch first")
    if not (offsets.dtype == np.int64 and offsets.flags.c_contiguous and offsets.flags.aligned
            and offsets.flags.writeable and offsets.size >= batch_offsets.size):
        raise ValueError("offsets: must be a writable, aligned, C-contiguous int64 array as long as the batch")
    if not 0 <= slot_extra <= _MAX_SEGMENT:
        raise ValueError(f"slot_extra: {slot_extra} is outside 0..{_MAX_SEGMENT}")
    n = batch_lengths.size
    if not n:
        return 0
    # Slot sizes come from the caller's lengths, which may have been rewritten since the batch was
    # validated: clamp them to the buffer, so that a bad length costs that packet an ERROR (the
    # kernels re-check every segment), not a huge allocation.
    size: int = batch_data.size
    if n * (size + slot_extra) >= 1 << 63:
        # Only then can the int64 sums below wrap (segments may overlap: n slots of a whole
        # buffer each are a valid batch); they must not wrap into a total too small for them.
        if sum(min(max(ln, 0), size) for ln in batch_lengths.tolist()) + n * slot_extra >= 1 << 63:
            raise ValueError("batch: its output slots add up to 2**63 octets or more")
    offsets[0] = 0
    np.clip(batch_lengths[:n - 1], 0, size, out=offsets[1:n])
    np.cumsum(offsets[1:n], out=offsets[1:n])
    if slot_extra:
        offsets[:n] += np.arange(n, dtype=np.int64) * slot_extra
    return int(offsets[n - 1]) + min(max(int(batch_lengths[-1]), 0), size) + slot_extra


def _copy_segments_py(out: np.ndarray, out_off: np.ndarray, src: np.ndarray, src_off: np.ndarray,
                      length: np.ndarray) -> None:
    """Copy ``length[i]`` octets from ``src[src_off[i]:]`` to ``out[out_off[i]:]`` for every ``i``;
    every segment is checked before any is copied (ValueError naming the first bad one)."""
    if not out_off.size == src_off.size == length.size:
        raise ValueError("gather: out_off, src_off and length differ in size")
    if length.size and not (out_off.flags.aligned and src_off.flags.aligned and length.flags.aligned):
        # As the compiled copy, which reads them through int64_t * (misaligned: undefined in C).
        raise ValueError("gather: out_off, src_off and length must be aligned to 8 octets (np.frombuffer at "
                         "an odd offset?); pass copies")
    segs = list(zip(out_off.tolist(), src_off.tolist(), length.tolist()))
    for i, (o, s, ln) in enumerate(segs):
        if ln < 0 or o < 0 or s < 0 or o > out.size - ln or s > src.size - ln:
            raise ValueError(f"gather: segment {i} ({ln} octets from {s} to {o}) is out of bounds")
    for o, s, ln in segs:
        out[o: o + ln] = src[s: s + ln]


# The compiled versions do the same in one C loop (at a batch of one, numpy's calls cost more
# than the decap; a capture chunk's thousands of segments cost a Python step each).
try:
    from ._fastpath import gather as copy_segments
    from ._fastpath import layout_slots as _layout_slots
except ImportError:  # pragma: no cover - installs without the extension
    copy_segments = _copy_segments_py
    _layout_slots = _layout_slots_numpy
