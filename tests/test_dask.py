"""natt.dask: a Dask job decaps a capture set exactly as one process would.

The reference is the single-machine path: one Offload with every SA installed inbound, the
captures decapsulated in the order given, each in file order (``natt.cli.decap_capture``, the
function behind ``natt decap``). Statuses of every frame, output captures (octet for octet)
and the per-SA summary must be equal, also when a worker is killed half-way through and when a
lane's anti-replay state has to be rebuilt on another worker.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import io
import os
import signal
import shutil
import socket
import stat
import struct
import threading
import time
import uuid
import warnings

# natt[dask] must be installed where the suite runs: a missing extra fails here rather than
# silently shrinking the suite (as a missing backend does in conftest.py).
import distributed
import numpy as np
import pytest

import natt
from _packets import corrupt_pcap_record
from natt import Status, UdpEncapType, pcap, traffic
from natt import dask as ndask
from natt import keys as keyfile
from natt.cli import CaptureStats, decap_capture

pytestmark = pytest.mark.slow     # ~40 s: a two-process LocalCluster and several jobs

CHUNK = 16384        # the 'state' set: ranges of ~60 packets, so replays and the ESN wrap straddle them
BIG_CHUNK = 65536    # the 'mixed' set: status coverage, fewer tasks


# ----------------------------------------------------------------------------------------------
# Inputs


def _key_specs(mt: traffic.MixedTraffic) -> list[keyfile.SaSpec]:
    """mixed_traffic's SA set as a key file holds it (a masked transport destination becomes a
    host: both sides of every comparison use the same set, so that changes nothing here)."""
    return [keyfile.SaSpec(spi=s.spi, suite=s.suite, key=s.key, direction="in", mode=s.mode, src=s.src,
                           dst=s.dst, encap=s.framing, port=s.port, esn=s.esn, replay_window=s.replay_window,
                           replay_seq=s.replay_seq, nat_oa_src=s.nat_oa_src, nat_oa_dst=s.nat_oa_dst)
            for s in mt.sas]


def _replay_esn_traffic(seed: int) -> tuple[list[keyfile.SaSpec], list[bytes]]:
    """Three SAs whose traffic is hard on per-SA state, interleaved.

    * ESN (GCM) starting 40 below 2**32: sequence numbers cross the 32-bit wrap; reordering inside
      the window; a copy of every 7th packet resent ~100 packets later (a later range: REPLAY only
      if the state crossed the boundary); numbers left of the window; an ICV failure before the
      genuine packet; a padding error after a valid ICV (moves the window; its resend is a REPLAY);
      a truncated ESP (MALFORMED before the ICV: does not move it); at the end, 2**32 packets
      lost and 80 more sent, which fail until the 64th in a row resynchronises the SA (RFC 4303
      Appendix A3: the count of failures is state that crosses ranges too).
    * non-ESN CBC+HMAC with window 32 and the same kinds of replays.
    * legacy IKE framing on port 500, anti-replay off (replays are accepted).
    """
    import random
    rng = random.Random(seed)
    esn = keyfile.SaSpec(spi=0x2001, suite="aes128gcm16", key=rng.randbytes(20), src="198.51.100.2",
                         dst="203.0.113.5", esn=True, replay_window=64, replay_seq=2**32 - 40)
    cbc = keyfile.SaSpec(spi=0x2002, suite="aes128-sha256", key=rng.randbytes(48), src="198.51.100.3",
                         dst="203.0.113.5", replay_window=32)
    ike = keyfile.SaSpec(spi=0x2003, suite="chacha20poly1305", key=rng.randbytes(36), src="198.51.100.4",
                         dst="203.0.113.5", encap=UdpEncapType.IKE, port=500, replay_window=0)
    streams = []
    for spec, first in ((esn, 2**32 - 39), (cbc, 1), (ike, 1)):
        sealer = traffic.EspSealer(spec.suite, spec.key, spec.spi, esn=spec.esn)
        seqs = list(range(first, first + 260))
        for i in range(0, len(seqs) - 1, 5):          # reorder inside the window
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        pkts: list[bytes] = []
        history: list[bytes] = []

        def wrap(esp: bytes, spec=spec) -> bytes:
            return traffic.udp_encapsulate(esp, spec.src, spec.dst, sport=spec.port, dport=spec.port,
                                           framing=spec.encap)

        for n, seq in enumerate(seqs):
            inner = traffic.icmp_echo("10.1.0.2", "10.2.0.7", seq=n & 0xFFFF, payload=rng.randrange(8, 200))
            p = traffic.esp_in_udp(sealer, seq, inner, tunnel=True, src=spec.src, dst=spec.dst,
                                   sport=spec.port, dport=spec.port, framing=spec.encap, rng=rng)
            if n % 31 == 3:                           # forged ICV first, genuine packet after it
                bad = bytearray(p)
                bad[-1] ^= 0x01
                pkts.append(bytes(bad))
            if n % 37 == 5:                           # valid ICV, bad padding: MALFORMED, window moves
                bad_pad = wrap(sealer.seal(seq, inner, 4, pad_len=255, rng=rng))
                pkts.append(bad_pad)
                pkts.append(bad_pad)                  # ... so its resend is a REPLAY
                continue
            if n % 41 == 7:                           # truncated ESP: MALFORMED before the ICV
                pkts.append(wrap(sealer.seal(seq, inner, 4, rng=rng)[:12]))
            pkts.append(p)
            history.append(p)
            if n % 7 == 0 and len(history) > 100:     # resent from ~100 packets back
                pkts.append(history[-100])
            if n % 13 == 0 and len(history) > 3:      # resent from just behind
                pkts.append(history[-3])
            if n % 5 == 0 and len(history) > 20:      # resent from inside the window, a range back
                pkts.append(history[-20])
        if spec.esn:
            for seq in range(first + 260 + (1 << 32), first + 340 + (1 << 32)):
                inner = traffic.icmp_echo("10.1.0.2", "10.2.0.7", seq=seq & 0xFFFF, payload=40)
                pkts.append(traffic.esp_in_udp(sealer, seq, inner, tunnel=True, src=spec.src, dst=spec.dst,
                                               sport=spec.port, dport=spec.port, framing=spec.encap, rng=rng))
        streams.append(pkts)
    mixed: list[bytes] = []
    its = [iter(s) for s in streams]
    while its:
        for it in list(its):
            try:
                mixed.append(next(it))
            except StopIteration:
                its.remove(it)
    return [esn, cbc, ike], mixed


def _write(paths_and_packets: list[tuple[str, list[bytes], str]]) -> list[str]:
    out = []
    for path, pkts, fmt in paths_and_packets:
        pcap.write_datagrams(path, pkts, fmt=fmt, ts_ns=range(1_000_000, 1_000_000 + len(pkts)))
        out.append(path)
    return out


@pytest.fixture(scope="module")
def capture_sets(tmp_path_factory) -> dict[str, tuple[list[keyfile.SaSpec], list[str]]]:
    d = tmp_path_factory.mktemp("captures")
    mt = traffic.mixed_traffic(11, 2000, max_payload=600)
    n = len(mt.packets)
    mixed = _write([(str(d / "mixed-a.pcap"), mt.packets[: n // 2], "pcap"),
                    (str(d / "mixed-b.pcapng"), mt.packets[n // 2:], "pcapng")])
    specs, pkts = _replay_esn_traffic(5)
    k = len(pkts) // 3
    state = _write([(str(d / "state-a.pcap"), pkts[:k], "pcap"),
                    (str(d / "state-b.pcapng"), pkts[k: 2 * k], "pcapng"),
                    (str(d / "state-c.pcap"), pkts[2 * k:], "pcap")])
    sections = str(d / "sections.pcapng")
    _pcapng_sections(sections, pkts)
    return {"mixed": (_key_specs(mt), mixed), "state": (specs, state), "sections": (specs, [sections])}


def _idb(linktype: int) -> bytes:
    """A little-endian pcapng Interface Description Block without options (snaplen 65535)."""
    return struct.pack("<IIHHII", 1, 20, linktype, 0, 65535, 20)


def _pcapng_sections(path: str, pkts: list[bytes]) -> None:
    """A pcapng file with two sections; the first declares a second interface (raw IPv4) in the
    middle of its packets, the second starts over with its own Ethernet interface."""
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    a, b, c = pkts[: len(pkts) // 3], pkts[len(pkts) // 3: 2 * len(pkts) // 3], pkts[2 * len(pkts) // 3:]
    first = io.BytesIO()
    w = pcap.PcapWriter(first, fmt="pcapng", interfaces=[pcap.Interface(pcap.LINKTYPE_ETHERNET)])
    w.write_frames([eth + p for p in a], ts_ns=range(len(a)))
    # An Interface Description Block (raw IPv4, no options) after packets of interface 0.
    idb = _idb(pcap.LINKTYPE_IPV4)
    both = io.BytesIO()
    w2 = pcap.PcapWriter(both, fmt="pcapng", interfaces=[pcap.Interface(pcap.LINKTYPE_ETHERNET),
                                                          pcap.Interface(pcap.LINKTYPE_IPV4)])
    head = both.tell()
    w2.write_frames(b, ts_ns=range(len(b)), iface=1)
    second = io.BytesIO()
    pcap.PcapWriter(second, fmt="pcapng").write_frames([eth + p for p in c], ts_ns=range(len(c)))
    with open(path, "wb") as f:
        f.write(first.getvalue() + idb + both.getvalue()[head:] + second.getvalue())


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as c:
        yield c


# ----------------------------------------------------------------------------------------------
# The single-process reference


def _single_process(paths: list[str], specs: list[keyfile.SaSpec], out_dir: str, backend: str = "fast"
                    ) -> tuple[CaptureStats, list[np.ndarray]]:
    """``natt decap`` of each capture in turn with one Offload; plus every frame's status."""
    os.makedirs(out_dir, exist_ok=True)
    labels = [s.label() for s in specs]
    total = CaptureStats(labels)
    with natt.Offload(backend=backend, max_sas=len(specs)) as nic:
        handles = keyfile.install(nic, specs, direction="in")
        for p in paths:
            with pcap.PcapReader(p, chunk_size=CHUNK) as r, \
                    pcap.PcapWriter.like(r, os.path.join(out_dir, os.path.basename(p))) as w:
                st = decap_capture(nic, handles, labels, r, w)
            for f in ("counts", "octets"):
                setattr(total, f, getattr(total, f) + getattr(st, f))
            for f in ("frames", "ipv4", "written"):
                setattr(total, f, getattr(total, f) + getattr(st, f))
    # Statuses from a second, identical pass (decap_capture does not hand them out).
    statuses = []
    with natt.Offload(backend=backend, max_sas=len(specs)) as nic:
        keyfile.install(nic, specs, direction="in")
        for p in paths:
            per = []
            with pcap.PcapReader(p, chunk_size=CHUNK) as r:
                for ch in r:
                    per.append(np.where(ch.ipv4, nic.decap(ch.batch).status, Status.NOT_ESP).astype(np.uint8))
            statuses.append(np.concatenate(per) if per else np.zeros(0, np.uint8))
    return total, statuses


