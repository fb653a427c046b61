"""natt.dask on a local cluster: 1 worker vs 2 workers, and the scheduling overhead per range.

    python benchmarks/bench_dask.py [--packets N] [--files F] [--sas S] [--chunk-size OCTETS]
                                    [--backend fast|reference] [--json PATH]

Builds a capture set (F classic pcap files, N NAT-T packets in all, S tunnel SAs of four suites
interleaved packet by packet, inner TCP/UDP/ICMP of up to 1400 octets; sealed by natt's own
encap), then decaps it three ways in one run:

* ``single``: one process, ``natt.cli.decap_capture`` over the files in order (the reference);
* ``dask-1`` / ``dask-2``: :func:`natt.dask.decap_captures` on a ``LocalCluster`` of 1 and 2
  worker processes with one thread each.

For each run it reports wall time, throughput, CPU seconds (Dask: workers and scheduler; a
figure that contention from other processes barely moves), the speed-up of 2 workers over 1,
the overhead per range -- worker time not spent inside a task, ``(wall x workers - sum of task
compute times) / ranges``: scheduling, transfers between workers, idle time waiting on the lane
chains -- and the tasks in flight on average (sum of task compute times / wall; at most the
number of workers). Outputs are checked equal to the single-process outputs. The machine's load
average is printed too: on a shared machine, read the figures with it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import natt
from natt import keys as keyfile
from natt import pcap, traffic
from natt.cli import CaptureStats, at_least, decap_capture, run_script, say

SUITES = ("aes128gcm16", "aes256-sha256", "chacha20poly1305", "aes128-sha1")


def make_captures(directory: str, n: int, files: int, n_sas: int, seed: int = 1
                  ) -> tuple[list[str], list[keyfile.SaSpec]]:
    """Write ``files`` captures holding ``n`` packets of ``n_sas`` interleaved SAs; return the
    paths and the inbound SA set."""
    rng = np.random.default_rng(seed)
    inner = natt.PacketBatch.from_packets(traffic.inner_traffic(seed, 4096))
    specs = []
    per_sa = []
    with natt.Offload() as tx:
        for k in range(n_sas):
            suite = SUITES[k % len(SUITES)]
            pair = traffic.make_sa_pair(tx, natt.Offload(), suite=suite, spi=0x3000 + k, seed=seed + k,
                                        src=f"198.51.100.{k % 250 + 1}", dst="203.0.113.5")
            specs.append(keyfile.SaSpec(spi=pair.spi, suite=suite, key=pair.key, src=pair.src, dst=pair.dst))
            count = n // n_sas + (k < n % n_sas)
            out: list[bytes] = []
            while len(out) < count:
                res = pair.encap(inner)
                out.extend(res[i] for i in range(min(len(res), count - len(out))))
            per_sa.append(out)
    # Interleave the SAs in a random but fixed order, as traffic of many tunnels arrives.
    order = rng.permutation(np.repeat(np.arange(n_sas), [len(p) for p in per_sa]))
    cursor = [0] * n_sas
    packets = []
    for k in order.tolist():
        packets.append(per_sa[k][cursor[k]])
        cursor[k] += 1
    paths = []
    per_file = -(-n // files)
    for f in range(files):
        path = os.path.join(directory, f"natt-{f:02d}.pcap")
        pcap.write_datagrams(path, packets[f * per_file:(f + 1) * per_file], fmt="pcap")
        paths.append(path)
    return paths, specs


def single_process(paths: list[str], specs: list[keyfile.SaSpec], out_dir: str, backend: str
                   ) -> tuple[float, float]:
    """Wall and CPU seconds of the single-process reference run."""
    os.makedirs(out_dir, exist_ok=True)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with natt.Offload(backend=backend, max_sas=len(specs)) as nic:
        handles = keyfile.install(nic, specs, direction="in")
        for p in paths:
            with pcap.PcapReader(p) as r, pcap.PcapWriter.like(r, os.path.join(out_dir, os.path.basename(p))) as w:
                decap_capture(nic, handles, [s.label() for s in specs], r, w)
    return time.perf_counter() - t0, time.process_time() - c0


def _cpu_seconds(dask_scheduler=None) -> float:
    """User + system CPU seconds of the calling process (a worker, or the scheduler)."""
    t = os.times()
    return t.user + t.system


def dask_run(paths: list[str], specs: list[keyfile.SaSpec], out_dir: str, workers: int, chunk_size: int,
             backend: str) -> dict:
    import distributed
    from natt.dask import decap_captures

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        # Warm-up: imports and the first Offload on every worker are not part of the figure.
        decap_captures(paths[:1], specs, out_dir + "-warm", client, chunk_size=chunk_size, progress=False,
                       backend=backend)
        cpu0 = sum(client.run(_cpu_seconds).values()) + client.run_on_scheduler(_cpu_seconds)
        with distributed.get_task_stream(client) as ts:
            t0 = time.perf_counter()
            stats: CaptureStats = decap_captures(paths, specs, out_dir, client, chunk_size=chunk_size,
                                                 progress=False, backend=backend)
            wall = time.perf_counter() - t0
        cpu = sum(client.run(_cpu_seconds).values()) + client.run_on_scheduler(_cpu_seconds) - cpu0
    compute = collections.Counter()
    tasks = collections.Counter()
    for e in ts.data:
        key = e["key"]
        stage = (key[0] if isinstance(key, tuple) else str(key)).split("-")[1]
        for ss in e["startstops"]:
            if ss["action"] == "compute":
                compute[stage] += ss["stop"] - ss["start"]
                tasks[stage] += 1
    ranges = tasks["split"]
    busy = sum(compute.values())
    return {"workers": workers, "wall_s": wall, "cpu_s": cpu, "ranges": ranges, "tasks": sum(tasks.values()),
            "compute_s": dict(compute), "frames": stats.frames, "concurrency": busy / wall,
            "overhead_per_range_ms": 1000 * (wall * workers - busy) / max(ranges, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="output: wall and CPU time in seconds, MB/s of capture read per wall\n"
                                        "second, the overhead per range in ms; the speed-up is dask-1's wall\n"
                                        "time over dask-2's (above 1: two workers are faster)")
    ap.add_argument("--packets", type=at_least(1), default=200_000, metavar="N",
                    help="NAT-T packets in all the files (default 200000)")
    ap.add_argument("--files", type=at_least(1), default=4, metavar="F", help="capture files (default 4)")
    ap.add_argument("--sas", type=at_least(1), default=16, metavar="S", help="tunnel SAs (default 16)")
    ap.add_argument("--chunk-size", type=at_least(1), default=2 << 20, metavar="OCTETS",
                    help="octets of capture per range (default 2097152)")
    ap.add_argument("--backend", choices=("fast", "reference"), default="fast",
                    help="natt backend (default fast)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="natt-bench-dask-")
    try:
        t0 = time.perf_counter()
        paths, specs = make_captures(os.path.join(tmp), args.packets, args.files, args.sas)
        total = sum(os.path.getsize(p) for p in paths)
        say(f"capture set: {args.files} files, {args.packets} packets, {total / 1e6:.1f} MB, "
            f"{args.sas} SAs (built in {time.perf_counter() - t0:.1f} s); chunk {args.chunk_size} octets; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        single, single_cpu = single_process(paths, specs, os.path.join(tmp, "single"), args.backend)
        runs = [dask_run(paths, specs, os.path.join(tmp, f"dask{w}"), w, args.chunk_size, args.backend)
                for w in (1, 2)]
        for r in runs:
            for p in paths:
                name = os.path.basename(p)
                a = open(os.path.join(tmp, "single", name), "rb").read()
                b = open(os.path.join(tmp, f"dask{r['workers']}", name), "rb").read()
                if a != b:
                    print(f"output {name} of dask-{r['workers']} differs from the single-process output",
                          file=sys.stderr)
                    return 1
        say(f"{'run':<8} {'wall s':>8} {'MB/s':>8} {'CPU s':>8} {'ranges':>7} {'tasks':>6} "
            f"{'overhead/range ms':>18} {'tasks in flight':>16}")
        say(f"{'single':<8} {single:8.2f} {total / 1e6 / single:8.1f} {single_cpu:8.2f}")
        for r in runs:
            say(f"dask-{r['workers']:<3} {r['wall_s']:8.2f} {total / 1e6 / r['wall_s']:8.1f} {r['cpu_s']:8.2f} "
                f"{r['ranges']:7d} {r['tasks']:6d} {r['overhead_per_range_ms']:18.1f} {r['concurrency']:16.2f}")
        ratio = runs[0]["wall_s"] / runs[1]["wall_s"]
        say(f"speed-up of 2 workers over 1: {ratio:.2f}x; load average now {os.getloadavg()[0]:.1f}")
        for r in runs:
            say(f"  dask-{r['workers']} task compute seconds by stage: "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["compute_s"].items(), key=lambda kv: -kv[1])))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"packets": args.packets, "files": args.files, "sas": args.sas, "octets": total,
                           "chunk_size": args.chunk_size, "single_s": single, "single_cpu_s": single_cpu,
                           "runs": runs,
                           "speedup_2_over_1": ratio, "cpus": os.cpu_count(),
                           "loadavg": os.getloadavg()}, f, indent=2)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
