"""natt's ``threads=N`` speed-up against what N threads give on this machine at all, round by round.

    python -m benchmarks.bench_threads [--size 64] [--packets 100000] [--threads 2] [--rounds 30]

The ratio run's ``threads=2`` target (≥ 1.8× ``threads=None``) is read on a shared virtual
machine whose second core is not always a whole core: in some minutes two busy threads get
far less than twice one thread's work done, whatever they run. The ratio run measures that
ceiling too (the bare EVP loop split over N threads, each with its own context, no sharing,
no ordering), but as medians over separate repetitions, so the two figures may come from
different phases of the host.

This script pairs them. Each round times, back to back on the same AES-128-GCM packets:
natt's decap with ``threads=None`` and with ``threads=N`` (anti-replay on, a fresh window
each time), then the bare EVP loop on one thread and on N. Per round it prints natt's
speed-up, the ceiling's, and their quotient; the summary gives medians over all rounds and
over the rounds in which the ceiling itself was below 1.6 (the host's "one fast core" phases,
where a speed-up of 1.8 is out of any code's reach). Needs ``cc`` and the libcrypto headers,
as the ratio run's C baseline does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Sequence, TypeVar

import numpy as np

from natt import DecapResult, Status
from natt._bench import EvpLoop, build_workload
from natt._suites import parse_suite
from natt.cli import at_least, run_script, say

from ._args import add_workload

SUITE = "aes128gcm16"
LOW_CEILING = 1.6     # rounds whose ceiling is below this are reported apart
T = TypeVar("T")


def _timed(run: Callable[[], T], verified: Callable[[T], int], n: int, what: str) -> float:
    """Seconds one ``run()`` took; ``verified`` (untimed) says how many of its ``n`` packets verified."""
    t = time.perf_counter()
    res = run()
    dt = time.perf_counter() - t
    ok = verified(res)
    if ok != n:
        raise RuntimeError(f"{what}: {n - ok} of {n} packets did not verify")
    return dt


def measure(size: int, packets: int, threads: int, rounds: int,
            on_round: Callable[[int, dict[str, float]], None] = lambda k, row: None) -> list[dict[str, float]]:
    """One row per round: ``natt`` (threads=None time / threads=N time), ``ceiling`` (the bare EVP
    loop's 1-thread time / N-thread time) and ``serial_ns`` (natt threads=None, ns per packet);
    ``on_round(k, row)`` is called as each round ends."""
    wl = build_workload("fast", SUITE, size, packets, 1)
    suite, _ = parse_suite(SUITE)
    evp = EvpLoop()
    rx = wl.receiver("fast")
    out = DecapResult()
    buf = np.empty_like(wl.esp.data)

    def natt(t: int | None) -> float:
        wl.rearm(rx)       # a fresh replay window (untimed), so every packet is new again
        return _timed(lambda: rx.decap(wl.esp, threads=t, out=out),
                      lambda res: int(np.count_nonzero(res.status == int(Status.OK))), packets,
                      f"natt decap, threads={t}")

    def evp_loop(t: int) -> float:
        return _timed(lambda: evp.decrypt(suite, wl.keys[0], wl.esp, buf, t), int, packets,
                      f"bare EVP loop, {t} thread(s)")

    rows = []
    for k in range(rounds):
        s, p = natt(None), natt(threads)
        e1, en = evp_loop(1), evp_loop(threads)
        rows.append({"natt": s / p, "ceiling": e1 / en, "serial_ns": s / packets * 1e9})
        on_round(k + 1, rows[-1])
    rx.close()
    return rows


def summary(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Medians of natt's speed-up, the ceiling and natt / ceiling, over all rounds (``"all"``) and
    over those with a ceiling below LOW_CEILING (``"low"``, absent if none); ``rounds`` counts them."""
    groups = {"all": list(rows), "low": [r for r in rows if r["ceiling"] < LOW_CEILING]}
    return {name: {"rounds": len(g),
                   "natt": statistics.median(r["natt"] for r in g),
                   "ceiling": statistics.median(r["ceiling"] for r in g),
                   "share": statistics.median(r["natt"] / r["ceiling"] for r in g)}
            for name, g in groups.items() if g}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(ap)
    ap.add_argument("--threads", type=at_least(2, 64), default=2, help="N of threads=N, 2..64 (default 2)")
    ap.add_argument("--rounds", type=at_least(1), default=30, help="paired rounds (default 30)")
    args = ap.parse_args(argv)
    say(f"AES-128-GCM decap, {args.size}-octet inner packets, batches of {args.packets}, "
        f"threads={args.threads} against threads=None, {args.rounds} paired rounds")
    say(f"{'round':>5} {'serial ns/pkt':>14} {'natt speed-up':>14} {'ceiling':>8} {'natt / ceiling':>15}")

    def show(k: int, r: dict[str, float]) -> None:
        say(f"{k:5d} {r['serial_ns']:14.0f} {r['natt']:14.2f} {r['ceiling']:8.2f} "
            f"{r['natt'] / r['ceiling']:15.2f}")

    rows = measure(args.size, args.packets, args.threads, args.rounds, show)
    for name, s in summary(rows).items():
        what = "all rounds" if name == "all" else f"rounds with a ceiling below {LOW_CEILING}"
        say(f"median over {what} ({s['rounds']}): natt {s['natt']:.2f}, ceiling {s['ceiling']:.2f}, "
            f"natt / ceiling {s['share']:.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