def _interfaces(path: str) -> tuple:
    with pcap.PcapReader(path) as r:
        for _ in r:
            pass
        return tuple(r.interfaces)


def _assert_same_capture(want: str, got: str) -> None:
    """Classic pcap: the same octets. pcapng: the same records and interfaces -- natt's writer
    declares an interface at the start of the chunk whose records first name it, so where an
    Interface Description Block lands depends on the chunking even for ``natt decap`` alone."""
    a, b = open(want, "rb").read(), open(got, "rb").read()
    if a == b:
        return
    assert a[:4] == b"\n\r\r\n", f"{got}: output differs from {want}"
    assert pcap.read_frames(want) == pcap.read_frames(got), f"{got}: records differ from {want}"
    assert _interfaces(want) == _interfaces(got)


def _assert_same(paths, ref_dir, out_dir, ref: CaptureStats, ref_status, got: CaptureStats, got_status) -> None:
    for p, a, b in zip(paths, ref_status, got_status):
        assert a.shape == b.shape, p
        diff = np.nonzero(a != b)[0]
        assert not diff.size, f"{p}: frame {diff[0]}: {Status(a[diff[0]]).name} != {Status(b[diff[0]]).name}"
    for p in paths:
        name = os.path.basename(p)
        _assert_same_capture(os.path.join(ref_dir, name), os.path.join(out_dir, name))
    assert got.labels == ref.labels
    assert (got.counts == ref.counts).all()
    assert (got.octets == ref.octets).all()
    assert (got.frames, got.ipv4, got.written) == (ref.frames, ref.ipv4, ref.written)
    assert got.as_dict()["sas"] == ref.as_dict()["sas"]


