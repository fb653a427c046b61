"""Resident memory under SA churn and steady decap (the hardening issue's memory figures).

    python benchmarks/bench_memory.py [--cycles 1000000] [--packets 10000000] [--backend fast]

Prints RSS after every 100 000 SA add/delete cycles (and the last), then every 2 000 000 packets
(and at the end) of steady AES-128-GCM tunnel decap of 28-octet inner packets with ``out=``
reuse, then what glibc hands back with ``malloc_trim`` (freed SA memory stays in glibc's arenas
until then, which is reuse, not a leak).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import time

import natt
from natt.cli import at_least, run_script, say

_INNER = bytes.fromhex("4500001c000100004011000a0a0000010a000002") + bytes(8)
_KW = dict(src="198.51.100.2", dst="203.0.113.5")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="RSS in MB (2**20 octets), elapsed time in seconds")
    ap.add_argument("--cycles", type=at_least(0), default=1_000_000, metavar="N",
                    help="SA add/delete cycles (default 1000000)")
    ap.add_argument("--packets", type=at_least(0), default=10_000_000, metavar="N",
                    help="packets of steady decap, in batches of 50 000 (default 10000000)")
    ap.add_argument("--backend", choices=("fast", "reference"), default="fast", help="natt backend (default fast)")
    args = ap.parse_args(argv)
    key = bytes(range(20))
    nic = natt.Offload(backend=args.backend)
    say(f"baseline: {rss_mb():.1f} MB")
    step, t0, done = 100_000, time.time(), 0
    while done < args.cycles:
        n = min(step, args.cycles - done)
        hs = [nic.add_sa(0x1000 + i, key, "aes128gcm16", "in", **_KW) for i in range(n)]
        for h in hs:
            nic.delete_sa(h)
        del hs
        gc.collect()
        done += n
        say(f"SA add/delete: {done:>9,} cycles  RSS {rss_mb():7.1f} MB  {time.time() - t0:6.1f} s")

    tx = nic.add_sa(1, key, "aes128gcm16", "out", **_KW)
    nic.add_sa(1, key, "aes128gcm16", "in", replay_window=0, **_KW)
    batch = nic.encap([_INNER] * 50_000, tx).batch()
    res = nic.decap(batch)
    start, t0, sent = rss_mb(), time.time(), 0
    while sent < args.packets:
        nic.decap(batch, out=res)
        if not (res.status == int(natt.Status.OK)).all():
            raise SystemExit("steady decap: a packet did not decap OK")
        sent += len(batch)
        if sent % 2_000_000 < len(batch) or sent >= args.packets:
            say(f"decap: {sent:>11,} packets  RSS {rss_mb():7.1f} MB (start {start:.1f} MB)  "
                f"{time.time() - t0:6.1f} s")
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        say(f"after malloc_trim: {rss_mb():.1f} MB")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    run_script(main)
