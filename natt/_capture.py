"""Counting the results of decapsulating a capture: shared by :mod:`natt.cli` (``natt decap``)
and :mod:`natt.dask` (the same run spread over a cluster), which must report identically."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection
from typing import Any, Optional

import numpy as np

from ._batch import PacketBatch
from ._constants import Status, UdpEncapType
from .pcap import IPV4_LINKTYPES, _gather_u32

# Statuses counted as failures in the per-SA table.
FAILURES = (Status.NO_SA, Status.MALFORMED, Status.AUTH_FAILED, Status.REPLAY, Status.PROTOCOL,
            Status.SEQ_OVERFLOW, Status.ERROR)
# Statuses of frames that are not ESP at all: never "undecrypted", never dropped.
NOT_ESP = (Status.NOT_ESP, Status.IKE, Status.KEEPALIVE, Status.FRAGMENT)


def undecrypted(batch: PacketBatch, ipv4: np.ndarray, status: np.ndarray, ports: Collection[int]) -> np.ndarray:
    """Which frames ``--drop-undecrypted`` leaves out: ESP that did not decrypt.

    Those are the IPv4 frames whose status is neither OK nor one of ``NOT_ESP``, but for
    MALFORMED frames: the data path gives that status to an IPv4 or UDP header it cannot parse
    before it knows whether the datagram is ESP at all (docs/semantics.md §1 steps 2 and 4), e.g.
    a TCP segment cut short by the capture's snap length or a DNS reply with a wrong UDP length.
    A MALFORMED frame is left out only if its captured octets show UDP to one of ``ports`` (the
    SAs' parser-entry ports): only then can it be ESP.
    """
    drop: np.ndarray = ipv4 & (status != Status.OK) & ~np.isin(status, NOT_ESP)
    m = np.nonzero(drop & (status == Status.MALFORMED))[0]
    if m.size:
        _, port = _udp_dst_port(batch, m)
        drop[m[~np.isin(port, list(ports))]] = False
    return drop


def _udp_dst_port(batch: PacketBatch, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IPv4 header length, UDP destination port) of the datagrams ``idx`` of ``batch``; the port
    is -1 where the captured octets hold no IPv4 header and UDP ports (never reads past them)."""
    d, off, n = batch.data, batch.offsets[idx], batch.lengths[idx]
    ihl4 = np.zeros(idx.size, np.int64)
    k = np.nonzero(n >= 20)[0]
    ihl4[k] = (d[off[k]] & 15).astype(np.int64) * 4
    udp = (ihl4 >= 20) & (n >= ihl4 + 4)
    k = np.nonzero(udp)[0]
    udp[k] = d[off[k] + 9] == 17
    k = np.nonzero(udp)[0]
    port = np.full(idx.size, -1, np.int64)
    at = off[k] + ihl4[k] + 2          # UDP destination port (RFC 768)
    port[k] = d[at].astype(np.int64) << 8 | d[at + 1]
    return ihl4, port


@dataclasses.dataclass(frozen=True, eq=False)
class InboundSas:
    """What counting a decap run needs to know of its inbound SAs, made once per run (natt.dask
    ships it with every part): the parser entries' ``ports``; ``ike_ports``, those of IKE-type
    entries, where ESP follows an 8-octet non-IKE marker; and the SAs' ``spis``, sorted."""

    ports: frozenset[int]
    ike_ports: frozenset[int]
    spis: np.ndarray

    @classmethod
    def of(cls, offload: Any) -> "InboundSas":
        """Those installed on ``offload`` (a :class:`natt.Offload`)."""
        entries = offload._entries.values()
        return cls(frozenset(e.port for e in entries),
                   frozenset(e.port for e in entries if e.encap_type == UdpEncapType.IKE),
                   np.unique(np.array([c.spi for c in offload._sas.values() if c.inbound], np.int64)))


@dataclasses.dataclass
class CaptureStats:
    """Per-SA and overall counts of one ``decap``/``encap`` run over a capture."""

    labels: list[str]                         # one per SA, in key-file order
    #: Key-file index of the first SA each one was installed as (keys.same_sa): a later one
    #: installed as an earlier one (a file holding an SA's two directions) has no row of its
    #: own, its label joins the earlier one's. Empty: every SA its own.
    same: list[int] = dataclasses.field(default_factory=list)
    frames: int = 0
    ipv4: int = 0
    written: int = 0
    elapsed: float = 0.0
    crypto_seconds: float = 0.0
    # counts[k, s]: packets of SA k (row len(labels) = no SA) with status s; octets: OK output octets.
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    octets: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    # carried_ip[k]: OK packets of SA k whose output is an IPv4 header with protocol 4 or 41 (a
    # transport-mode SA's output when the ESP carried a whole IP packet: tunnel traffic). Counted
    # for every SA, since the counting knows no modes; natt.cli.decap_hints reads transport SAs' only
    # (a tunnel SA's inner packet may itself be IP-in-IP).
    carried_ip: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    # What the hints after a decap run are made of (natt.cli.decap_hints):
    cut_short: int = 0                        # MALFORMED IPv4 frames captured shorter than sent
    other_links: dict[int, int] = dataclasses.field(default_factory=dict)   # link type -> frames natt cannot parse
    spi_elsewhere: int = 0                    # NO_SA (or NOT_ESP UDP) packets with the SPI of a loaded SA
    spi_example: Optional[tuple[int, str, int]] = None   # (SPI, destination, UDP port) of the first
    truncated: Optional[str] = None           # the capture ended inside a record (PcapTruncated's message)

    def __post_init__(self) -> None:
        self.counts = np.zeros((len(self.labels) + 1, len(Status)), np.int64)
        self.octets = np.zeros(len(self.labels) + 1, np.int64)
        self.carried_ip = np.zeros(len(self.labels) + 1, np.int64)

    def add(self, sa_index: np.ndarray, status: np.ndarray, out_lengths: np.ndarray) -> None:
        """Count one chunk: ``sa_index`` is the key-file index of each packet's SA (-1 = none)."""
        row = np.where(sa_index < 0, len(self.labels), sa_index)
        flat = row * len(Status) + status.astype(np.int64)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        ok = status == Status.OK
        self.octets += np.bincount(row[ok], weights=out_lengths[ok], minlength=self.octets.size).astype(np.int64)

    def write_decapped(self, writer: Any, chunk: Any, outputs: PacketBatch, status: np.ndarray,
                       sa_index: np.ndarray, out_lengths: np.ndarray, sas: InboundSas,
                       drop_undecrypted: bool = False) -> None:
        """Write one decapsulated ``chunk`` (a ``natt.pcap.Chunk``) to ``writer`` and count it:
        OK frames become their inner packet (``outputs[i]``), DUMMY frames are left out, and so
        is ESP that did not decrypt (:func:`undecrypted`) with ``drop_undecrypted``; the rest is
        written as read. ``status``, ``sa_index`` (key-file index of each frame's SA) and
        ``out_lengths`` have one entry per frame; ``sas`` describes the run's SAs."""
        ipv4 = chunk.ipv4
        keep = status != Status.DUMMY
        if drop_undecrypted:
            keep &= ~undecrypted(chunk.batch, ipv4, status, sas.ports)
        self.written += writer.write_chunk(chunk, outputs, replace=(status == Status.OK) & ipv4, keep=keep)
        self.frames += len(chunk)
        self.ipv4 += int(ipv4.sum())
        self.add(sa_index[ipv4], status[ipv4], out_lengths[ipv4])
        ok = np.nonzero(ipv4 & (status == Status.OK) & (out_lengths >= 20))[0]
        head = outputs.offsets[ok]
        ip = ok[((outputs.data[head] >> 4) == 4) & np.isin(outputs.data[head + 9], (4, 41))]
        self.carried_ip += np.bincount(sa_index[ip], minlength=self.carried_ip.size)
        self.cut_short += int(np.count_nonzero(ipv4 & (status == Status.MALFORMED) & (chunk.caplen < chunk.origlen)))
        self.count_links(chunk)
        self._count_spi_elsewhere(chunk.batch, np.nonzero(ipv4 & (status == Status.NO_SA))[0], sas)
        self._count_esp_on_other_ports(chunk.batch, np.nonzero(ipv4 & (status == Status.NOT_ESP))[0], sas)

    def count_links(self, chunk: Any) -> None:
        """Count the frames of ``chunk`` in link types natt does not parse (``other_links``)."""
        other = ~np.isin(chunk.linktype, IPV4_LINKTYPES)
        if other.any():
            for lt, n in zip(*np.unique(chunk.linktype[other], return_counts=True)):
                self.other_links[int(lt)] = self.other_links.get(int(lt), 0) + int(n)

    def _count_spi_elsewhere(self, batch: PacketBatch, no_sa: np.ndarray, sas: InboundSas) -> None:
        """Count the NO_SA packets whose SPI a loaded SA has: the SA waits for another destination
        or on another parser-entry port.
        These passed the data path's header checks (docs/semantics.md §1 steps 1-5), so their
        IPv4 and UDP headers and their ESP header are within the captured octets."""
        if not no_sa.size or not sas.spis.size:
            return
        d, off = batch.data, batch.offsets[no_sa]
        ihl4, port = _udp_dst_port(batch, no_sa)
        esp = off + ihl4 + 8 + 8 * np.isin(port, list(sas.ike_ports))
        spi = _gather_u32(d, esp, True)
        known = np.nonzero(np.isin(spi, sas.spis))[0]
        self.spi_elsewhere += int(known.size)
        if known.size and self.spi_example is None:
            k = known[0]
            dst = ipaddress.IPv4Address(bytes(d[off[k] + 16: off[k] + 20]))
            self.spi_example = (int(spi[k]), str(dst), int(port[k]))

    def _count_esp_on_other_ports(self, batch: PacketBatch, not_esp: np.ndarray, sas: InboundSas) -> None:
        """Count, as :meth:`_count_spi_elsewhere` does, the NOT_ESP UDP datagrams to a port without
        a parser entry whose payload starts with the SPI of a loaded SA, in either framing (after
        an 8-octet zero marker: the legacy one): ESP sent to a port no SA listens on. Unlike
        NO_SA packets these passed no header check, so every read is bounded by the captured
        octets first."""
        if not not_esp.size or not sas.spis.size:
            return
        ihl4, port = _udp_dst_port(batch, not_esp)
        n = batch.lengths[not_esp]
        k = np.nonzero((port >= 0) & ~np.isin(port, list(sas.ports)) & (n >= ihl4 + 8 + 4))[0]
        if not k.size:
            return
        d, n = batch.data, n[k]
        at = batch.offsets[not_esp[k]] + ihl4[k] + 8                  # the UDP payload
        spi = _gather_u32(d, at, True)
        marker = np.nonzero((spi == 0) & (n >= ihl4[k] + 8 + 12))[0]
        legacy = marker[_gather_u32(d, at[marker] + 4, True) == 0]
        spi[legacy] = _gather_u32(d, at[legacy] + 8, True)
        known = np.nonzero((spi != 0) & np.isin(spi, sas.spis))[0]
        self.spi_elsewhere += int(known.size)
        if known.size and self.spi_example is None:
            j = not_esp[k[known[0]]]
            off = int(batch.offsets[j])
            dst = ipaddress.IPv4Address(bytes(d[off + 16: off + 20]))
            self.spi_example = (int(spi[known[0]]), str(dst), int(port[k[known[0]]]))

    def merge(self, other: "CaptureStats") -> None:
        """Add the counts of ``other`` (another part of the same run, same SAs) to these."""
        self.counts += other.counts
        self.octets += other.octets
        self.carried_ip += other.carried_ip
        self.frames += other.frames
        self.ipv4 += other.ipv4
        self.written += other.written
        self.crypto_seconds += other.crypto_seconds
        self.cut_short += other.cut_short
        for lt, n in other.other_links.items():
            self.other_links[lt] = self.other_links.get(lt, 0) + n
        self.spi_elsewhere += other.spi_elsewhere
        if self.spi_example is None:
            self.spi_example = other.spi_example
        # Each capture of a run may end inside a record: say so of every one (in merge order).
        self.truncated = "; ".join(t for t in (self.truncated, other.truncated) if t) or None

    def totals(self) -> dict[str, int]:
        t = self.counts.sum(axis=0)
        return {s.name: int(t[s]) for s in Status if t[s]}

    def as_dict(self) -> dict[str, Any]:
        rows = []
        labels = self.labels + ["(no SA)"]
        for k, i in enumerate(self.same):
            if i != k:
                labels[i] += f" = {labels[k]}"
        for k, label in enumerate(labels):
            if k < len(self.same) and self.same[k] != k:
                continue      # counted in the row of the SA it was installed as
            c = self.counts[k]
            if k == len(self.labels) and not sum(int(c[s]) for s in FAILURES):
                continue      # packets without an SA that are not ESP are in the footer line
            rows.append({"sa": label, "packets": int(c[Status.OK]), "bytes": int(self.octets[k]),
                         **{s.name.lower(): int(c[s]) for s in FAILURES + (Status.DUMMY,)}})
        return {"frames": self.frames, "ipv4_frames": self.ipv4, "frames_written": self.written,
                "statuses": self.totals(), "sas": rows, "elapsed_seconds": round(self.elapsed, 6),
                "data_path_seconds": round(self.crypto_seconds, 6),
                **({"truncated": self.truncated} if self.truncated else {})}

    def table(self) -> str:
        """The per-SA summary table printed at the end of a run."""
        cols = ["packets", "bytes"] + [s.name.lower() for s in FAILURES if s is not Status.NO_SA] + ["no_sa", "dummy"]
        totals = self.totals()
        other = {k: v for k, v in totals.items() if Status[k] in NOT_ESP and Status[k] is not Status.FRAGMENT}
        # A fragment may well be ESP: the data path does not reassemble (docs/semantics.md §1 step 3).
        fragments = totals.get(Status.FRAGMENT.name, 0)
        return sa_table(self.as_dict()["sas"], cols, [
            f"{self.frames} frames ({self.ipv4} IPv4), {self.written} written"
            + (", not ESP: " + ", ".join(f"{k.lower()} {v}" for k, v in other.items()) if other else "")
            + (f", IP fragments (not reassembled, so not decrypted): {fragments}" if fragments else "")])


def sa_table(sas: list[dict[str, Any]], cols: list[str], footer: list[str]) -> str:
    """A per-SA summary: an "SA" column (``sas[i]["sa"]``, left-aligned) and ``cols`` of each
    row dict (right-aligned), under a header and a rule, then the ``footer`` lines."""
    head = ["SA"] + cols
    rows = [[r["sa"]] + [str(r[c]) for c in cols] for r in sas]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows] + footer)


def sa_index(handles: list[int], sa: np.ndarray) -> np.ndarray:
    """Key-file index of each result's SA handle (-1 for none); a handle of 0 in ``handles``
    stands for an SA not installed."""
    h = np.asarray(handles, np.int64)
    lut = np.full(int(h.max()) + 1 if h.size else 1, -1, np.int64)
    k = np.nonzero(h > 0)[0][::-1]
    lut[h[k]] = k         # in reverse: where SAs share a handle (keys.same_sa), the first one's index
    s = np.asarray(sa, np.int64)
    return np.where((s > 0) & (s < lut.size), lut[np.clip(s, 0, lut.size - 1)], -1)