# ----------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("which", ["mixed", "state", "sections"])
def test_same_as_single_process(client, capture_sets, tmp_path, which):
    specs, paths = capture_sets[which]
    ref, ref_status = _single_process(paths, specs, str(tmp_path / "ref"))
    got, got_status = ndask.decap_captures(paths, specs, tmp_path / "out", client,
                                           chunk_size=BIG_CHUNK if which == "mixed" else CHUNK,
                                           progress=False, return_statuses=True)
    _assert_same(paths, str(tmp_path / "ref"), str(tmp_path / "out"), ref, ref_status, got, got_status)
    # The scenario really exercises what it is meant to.
    totals = got.totals()
    assert totals.get("OK", 0) > 0 and totals.get("REPLAY", 0) > 0
    if which != "mixed":
        assert totals.get("AUTH_FAILED", 0) > 0 and totals.get("MALFORMED", 0) > 0
    if which == "sections":
        # Ranges begin inside both sections, and after the mid-stream interface block.
        plan = ndask._scan(0, paths[0], "unused", CHUNK)
        assert len(plan.prefixes) >= 3 and len(plan.ranges) > 6
        assert {f[1] for f in pcap.read_frames(paths[0])} == {0, 1, 2}
    # No leftovers next to the outputs.
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)


def test_pcapng_interfaces_no_packet_names(client, capture_sets, tmp_path):
    """natt decap's writer declares the interfaces that no packet names when it closes (all of a
    capture's interfaces when it has no packets); a Dask job's output has them too, after the
    records of its last part (they were missing from both)."""
    specs, paths = capture_sets["state"]
    frames = [f for (_, _, f, _) in pcap.read_frames(paths[1])]        # Ethernet frames
    half = len(frames) // 2
    src = tmp_path / "in"
    os.makedirs(src)
    eth, raw = pcap.Interface(pcap.LINKTYPE_ETHERNET), pcap.Interface(pcap.LINKTYPE_IPV4)
    # Interface 1 (no packets) before 2, whose IDB and packets fill the second half of the file,
    # and 3 (no packets either) after the last packet; IDBs without options, as in _pcapng_sections.
    first = io.BytesIO()
    pcap.PcapWriter(first, fmt="pcapng", interfaces=[eth, raw]).write_frames(frames[:half], ts_ns=range(half))
    second = io.BytesIO()
    w = pcap.PcapWriter(second, fmt="pcapng", interfaces=[eth, raw, eth])
    head = second.tell()
    w.write_frames(frames[half:], ts_ns=range(half, len(frames)), iface=2)
    unused = str(src / "unused.pcapng")
    with open(unused, "wb") as f:
        f.write(first.getvalue() + _idb(pcap.LINKTYPE_ETHERNET) + second.getvalue()[head:]
                + _idb(pcap.LINKTYPE_LINUX_SLL))
    empty = str(src / "empty.pcapng")
    pcap.PcapWriter(empty, fmt="pcapng", interfaces=[eth, raw]).close()
    paths = [unused, empty]
    assert len(ndask._scan(0, unused, "unused", CHUNK).ranges) > 3
    ref, ref_status = _single_process(paths, specs, str(tmp_path / "ref"))
    got, got_status = ndask.decap_captures(paths, specs, tmp_path / "out", client, chunk_size=CHUNK,
                                           progress=False, return_statuses=True)
    _assert_same(paths, str(tmp_path / "ref"), str(tmp_path / "out"), ref, ref_status, got, got_status)
    # As natt decap writes them: raw IPv4 (228) as raw IP (101), which holds a tunnel's inner IPv6.
    for name, want in (("unused.pcapng", [1, 101, 1, 113]), ("empty.pcapng", [1, 101])):
        assert [i.linktype for i in _interfaces(str(tmp_path / "out" / name))] == want, name


def test_state_crosses_ranges_and_files(capture_sets, tmp_path):
    """The 'state' set is only meaningful if replays straddle ranges and files: some REPLAY
    packets of each later capture are copies of packets of an earlier one."""
    specs, paths = capture_sets["state"]
    _, joint = _single_process(paths, specs, str(tmp_path / "joint"))
    seen: set[bytes] = set()
    for i, p in enumerate(paths):
        frames = [d for (_, _, _, d) in pcap.read_frames(p)]
        if i:
            cross = [k for k, d in enumerate(frames) if d in seen and joint[i][k] == Status.REPLAY]
            assert len(cross) >= 2, p
        seen.update(frames)
    assert len(ndask._scan(0, paths[0], "unused", CHUNK).ranges) > 3


def test_drop_undecrypted_and_lanes(client, capture_sets, tmp_path):
    """--drop-undecrypted, one lane (everything serial) and many lanes give the same outputs."""
    specs, paths = capture_sets["mixed"]
    ref_dir = str(tmp_path / "ref")
    os.makedirs(ref_dir)
    with natt.Offload(max_sas=len(specs)) as nic:
        handles = keyfile.install(nic, specs, direction="in")
        for p in paths:
            with pcap.PcapReader(p, chunk_size=CHUNK) as r, \
                    pcap.PcapWriter.like(r, os.path.join(ref_dir, os.path.basename(p))) as w:
                decap_capture(nic, handles, [s.label() for s in specs], r, w, drop_undecrypted=True)
    for lanes in (1, 7):
        out = tmp_path / f"out{lanes}"
        ndask.decap_captures(paths, specs, out, client, chunk_size=BIG_CHUNK, drop_undecrypted=True,
                             lanes=lanes, progress=False)
        for p in paths:
            _assert_same_capture(os.path.join(ref_dir, os.path.basename(p)), str(out / os.path.basename(p)))


