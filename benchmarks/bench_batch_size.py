"""``threads=N`` against ``threads=None`` by batch size: from what size a threaded batch pays.

    python -m benchmarks.bench_batch_size [--batches 512,1024,2560,8192,32768,100000]
                                          [--size 64] [--packets 100000] [--threads 2]
                                          [--pause-ms 2] [--rounds 20]

A threaded batch wakes the pool's workers and waits for the last of them; on a virtual machine
a worker on an idle vCPU runs only when the host runs that vCPU. This script measures what that
costs. One AES-128-GCM SA, anti-replay off (so that the same packets decap again), one workload
of ``--packets`` packets; each batch size B takes its first B. A round times one decap with
``threads=None`` and one with ``threads=N``, back to back; then the same rounds again with a
pause of ``--pause-ms`` (a sleep: the process and the pool's workers idle, as a receiver's do
between bursts) before every call. Per B it prints the median ``threads=None`` time and the
speed-up (median ``threads=None`` time over median ``threads=N`` time) in both modes; below 1,
the threads cost more than they bring. natt runs a batch of less than 256 KiB of input serially
whatever ``threads`` says (``natt._fastpath._share_min_octets``), so such rows show about 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

from natt import DecapResult, PacketBatch, Status
from natt._bench import build_workload
from natt.cli import at_least, run_script, say

from ._args import add_workload, counts

SUITE = "aes128gcm16"


def measure(batches: Sequence[int], size: int, packets: int, threads: int, pause: float,
            rounds: int) -> list[dict[str, float]]:
    """Rows ``{"batch", "serial_us", "speedup", "serial_us_paused", "speedup_paused"}`` in the
    order of ``batches`` (each at most ``packets``)."""
    wl = build_workload("fast", SUITE, size, packets)
    rx = wl.receiver("fast", replay_window=0)
    out = DecapResult()
    rows = []
    for b in batches:
        part = PacketBatch(wl.esp.data, wl.esp.offsets[:b], wl.esp.lengths[:b])
        row: dict[str, float] = {"batch": b}
        for key, gap in (("", 0.0), ("_paused", pause)):
            times: dict[int | None, list[float]] = {None: [], threads: []}
            for _ in range(rounds):
                for t in times:
                    if gap:
                        time.sleep(gap)
                    t0 = time.perf_counter()
                    res = rx.decap(part, threads=t, out=out)
                    times[t].append(time.perf_counter() - t0)
                    if not (res.status == int(Status.OK)).all():
                        raise RuntimeError(f"decap of {b} packets, threads={t}: not every packet OK")
            serial = statistics.median(times[None])
            row["serial_us" + key] = serial * 1e6
            row["speedup" + key] = serial / statistics.median(times[threads])
        rows.append(row)
    rx.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_batch_size", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(ap)
    ap.add_argument("--batches", type=counts("batch sizes"), default=[512, 1024, 2560, 8192, 32768, 100_000],
                    help="comma-separated batch sizes, each at most --packets "
                         "(default 512,1024,2560,8192,32768,100000)")
    ap.add_argument("--threads", type=at_least(2, 64), default=2, help="N of threads=N, 2..64 (default 2)")
    ap.add_argument("--pause-ms", type=at_least(1, 1000), default=2,
                    help="the pause before every call of the second set of rounds, 1..1000 ms (default 2)")
    ap.add_argument("--rounds", type=at_least(1), default=20, help="rounds per batch size and mode (default 20)")
    args = ap.parse_args(argv)
    if max(args.batches) > args.packets:
        ap.error(f"--batches: {max(args.batches)} is more than --packets {args.packets}")
    say(f"AES-128-GCM decap, {args.size}-octet inner packets, threads={args.threads} against threads=None, "
        f"{args.rounds} rounds per batch size, back to back and after a {args.pause_ms} ms pause")
    say(f"{'batch':>7} {'serial us':>10} {'speed-up':>9} {'paused: serial us':>18} {'speed-up':>9}")
    for r in measure(args.batches, args.size, args.packets, args.threads, args.pause_ms / 1000, args.rounds):
        say(f"{r['batch']:7.0f} {r['serial_us']:10.0f} {r['speedup']:9.2f} {r['serial_us_paused']:18.0f} "
            f"{r['speedup_paused']:9.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
