"""Decap time against the replay window, with many SAs (where the ring's memory is a cache miss).

    python -m benchmarks.bench_replay_window [--sas 100000] [--windows 0,64,128,1024,65536]
                                             [--size 64] [--packets 100000] [--reps 5]

One workload of ``--packets`` AES-128-GCM packets spread at random over ``--sas`` inbound SAs
with random SPIs (the ratio run's 100 000-SA case). For each window W, every repetition
reinstalls the SAs with ``replay_window=W`` (untimed; each SA's warm-up packet decapped) and
times one decap of the batch, so every packet is new to its window and fully decrypted.
Window 0 is anti-replay off; windows up to 64 keep their ring inside the SA, larger ones in
an allocation of its own. Repetitions are interleaved (every window once per round); the
table gives the median and the minimum in ns per packet, and in its last column ("first /
this") the first window's median time over the row's (a speed ratio; below 1, the row's window
is slower than the first).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from natt import DecapResult, Status
from natt._bench import build_workload
from natt.cli import run_script, say

from ._args import add_workload

SUITE = "aes128gcm16"


def measure(sas: int, windows: Sequence[int], size: int, packets: int, reps: int) -> list[dict[str, float]]:
    """Rows ``{"window", "median_ns", "min_ns", "ratio"}`` in the order of ``windows``; ``ratio``
    is the first window's median over the row's."""
    wl = build_workload("fast", SUITE, size, packets, sas)
    rx = {w: wl.receiver("fast", replay_window=w) for w in windows}
    out = DecapResult()
    times: dict[int, list[float]] = {w: [] for w in windows}
    for r in range(reps):
        for w in windows:
            if r:
                wl.rearm(rx[w], replay_window=w)
            t = time.perf_counter()
            rx[w].decap(wl.esp, out=out)
            times[w].append(time.perf_counter() - t)
            bad = np.count_nonzero(out.status != int(Status.OK))
            if bad:
                raise RuntimeError(f"{bad} of {packets} packets did not decap OK (replay window {w})")
    base = float(np.median(times[windows[0]]))
    return [{"window": w, "median_ns": float(np.median(v)) / packets * 1e9,
             "min_ns": min(v) / packets * 1e9, "ratio": base / float(np.median(v))}
            for w, v in times.items()]


def _windows(text: str) -> list[int]:
    try:
        ws = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of replay windows: {text!r}") from None
    if not ws or any(w != 0 and not 32 <= w <= 65536 for w in ws) or len(set(ws)) != len(ws):
        raise argparse.ArgumentTypeError(f"replay windows are 0 (off) or 32..65536, each once: {text!r}")
    return ws


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_replay_window", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(ap, sas=True, reps=5)
    ap.add_argument("--windows", type=_windows, default=[0, 64, 128, 1024, 65536],
                    help="comma-separated replay windows, 0 (off) or 32..65536; the first is the "
                         "baseline of the last column (default 0,64,128,1024,65536)")
    args = ap.parse_args(argv)
    say(f"AES-128-GCM decap, {args.size}-octet inner packets, batches of {args.packets} over "
        f"{args.sas} SAs, {args.reps} interleaved repetitions (SAs reinstalled before each)")
    say(f"{'replay window':>14} {'median ns/pkt':>14} {'min ns/pkt':>11} {'first / this':>13}")
    for row in measure(args.sas, args.windows, args.size, args.packets, args.reps):
        what = "0 (off)" if row["window"] == 0 else str(row["window"])
        say(f"{what:>14} {row['median_ns']:14.0f} {row['min_ns']:11.0f} {row['ratio']:13.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