@pytest.mark.parametrize("lanes", [2, 12, 40])
def test_each_lane_holds_its_own_sas_and_decaps_as_one_offload(capture_sets, lanes):
    """A lane's Offload holds only the SAs of its keys, yet every frame routed to it gets the
    status one Offload with every SA gives. The 'mixed' set has 18, 16 and 8 keys on its three
    ports: with 12 and 40 lanes some lanes hold no SA on a port, so its keepalives, IKE frames
    and unknown SPIs must go to a lane that does (it has the port's parser entry)."""
    specs, paths = capture_sets["mixed"]
    frames = [d for p in paths for (_, _, _, d) in pcap.read_frames(p)]
    ipv4 = np.array([d is not None for d in frames])
    packets = [d or b"" for d in frames]
    batch = natt.PacketBatch.from_packets(packets)
    with natt.Offload(max_sas=len(specs)) as nic:
        keyfile.install(nic, specs, direction="in")
        want = nic.decap(batch).status.copy()
    sa_set = ndask._SaSet(specs)
    routing = sa_set.routing(lanes)
    lane = ndask._route(batch, ipv4, routing, 0)
    assert (want[lane < 0] == Status.NOT_ESP).all()
    got = np.full(len(packets), 255, np.uint8)
    for k in range(lanes):
        sel = np.nonzero(lane == k)[0]
        pk = ndask._LanePackets(sel, batch.data, batch.offsets[sel].copy(), batch.lengths[sel].copy())
        job = uuid.uuid4().hex
        step = ndask._step(sa_set, None, pk, job, k, lanes, None, None, False)
        with ndask._LANE_CACHE_LOCK:
            nic = ndask._LANE_CACHE[(job, k)].nic if sel.size else None
        if nic is not None:
            assert len(nic.sa_handles()) == len(routing.lane_sas[k]) < len(specs)
        ndask._forget_job(job)
        got[sel] = step[1].status
    assert (got[lane >= 0] == want[lane >= 0]).all()
    # The scenario has the frames the port rule is for, on ports some lanes hold no SA on.
    partial = {p for p, owners in routing.port_lanes.items() if owners.size < lanes}
    port_of = [int.from_bytes(p[22:24], "big") if len(p) >= 24 else -1 for p in packets]
    on_partial = np.array([q in partial for q in port_of])
    kinds = set(want[on_partial & (lane >= 0)].tolist())
    if lanes > 18:
        assert {Status.KEEPALIVE, Status.IKE, Status.NO_SA} <= kinds, kinds
    elif lanes > 8:
        assert partial and Status.OK in kinds


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_lane_state_rebuilt_exactly(capture_sets, backend):
    """A lane whose Offload is lost (another worker, or a restarted one) rebuilds its anti-replay
    state from the carried (T, bitmap, fail_run) alone: forcing a rebuild before every step
    changes nothing."""
    specs, paths = capture_sets["state"]
    packets = [d for p in paths for (_, _, _, d) in pcap.read_frames(p)]
    batch = natt.PacketBatch.from_packets(packets)
    with natt.Offload(backend=backend) as nic:
        handles = keyfile.install(nic, specs, direction="in")
        want = nic.decap(batch).status.copy()
        assert nic.sa_stats(handles[0])["esn_resyncs"] == 1
    sa_set = ndask._SaSet(specs)
    step = None
    got = []
    with_holes = mid_run = 0
    for lo in range(0, len(packets), 37):
        hi = min(lo + 37, len(packets))
        pk = ndask._LanePackets(np.arange(lo, hi), batch.data, batch.offsets[lo:hi].copy(), batch.lengths[lo:hi].copy())
        if step is not None:
            # A window that is not full below T cannot be rebuilt from replay_seq alone.
            with_holes += any(b != (1 << specs[i].replay_window) - 1 for i, (t, b, f) in step[0].windows.items())
            mid_run += any(f for t, b, f in step[0].windows.values())
            # The rebuild installs the exported state and decapsulates nothing: no packet is
            # ever sealed under the SA's key to get there.
            nic, handles = ndask._restore(specs, range(len(specs)), step[0], backend)
            try:
                for i, (t, b, f) in step[0].windows.items():
                    assert nic.replay_state(handles[i]) == (t, b)
                    stats = nic.sa_stats(handles[i])
                    assert stats["packets"] == stats["dummy"] == 0 and stats["replay_fail_run"] == f
            finally:
                nic.close()
        job = uuid.uuid4().hex          # a new job id each time: never the cached Offload
        step = ndask._step(sa_set, step, pk, job, 0, 1, backend, None, False)
        ndask._forget_job(job)
        got.append(step[1].status)
    assert (np.concatenate(got) == want).all()
    assert with_holes > 0, "the scenario never carried a window with holes between steps"
    assert mid_run > 0, "the scenario never carried a run of ESN failures between steps"


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_lanes_start_windows_as_keys_install_does(backend):
    """A lane's first step starts each SA's window where keys.install would: an outbound ESN SA
    at its replay_oseq, an esp_sa ESN line with nothing seen in its epoch (replay_bitmap 0)."""
    inner = traffic.inner_traffic(9, 6)
    out = keyfile.SaSpec(spi=0x3001, suite="aes128gcm16", key=bytes(range(20)), direction="out",
                         src="198.51.100.2", dst="203.0.113.5", esn=True, replay_oseq=(7 << 32) + 3)
    line = keyfile.to_esp_sa([dataclasses.replace(out, spi=0x3002, replay_oseq=(5 << 32) - 1)])
    (table,) = keyfile.loads(line)
    assert table.replay_bitmap == 0
    packets = []
    with natt.Offload(backend=backend) as tx:
        for h in keyfile.install(tx, [out, table], direction="out"):
            packets += list(tx.encap(inner, h))      # numbers 7 * 2**32 + 4 ... and 5 * 2**32 + 0 ...
    specs = [out, table]
    batch = natt.PacketBatch.from_packets(packets)
    with natt.Offload(backend=backend) as nic:
        keyfile.install(nic, specs, direction="in")
        assert nic.decap(batch).status.tolist() == [Status.OK] * 12
    job = uuid.uuid4().hex
    pk = ndask._LanePackets(np.arange(12), batch.data, batch.offsets.copy(), batch.lengths.copy())
    state, res = ndask._step(ndask._SaSet(specs), None, pk, job, 0, 1, backend, None, True)
    ndask._forget_job(job)
    assert res.status.tolist() == [Status.OK] * 12
    # Numbers 0 .. 5 of the epoch seen: bits 63 - 0 .. 63 - 5 of the window topped at 63.
    assert state.windows[1] == ((5 << 32) | 63, sum(1 << (63 - low) for low in range(6)), 0)


def test_worker_killed_mid_job(client, capture_sets, tmp_path):
    """SIGKILL one worker while the job runs: Dask re-runs what it lost, lanes rebuild their
    state elsewhere, and every result is the same."""
    _kill_a_worker_mid_job(client, capture_sets, tmp_path)
    client.wait_for_workers(2, timeout=30)


def test_the_only_worker_killed_mid_job(capture_sets, tmp_path):
    """The SA set is not lost with the worker that held it: it was scattered, and the job failed
    ("lost dependencies", a FutureCancelledError traceback from natt decap --workers 1) once the
    last worker holding it died, although everything else could be recomputed from the captures.
    One worker (restarted by its nanny) holds it alone."""
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as c:
        _kill_a_worker_mid_job(c, capture_sets, tmp_path)


