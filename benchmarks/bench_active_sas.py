"""Decap time against how many SAs a batch touches (the 100 000-SA ratio, taken apart).

    python -m benchmarks.bench_active_sas [--sas 100000] [--active 1,64,1000,4000,100000]
                                          [--size 64] [--packets 100000] [--reps 7]

One receiver holds ``--sas`` inbound AES-128-GCM SAs with random SPIs (as the ratio run's
100 000-SA case). For each ``--active`` count K it decaps a batch whose packets pick at random
among the first K of those SAs only, so the SA state a batch touches grows from one SA's to
all of them: from L1, through L2 and L3, to main memory. A second receiver with a single SA
(where the many-SA prefetch pipeline stays off) is the baseline. Anti-replay is off so that
one batch can be decapped again and again. Repetitions are interleaved (every variant once per
round), so a phase of a busy host hits all of them alike; the table gives the median and the
minimum in ns per packet, and in its last column ("1 SA / this") the one-SA receiver's median
time over the row's: the ratio run's "100 000 SAs / 1 SA" figure for each K (a speed ratio;
below 1, the batch is slower than on one SA).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from natt import DecapResult, PacketBatch, Status
from natt._bench import Workload, build_workload
from natt.cli import run_script, say

from ._args import add_workload, counts

SUITE = "aes128gcm16"


def _subset(wl: Workload, k: int, n: int) -> PacketBatch:
    """``n`` packets of ``wl`` (in their order, repeated as needed) whose SA is among its first ``k``."""
    idx = np.resize(np.flatnonzero(wl.sa_index < k), n)
    esp = wl.esp
    return PacketBatch.from_packets(
        [bytes(esp.data[o: o + m]) for o, m in zip(esp.offsets[idx].tolist(), esp.lengths[idx].tolist())])


def measure(sas: int, active: Sequence[int], size: int, packets: int, reps: int) -> list[dict[str, float]]:
    """Rows ``{"active", "median_ns", "min_ns", "ratio"}``, the baseline (one installed SA) first
    with ``active`` 0; ``ratio`` is the baseline's median over the row's."""
    many = build_workload("fast", SUITE, size, packets, sas)
    one = build_workload("fast", SUITE, size, packets, 1)
    rx_many = many.receiver("fast", replay_window=0)
    rx_one = one.receiver("fast", replay_window=0)
    runs = [(0, rx_one, one.esp)] + [(k, rx_many, _subset(many, k, packets)) for k in active]
    out = DecapResult()
    times: dict[int, list[float]] = {k: [] for k, _, _ in runs}
    for _ in range(reps):
        for k, rx, batch in runs:
            t = time.perf_counter()
            rx.decap(batch, out=out)
            times[k].append(time.perf_counter() - t)
            bad = np.count_nonzero(out.status != int(Status.OK))
            if bad:
                raise RuntimeError(f"{bad} of {packets} packets did not decap OK (active SAs: {k or 1})")
    base = float(np.median(times[0]))
    return [{"active": k, "median_ns": float(np.median(v)) / packets * 1e9,
             "min_ns": min(v) / packets * 1e9, "ratio": base / float(np.median(v))}
            for k, v in times.items()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_active_sas", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(ap, sas=True, reps=7)
    ap.add_argument("--active", type=counts("SA counts"), default=[1, 64, 1000, 4000, 100_000],
                    help="comma-separated counts of SAs the packets pick from, each at most --sas "
                         "(default 1,64,1000,4000,100000)")
    args = ap.parse_args(argv)
    if max(args.active) > args.sas:
        ap.error(f"--active: {max(args.active)} is more than --sas {args.sas}")
    say(f"AES-128-GCM decap, {args.size}-octet inner packets, batches of {args.packets}, "
        f"{args.sas} SAs installed, {args.reps} interleaved repetitions")
    say(f"{'SAs the batch touches':>24} {'median ns/pkt':>14} {'min ns/pkt':>11} {'1 SA / this':>12}")
    for row in measure(args.sas, args.active, args.size, args.packets, args.reps):
        what = "1 (receiver with 1 SA)" if row["active"] == 0 else str(row["active"])
        say(f"{what:>24} {row['median_ns']:14.0f} {row['min_ns']:11.0f} {row['ratio']:12.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
