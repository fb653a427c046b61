"""Reading speed of natt.pcap: records per second for classic pcap and pcapng.

    python benchmarks/bench_pcap.py [--records N] [--size OCTETS] [--reps R]

Writes a capture of N Ethernet/IPv4/UDP frames of SIZE octets to a temporary file (page cache
warm after the first pass), then times full passes of ``PcapReader`` over it: every record's
header parsed, link layer classified and a ``PacketBatch`` built per chunk. Prints the median
of R passes (min and max too) as records/s and MB/s, and the records/s by process CPU time
(steadier than wall time on a shared machine). The target is 5 million records/s for classic
pcap of small frames.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from natt import pcap
from natt.cli import at_least, run_script, say


def make_capture(path: str, n: int, size: int, fmt: str, mixed: bool) -> None:
    """``n`` Ethernet/IPv4 frames: all ``size`` octets, or (``mixed``) sizes drawn uniformly from
    ``size`` .. 1514 so that no two neighbours are likely to match (the reader's worst case)."""
    rng = np.random.default_rng(1)
    frames = {}
    block = 100_000
    with pcap.PcapWriter(path, fmt=fmt, nanosecond=True) as w:
        for start in range(0, n, block):
            k = min(block, n - start)
            sizes = rng.integers(size, 1515, k) if mixed else np.full(k, size)
            batch = []
            for sz in sizes.tolist():
                f = frames.get(sz)
                if f is None:
                    f = bytearray(pcap._ETH_HEADER + bytes.fromhex("45000000000100004011000ac0000201c0000202"))
                    f += bytes(max(sz - len(f), 8))
                    f[16:18] = (len(f) - 14).to_bytes(2, "big")
                    f = frames[sz] = bytes(f)
                batch.append(f)
            w.write_frames(batch, ts_ns=(np.arange(start, start + k) * 1000).tolist())


def one_pass(path: str) -> tuple[int, int]:
    frames = ipv4 = 0
    with pcap.PcapReader(path) as r:
        for c in r:
            frames += len(c)
            ipv4 += int(c.ipv4.sum())
    return frames, ipv4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=at_least(1), default=2_000_000, metavar="N",
                    help="frames in the capture (default 2000000)")
    ap.add_argument("--size", type=at_least(42, 65535), default=64, metavar="OCTETS",
                    help="frame size in octets, 42..65535, with --mixed 42..1514 (default 64)")
    ap.add_argument("--reps", type=at_least(1), default=5, metavar="R", help="timed passes (default 5)")
    ap.add_argument("--mixed", action="store_true", help="frame sizes drawn from SIZE..1514 instead of all SIZE")
    args = ap.parse_args(argv)
    if args.mixed and args.size > 1514:
        ap.error(f"--size {args.size}: with --mixed, at most 1514")
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("pcap", "pcapng"):
            path = os.path.join(d, f"bench.{fmt}")
            make_capture(path, args.records, args.size, fmt, args.mixed)
            nbytes = os.path.getsize(path)
            one_pass(path)   # warm the page cache
            times, cpu = [], []
            for _ in range(args.reps):
                t, c = time.perf_counter(), time.process_time()
                frames, ipv4 = one_pass(path)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                if frames != args.records or ipv4 != args.records:
                    print(f"{fmt}: read {frames} frames ({ipv4} IPv4), expected {args.records}", file=sys.stderr)
                    return 1
            med = statistics.median(times)
            what = f"{args.size}..1514 (mixed)" if args.mixed else str(args.size)
            say(f"{fmt:7s} {args.records} records of {what} octets: "
                f"{args.records / med / 1e6:6.2f} M records/s  {nbytes / med / 1e6:7.1f} MB/s  "
                f"(median of {args.reps}; min {min(times):.3f} s, max {max(times):.3f} s; "
                f"CPU {args.records / statistics.median(cpu) / 1e6:.2f} M records/s)")
    return 0


if __name__ == "__main__":
    run_script(main)