def _kill_a_worker_mid_job(client, capture_sets, tmp_path) -> None:
    specs, paths = capture_sets["state"]
    ref, ref_status = _single_process(paths, specs, str(tmp_path / "ref"))
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = ndask.decap_captures(paths, specs, tmp_path / "out", client, chunk_size=CHUNK,
                                                   progress=False, return_statuses=True, backend="reference")
        except BaseException as e:   # re-raised in the test thread
            result["error"] = e

    def parts_done(dask_scheduler) -> tuple[int, int]:
        parts = [ts for ts in dask_scheduler.tasks.values()
                 if isinstance(ts.key, tuple) and str(ts.key[0]).startswith("natt-part-")]
        return sum(ts.state == "memory" for ts in parts), len(parts)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    killed_at = None
    while time.monotonic() < deadline and t.is_alive():
        done, total = client.run_on_scheduler(parts_done)
        if total and 2 <= done < total:
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed_at = (done, total)
            break
        time.sleep(0.02)
    t.join(120)
    assert killed_at is not None, "the job finished before a worker could be killed"
    if "error" in result:
        raise result["error"]
    got, got_status = result["value"]
    _assert_same(paths, str(tmp_path / "ref"), str(tmp_path / "out"), ref, ref_status, got, got_status)


def test_task_keys_and_logs_hold_no_key_material(client, capture_sets, tmp_path):
    specs, paths = capture_sets["state"]

    def record(dask_scheduler) -> None:
        class Keys(distributed.diagnostics.plugin.SchedulerPlugin):
            name = "natt-test-keys"

            def transition(self, key, start, finish, *args, **kwargs):
                seen_keys.append(repr(key))
        seen_keys: list = []
        dask_scheduler.natt_test_keys = seen_keys
        dask_scheduler.add_plugin(Keys(), name="natt-test-keys")

    client.run_on_scheduler(record)
    ndask.decap_captures(paths, specs, tmp_path / "out", client, chunk_size=CHUNK, progress=False)
    seen = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.natt_test_keys))
    client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.remove_plugin(name="natt-test-keys"))
    assert any("natt-step-" in k for k in seen)
    secrets = [s.key.hex() for s in specs] + [repr(s.key)[2:-1] for s in specs]
    logs = str(client.get_worker_logs()) + str(client.get_scheduler_logs())
    for secret in secrets:
        assert not any(secret in k for k in seen)
        assert secret not in logs
    sa_set_repr = repr(ndask._SaSet(specs))
    assert not any(secret in sa_set_repr for secret in secrets)


def test_cli(client, capture_sets, tmp_path, capsys):
    """``natt decap IN... -k KEYS -o OUTDIR --dask ADDRESS`` prints natt decap's table."""
    from natt.cli import main
    specs, paths = capture_sets["mixed"]
    key_path = tmp_path / "keys.json"
    keyfile.save(key_path, specs)
    ref, _ = _single_process(paths, specs, str(tmp_path / "ref"))
    rc = main(["decap", *paths, "-k", str(key_path), "-o", str(tmp_path / "out"), "--dask",
               client.scheduler.address, "--chunk-size", str(BIG_CHUNK), "--no-progress",
               "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert ref.table() in capsys.readouterr().out
    for p in paths:
        name = os.path.basename(p)
        _assert_same_capture(str(tmp_path / "ref" / name), str(tmp_path / "out" / name))
    assert (tmp_path / "r.json").exists()
    # Several captures without a cluster: a usage error, not a silent first-file-only run.
    assert main(["decap", *paths, "-k", str(key_path), "-o", str(tmp_path / "x")]) == 2
    assert "--dask" in capsys.readouterr().err


def test_cli_a_signal_before_the_report_waits_for_it(client, capture_sets, tmp_path, capsys, monkeypatch):
    """The outputs are in place when decap_captures returns; Ctrl-C before the report was
    written (the cluster's shutdown came first) left an earlier run's report beside them."""
    from natt import cli
    specs, paths = capture_sets["mixed"]
    key_path, report = tmp_path / "keys.json", tmp_path / "r.json"
    keyfile.save(key_path, specs)
    report.write_text("an earlier run's report")
    write_report = cli._write_report

    def signalled_first(args, stats):
        os.kill(os.getpid(), signal.SIGINT)
        write_report(args, stats)
    monkeypatch.setattr(cli, "_write_report", signalled_first)
    rc = cli.main(["decap", *paths, "-k", str(key_path), "-o", str(tmp_path / "out"), "--dask",
                   client.scheduler.address, "--chunk-size", str(BIG_CHUNK), "--no-progress",
                   "--report", str(report)])
    assert rc == 130 and capsys.readouterr().err == "natt decap: interrupted\n"
    doc = json.loads(report.read_text())
    assert doc["input"] == list(paths) and doc["frames"] == sum(len(pcap.read_frames(p)) for p in paths)


def test_bad_inputs(client, capture_sets, tmp_path):
    specs, paths = capture_sets["mixed"]
    with pytest.raises(ValueError, match="share the name"):
        ndask.decap_captures([paths[0], paths[0]], specs, tmp_path / "o", client, progress=False)
    # A corrupt record: the error names the file offset the single-process reader names.
    data = open(paths[0], "rb").read()
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(data)
    at = corrupt_pcap_record(bad, -3)
    with pytest.raises(pcap.PcapError) as single:
        with pcap.PcapReader(bad, chunk_size=CHUNK) as r:
            for _ in r:
                pass
    with pytest.raises(pcap.PcapError) as dask_err:
        ndask.decap_captures([bad], specs, tmp_path / "o2", client, chunk_size=BIG_CHUNK, progress=False)
    assert dask_err.value.offset == single.value.offset == at
    assert not isinstance(dask_err.value, pcap.PcapTruncated)
    # A capture cut short inside its last record: the records before it, and the message the
    # single-process reader gives (offset included).
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 5])
    with pytest.raises(pcap.PcapTruncated) as single:
        with pcap.PcapReader(cut, chunk_size=CHUNK) as r:
            for _ in r:
                pass
    stats = ndask.decap_captures([cut], specs, tmp_path / "o3", client, chunk_size=BIG_CHUNK, progress=False)
    assert stats.truncated == str(single.value)
    assert stats.frames == len(pcap.read_frames(paths[0])) - 1


def test_an_out_dir_reached_through_a_symlink_does_not_overwrite_the_inputs(client, capture_sets, tmp_path):
    specs, paths = capture_sets["mixed"]
    data = tmp_path / "data"
    data.mkdir()
    capture = data / "cap.pcap"
    capture.write_bytes(open(paths[0], "rb").read())
    (tmp_path / "clear").symlink_to(data)
    before = capture.read_bytes()
    with pytest.raises(ValueError, match=r"out_dir: writing .*clear/cap\.pcap would overwrite its input"):
        ndask.decap_captures([capture], specs, tmp_path / "clear", client, progress=False)
    assert capture.read_bytes() == before
    # A hard link to the input under the output's name is the same file too.
    os.link(capture, tmp_path / "cap.pcap")
    with pytest.raises(ValueError, match="would overwrite its input"):
        ndask.decap_captures([capture], specs, tmp_path, client, progress=False)


def test_an_output_name_linking_to_another_input_or_the_keys_is_refused(capture_sets, tmp_path):
    # out_dir/a.pcap a symbolic link to input b.pcap: a's output was written through it, over b
    # while b's tasks still read it (b's own output then came out cut short, with a warning),
    # and the run exited 0. Refused before anything runs, as an output over its own input is.
    specs, paths = capture_sets["mixed"]
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    a, b = data / "a.pcap", data / "b.pcapng"
    a.write_bytes(open(paths[0], "rb").read())
    b.write_bytes(open(paths[1], "rb").read())
    before = b.read_bytes()
    (out / "a.pcap").symlink_to(b)
    with pytest.raises(ValueError, match=rf"^out_dir: writing {out}/a\.pcap would overwrite the input {b}$"):
        ndask.decap_captures([a, b], specs, out, None, progress=False)
    (out / "a.pcap").unlink()
    os.link(b, out / "a.pcap")                     # a hard link is the same file too
    with pytest.raises(ValueError, match=rf"^out_dir: writing {out}/a\.pcap would overwrite the input {b}$"):
        ndask.decap_captures([a, b], specs, out, None, progress=False)
    (out / "a.pcap").unlink()
    assert b.read_bytes() == before
    # The key file, when keys is one: natt decap's -o refuses it too.
    keys_path = tmp_path / "keys.json"
    keyfile.save(keys_path, specs)
    saved = keys_path.read_bytes()
    (out / "b.pcapng").symlink_to(keys_path)
    with pytest.raises(ValueError, match=rf"^out_dir: writing {out}/b\.pcapng would overwrite the key file "
                                         rf"{keys_path}$"):
        ndask.decap_captures([a, b], keys_path, out, None, progress=False)
    assert keys_path.read_bytes() == saved


def test_a_failed_output_leaves_no_temporary_file(client, capture_sets, tmp_path):
    specs, paths = capture_sets["mixed"]
    out = tmp_path / "out"
    (out / os.path.basename(paths[0])).mkdir(parents=True)       # the output's name is taken
    with pytest.raises(IsADirectoryError) as e:
        ndask.decap_captures(paths[:1], specs, out, client, chunk_size=BIG_CHUNK, progress=False)
    # The error names the output, not the temporary file beside it (natt decap prints filename).
    assert e.value.filename == str(out / os.path.basename(paths[0]))
    assert sorted(os.listdir(out)) == [os.path.basename(paths[0])]


def test_a_failed_job_leaves_out_dir_as_it_was(capture_sets, tmp_path, monkeypatch):
    # The workers made out_dir (and its missing parents) for the part files; a job that failed, or
    # was stopped by Ctrl-C, removed the parts and left the directories behind, empty.
    specs, paths = capture_sets["mixed"]

    def fails(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ndask, "_finish", fails)     # every part is written by then
    # Workers in this process: they run the patched _finish.
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        with pytest.raises(OSError, match="No space left"):
            ndask.decap_captures(paths[:1], specs, tmp_path / "new" / "out", c, chunk_size=4096, progress=False)
    assert os.listdir(tmp_path) == []


def test_part_files_are_private_while_the_job_runs(capture_sets, tmp_path, monkeypatch):
    # They hold the decrypted traffic until the job ends (for good after a crash), so group and
    # others may not read them, whatever the umask and the input's mode.
    specs, paths = capture_sets["mixed"]
    seen = tmp_path / "seen"        # the task is a copy of spy (Dask pickles it): a file it writes
    finish = ndask._finish

    def spy(job, head, output, part_paths, *done):
        modes = {stat.S_IMODE(os.stat(p).st_mode) for p in part_paths}
        seen.write_text(f"{stat.S_IMODE(os.stat(os.path.dirname(part_paths[0])).st_mode):o} "
                        f"{' '.join(f'{m:o}' for m in sorted(modes))}")
        return finish(job, head, output, part_paths, *done)
    monkeypatch.setattr(ndask, "_finish", spy)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        ndask.decap_captures(paths[:1], specs, tmp_path / "out", c, chunk_size=4096, progress=False)
    assert seen.read_text() == "700 600"


def test_two_jobs_finishing_outputs_of_one_name_at_once_each_write_a_whole_one(capture_sets, tmp_path):
    # Two jobs (say, two captures of one name from two directories into one out_dir) finish an
    # output of the same name at once. Each writes beside the name and renames over it, so the
    # file ends as one whole output and neither fails; with one temporary name for both, the
    # second truncated the first's, the first then wrote into the renamed file, and failed.
    specs, paths = capture_sets["mixed"]
    with open(paths[0], "rb") as f:
        head = ndask._RangeSpec(paths[0], "pcap", f.read(24), b"", 0, 0)
    out = tmp_path / "out" / "same.pcap"
    gate = tmp_path / "gate"
    os.mkfifo(gate)         # job A's first part: opening it waits until the test opens the other end
    a_part, b_part = tmp_path / "a.part", tmp_path / "b.part"
    a_part.write_bytes(b"A" * 1000)
    b_part.write_bytes(b"B" * 3000)
    got: dict[str, object] = {}

    def job_a() -> None:
        try:
            got["a"] = ndask._finish(uuid.uuid4().hex, head, str(out), [str(gate), str(a_part)])
        except BaseException as e:     # noqa: BLE001 - compared below
            got["a"] = e
    a = threading.Thread(target=job_a)
    a.start()
    deadline = time.monotonic() + 30
    while not list(out.parent.glob("same.pcap.natt-tmp*")):       # A has its temporary file
        assert time.monotonic() < deadline
        time.sleep(0.01)
    got["b"] = ndask._finish(uuid.uuid4().hex, head, str(out), [str(b_part)])
    with open(gate, "wb"):
        pass                # A goes on
    a.join(30)
    header = ndask._header(head)
    assert got == {"a": len(header) + 1000, "b": len(header) + 3000}
    assert out.read_bytes() == header + b"A" * 1000        # A renamed last
    assert os.listdir(out.parent) == ["same.pcap"]


def test_the_directories_a_job_makes_for_out_dir_are_the_ones_it_removes(tmp_path):
    # "a/../b" made a/ too, which the list of directories to remove did not name; and a makedirs
    # that failed halfway left what it had made.
    made = ndask._make_out_dir(str(tmp_path / "n1" / "a" / ".." / "b"))
    assert sorted(os.listdir(tmp_path / "n1")) == ["b"]
    ndask._remove_dirs(made)
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):
        ndask._make_out_dir(str(tmp_path / "n2" / ("x" * 300)))     # ENAMETOOLONG once n2 is made
    assert os.listdir(tmp_path) == []


def test_a_task_of_a_job_that_ended_writes_nothing_more(tmp_path):
    # Cancelling a job's futures does not stop a task that is running: its part file came after
    # the job's cleanup, and brought the part directory back.
    job = uuid.uuid4().hex
    writing, go_on = threading.Event(), threading.Event()

    def write_part() -> None:
        with ndask._writing(job) as live:
            assert live
            writing.set()
            go_on.wait(30)
            (tmp_path / "part").write_bytes(b"records")
    writer = threading.Thread(target=write_part)
    writer.start()
    assert writing.wait(30)
    forget = threading.Thread(target=ndask._forget_job, args=(job,))
    forget.start()
    forget.join(0.3)
    assert forget.is_alive()           # the job's end waits for the write under way
    go_on.set()
    forget.join(30)
    writer.join(30)
    assert not forget.is_alive() and (tmp_path / "part").exists()
    with ndask._writing(job) as live:  # and then nothing more is written
        assert not live


def _hold_a_write(job: str, inside: str, go_on: str) -> None:
    # A task of ``job`` in the middle of writing a part, until the file ``go_on`` appears.
    with ndask._writing(job) as live:
        assert live
        open(inside, "w").close()
        deadline = time.monotonic() + 20
        while not os.path.exists(go_on) and time.monotonic() < deadline:
            time.sleep(0.02)


def test_the_end_of_a_job_waits_for_its_writes_off_the_workers_event_loop(client, tmp_path):
    # client.run runs a plain function inside the worker's event loop: _forget_job waiting there
    # for a write in progress stalled everything else the worker does (heartbeats, other jobs'
    # transfers, another client.run) for as long as the write took.
    job = uuid.uuid4().hex
    worker = sorted(client.scheduler_info()["workers"])[0]
    inside, go_on = str(tmp_path / "inside"), str(tmp_path / "go_on")
    task = client.submit(_hold_a_write, job, inside, go_on, workers=[worker], pure=False)
    deadline = time.monotonic() + 30
    while not os.path.exists(inside):
        assert time.monotonic() < deadline and not task.done()
        time.sleep(0.02)
    ended = threading.Thread(target=client.run, args=(ndask._in_thread, ndask._forget_job, job),
                             kwargs={"workers": [worker]})
    ended.start()
    try:
        time.sleep(0.3)
        assert ended.is_alive()                 # the job's end waits for the write under way
        t = time.monotonic()
        assert client.run(os.getpid, workers=[worker])[worker] > 0
        assert time.monotonic() - t < 5         # and the worker answers meanwhile
        assert ended.is_alive()
    finally:
        open(go_on, "w").close()
        ended.join(60)
    assert not ended.is_alive()
    task.result(timeout=30)


def test_natts_own_cluster_serves_http_on_a_free_loopback_port():
    # Dask's default (":8787") listened on every interface, and warned on stderr when another
    # cluster had port 8787 (as a listener here makes sure of, unless something already has it).
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    except OSError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster = ndask._local_cluster(n_workers=1, threads_per_worker=1)
    try:
        bound = [sock.getsockname() for sock in cluster.scheduler.http_server._sockets.values()]
    finally:
        cluster.close()
        taken.close()
    assert bound and all(host == "127.0.0.1" and port != 8787 for host, port in bound)


def test_checking_many_outputs_against_many_inputs_costs_linear_time(tmp_path, monkeypatch):
    # Each output was checked against every input with os.path.samefile, falling back to two
    # realpath calls for an output not there yet: 1 500 captures (a day of per-minute ones is
    # 1 440) took 106 s before the run began. Now one identity per path.
    from natt import _files
    (tmp_path / "in").mkdir()
    paths = [str(tmp_path / "in" / f"c{i}.pcap") for i in range(1500)]
    for p in paths:
        open(p, "wb").close()
    calls = []
    real_identity = _files.file_identity
    monkeypatch.setattr(ndask, "file_identity", lambda p: calls.append(p) or real_identity(p))
    outs = ndask._outputs(paths, str(tmp_path / "out"))
    assert outs == [str(tmp_path / "out" / f"c{i}.pcap") for i in range(1500)]
    assert len(calls) == 2 * len(paths)      # each input once, each output once


def test_an_output_written_over_keeps_its_mode_and_a_symlink_its_file(client, capture_sets, tmp_path):
    # As natt decap -o does: a 0600 file of decrypted traffic stays 0600.
    specs, paths = capture_sets["mixed"]
    name = os.path.basename(paths[0])
    ref = tmp_path / "ref"
    ndask.decap_captures(paths[:1], specs, ref, client, chunk_size=BIG_CHUNK, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"old")
    os.chmod(out / name, 0o600)
    elsewhere = tmp_path / "elsewhere.pcap"
    elsewhere.write_bytes(b"old")
    (out / "b").mkdir()
    (out / "b" / name).symlink_to(elsewhere)
    ndask.decap_captures(paths[:1], specs, out, client, chunk_size=BIG_CHUNK, progress=False)
    ndask.decap_captures(paths[:1], specs, out / "b", client, chunk_size=BIG_CHUNK, progress=False)
    assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert (out / "b" / name).is_symlink() and elsewhere.read_bytes() == (ref / name).read_bytes()


def test_a_new_output_is_no_more_readable_than_its_input(client, capture_sets, tmp_path):
    # As natt decap -o does: a private capture does not decap to a world-readable file.
    specs, paths = capture_sets["mixed"]
    for input_mode in (0o600, 0o640):
        src = tmp_path / f"in{input_mode:o}" / os.path.basename(paths[0])
        src.parent.mkdir()
        shutil.copyfile(paths[0], src)
        src.chmod(input_mode)
        out = tmp_path / f"out{input_mode:o}"
        ndask.decap_captures([str(src)], specs, out, client, chunk_size=BIG_CHUNK, progress=False)
        assert stat.S_IMODE(os.stat(out / src.name).st_mode) == input_mode & 0o644


def test_spis_and_ports_of_any_integer_type_route_as_ints(client, capture_sets, tmp_path):
    # install takes "0x1001" and numpy integers; the tasks' routing (port << 32 | spi) did not.
    specs, paths = capture_sets["mixed"]
    ref = ndask.decap_captures(paths[:1], specs, tmp_path / "ref", client, chunk_size=BIG_CHUNK, progress=False)
    for convert in (lambda s: dataclasses.replace(s, spi=np.uint32(s.spi), port=np.uint16(s.port)),
                    lambda s: dataclasses.replace(s, spi=f"0x{s.spi:x}", port=np.int64(s.port))):
        got = ndask.decap_captures(paths[:1], [convert(s) for s in specs], tmp_path / "got", client,
                                   chunk_size=BIG_CHUNK, progress=False)
        assert got.counts.tolist() == ref.counts.tolist() and got.labels == ref.labels


def test_no_capture_or_an_out_dir_that_is_no_directory_is_refused_before_any_cluster(capture_sets, tmp_path,
                                                                                       monkeypatch):
    # A file as out_dir was a worker's FileExistsError ("File exists", from a task, logged with
    # a traceback); no capture at all made an empty out_dir and returned empty stats.
    specs, paths = capture_sets["mixed"]
    monkeypatch.setattr(ndask, "_local_cluster", lambda **kw: pytest.fail("a cluster was started"))
    monkeypatch.setattr(distributed, "get_client", lambda: pytest.fail("a client was looked for"))
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"^out_dir: {afile} is not a directory$"):
        ndask.decap_captures(paths[:1], specs, afile, progress=False)
    with pytest.raises(ValueError, match=rf"^out_dir: {afile} is not a directory \({afile / 'sub'} would be in it\)$"):
        ndask.decap_captures(paths[:1], specs, afile / "sub", progress=False)
    with pytest.raises(ValueError, match=r"^paths: no capture given$"):
        ndask.decap_captures([], specs, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["afile"] and afile.read_bytes() == b"x"


def test_one_path_given_as_a_string_is_refused(client, capture_sets, tmp_path):
    # A str is a Sequence: its characters were taken for file names.
    specs, paths = capture_sets["mixed"]
    with pytest.raises(TypeError, match=r"paths: expected a list of captures, got one str; pass \[path\]"):
        ndask.decap_captures(paths[0], specs, tmp_path, client, progress=False)


def test_relative_paths_mean_the_callers_working_directory_not_the_workers(capture_sets, tmp_path, monkeypatch):
    # The workers of a `dask worker` started elsewhere resolved relative paths against their own
    # working directory: a relative input was not found (or another file read), and a relative
    # out_dir put the outputs there -- over the input itself when it sat in the workers' directory.
    specs, paths = capture_sets["mixed"]
    data = open(paths[0], "rb").read()
    workers_dir, here = tmp_path / "workers", tmp_path / "here"
    workers_dir.mkdir()
    here.mkdir()
    (workers_dir / "cap.pcap").write_bytes(data)
    (here / "sub").mkdir()
    (here / "sub" / "rel.pcap").write_bytes(data)
    monkeypatch.chdir(workers_dir)          # worker processes start in the directory they are spawned in
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as c:
        monkeypatch.chdir(here)
        # Was the input decapsulated over itself (./cap.pcap of the workers' directory).
        ndask.decap_captures([workers_dir / "cap.pcap"], specs, ".", c, chunk_size=BIG_CHUNK, progress=False)
        # Was "No such file or directory" (the workers have no sub/rel.pcap).
        stats = ndask.decap_captures(["sub/rel.pcap"], specs, "out", c, chunk_size=BIG_CHUNK, progress=False)
    assert (workers_dir / "cap.pcap").read_bytes() == data
    assert sorted(os.listdir(workers_dir)) == ["cap.pcap"]
    assert sorted(os.listdir(here)) == ["cap.pcap", "out", "sub"] and os.listdir(here / "out") == ["rel.pcap"]
    assert (here / "cap.pcap").read_bytes() == (here / "out" / "rel.pcap").read_bytes() != data
    assert stats.frames == len(pcap.read_frames(paths[0]))


def test_every_capture_cut_short_is_reported_in_input_order(capture_sets, tmp_path, monkeypatch):
    # The summary was merged as the parts came in: of two captures cut short, it named only the
    # one whose last part finished first (the other's cut went unreported), and which one that
    # was depended on the workers' timing.
    specs, paths = capture_sets["mixed"]
    data = open(paths[0], "rb").read()
    cuts = [tmp_path / "first.pcap", tmp_path / "second.pcap"]
    for c in cuts:
        c.write_bytes(data[: len(data) - 5])
    messages = []
    for c in cuts:
        with pytest.raises(pcap.PcapTruncated) as single:
            with pcap.PcapReader(c, chunk_size=CHUNK) as r:
                for _ in r:
                    pass
        messages.append(str(single.value))
    part = ndask._part

    def first_capture_last(job, rs, *args):
        if rs.path == str(cuts[0]):
            time.sleep(1.0)
        return part(job, rs, *args)
    monkeypatch.setattr(ndask, "_part", first_capture_last)
    # Workers in this process: they run the patched _part; two threads let the second go first.
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        stats = ndask.decap_captures(cuts, specs, tmp_path / "out", c, chunk_size=BIG_CHUNK, progress=False)
    assert stats.truncated == "; ".join(messages)


@pytest.mark.parametrize("failure", ["scheduler lost", "killed workers"])
def test_cli_a_job_the_cluster_gave_up_on_is_one_line(client, capture_sets, tmp_path, capsys, monkeypatch, failure):
    # The scheduler going away mid-job (FutureCancelledError: "cancelled for reason:
    # scheduler-connection-lost") or a task that killed every worker it ran on (KilledWorker)
    # ended natt decap with a traceback.
    from natt.cli import main
    specs, paths = capture_sets["mixed"]
    key_path = tmp_path / "keys.json"
    keyfile.save(key_path, specs)

    class Worker:
        address = "tcp://127.0.0.1:1"
    error = (distributed.client.FutureCancelledError(("natt-part-0", 1), "scheduler-connection-lost")
             if failure == "scheduler lost" else distributed.KilledWorker(("natt-step-0", 0, 1), Worker(), 3))

    def fails(*args, **kwargs):
        raise error
    monkeypatch.setattr(ndask, "decap_captures", fails)
    rc = main(["decap", *paths, "-k", str(key_path), "-o", str(tmp_path / "out"), "--dask", client.scheduler.address,
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err == f"natt decap: the Dask job failed: {error}\n"
