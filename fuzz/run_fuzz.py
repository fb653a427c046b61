#!/usr/bin/env python3
"""Long-running decap fuzzer: millions of mutated ESP-in-UDP packets through the fast path.

    python fuzz/run_fuzz.py --packets 10000000            # the >= 10 M packet run
    python fuzz/run_fuzz.py --seconds 120 --isolate 64    # what ci/fuzz-sanitized.sh runs under ASan
    python fuzz/run_fuzz.py --replay /tmp/natt-fuzz/last-batch.npz   # re-run a saved batch

How it works (fuzz/mutate.py holds the corpus and the mutations):

* A pool of structure-aware mutants (truncations, length-field edits, IHL and
  options, fragments, marker/keepalive confusion, SPI/sequence edits, re-signed
  trailer edits on NULL suites, bit flips) of valid packets of every suite is
  kept and partly refreshed every batch; each batch samples the pool, lays the
  packets out with junk gaps (the last one flush with the end of the buffer),
  and adds cheap vectorised byte flips and truncations on top.
* Every batch is decapped on the fast backend and checked with vectorised
  invariants (valid status; input unchanged for every status but OK/DUMMY;
  DUMMY empty; OK shorter than its input; sa/seq/next_header only where the
  decision reached them). ``--isolate K`` also decaps K packets each in its own
  exactly-sized buffer, so that an over-read runs off the allocation (ASan).
* Every ``--cross-check``-th batch is decapped on fresh fast and reference
  instances and compared packet by packet (status, output, seq, next header, SA).

Findings (exceptions, invariant violations, mismatches) are written to
``--findings`` as .npz batches plus a line in findings.txt; the exit status is
1 if there were any. A crash (signal) leaves the batch being decapped in
``last-batch.npz`` there (``--save-last``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate  # noqa: E402

import natt  # noqa: E402
from natt import Status  # noqa: E402

_UNCHANGED = np.array([s not in (Status.OK, Status.DUMMY, Status.SEQ_OVERFLOW) for s in Status])
_NO_SA = np.array([s in (Status.NOT_ESP, Status.IKE, Status.KEEPALIVE, Status.FRAGMENT, Status.NO_SA)
                   for s in Status])
_EARLY = np.array([s in (Status.NOT_ESP, Status.IKE, Status.KEEPALIVE, Status.FRAGMENT) for s in Status])
_NH = np.array([s in (Status.OK, Status.DUMMY, Status.PROTOCOL, Status.MALFORMED) for s in Status])


def _first_changed(batch: natt.PacketBatch, res, idx: np.ndarray) -> int:
    """First packet of ``idx`` whose output octets differ from its input (-1: none).

    Lengths are already known equal; one memcmp per packet beats any numpy gather here.
    """
    bd, bo, rd, ro = batch.data, batch.offsets, res.data, res.offsets
    for i, n in zip(idx.tolist(), batch.lengths[idx].tolist()):
        b, r = int(bo[i]), int(ro[i])
        if bd[b: b + n].tobytes() != rd[r: r + n].tobytes():
            return i
    return -1


def fast_invariants(batch: natt.PacketBatch, res, handles: np.ndarray) -> list[str]:
    """The invariants of mutate.check_result, vectorised over the batch."""
    st = res.status
    if len(res) != len(batch):
        return [f"{len(res)} results for {len(batch)} packets"]
    bad = np.nonzero(st >= len(Status))[0]
    if bad.size:
        return [f"packet {int(bad[0])}: status {int(st[bad[0]])} is not a natt.Status"]
    problems = []
    unchanged = _UNCHANGED[st]
    if np.any(res.lengths[unchanged] != batch.lengths[unchanged]):
        i = int(np.nonzero(unchanged & (res.lengths != batch.lengths))[0][0])
        problems.append(f"packet {i} ({Status(st[i]).name}): output length {int(res.lengths[i])}, "
                        f"input {int(batch.lengths[i])}")
    else:
        i = _first_changed(batch, res, np.nonzero(unchanged)[0])
        if i >= 0:
            problems.append(f"packet {i} ({Status(st[i]).name}): output differs from the input")
    checks = (
        ((st == Status.DUMMY) & (res.lengths != 0), "DUMMY with output"),
        ((st == Status.OK) & (res.lengths >= batch.lengths), "OK output not shorter than input"),
        (st == Status.SEQ_OVERFLOW, "SEQ_OVERFLOW from decap"),
        (_NO_SA[st] & (res.sa != 0), "sa set without an SA"),
        ((res.sa != 0) & ~np.isin(res.sa, handles), "sa is not an installed SA"),
        (~_NO_SA[st] & (st != Status.MALFORMED) & (st != Status.ERROR) & (res.sa == 0), "no sa"),
        (_EARLY[st] & (res.seq != 0), "seq set before the ESP header"),
        (~_NH[st] & (res.next_header != 0), "next_header set before decryption"),
    )
    for mask, what in checks:
        idx = np.nonzero(mask)[0]
        if idx.size:
            i = int(idx[0])
            problems.append(f"packet {i} ({Status(st[i]).name}): {what} "
                            f"(sa={int(res.sa[i])} seq={int(res.seq[i])} nh={int(res.next_header[i])})")
    return problems


class Fuzzer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.np_rng = np.random.default_rng(args.seed)
        t = time.perf_counter()
        self.cases = mutate.build_corpus(seed=args.seed, packets_per_case=4)
        self.pool: list[bytes] = []
        self.pool_case: list[int] = []
        while len(self.pool) < args.pool:
            self._add_mutant()
        self.findings_dir = Path(args.findings)
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.findings = 0
        self.nic = None
        self.handles = np.zeros(0, np.int64)
        print(f"corpus: {len(self.cases)} cases ({sum(len(c.packets) for c in self.cases)} valid packets), "
              f"pool {len(self.pool)} mutants, {time.perf_counter() - t:.1f} s", flush=True)

    # ---- inputs

    def _add_mutant(self, slot: int = -1) -> None:
        rng = self.rng
        ci = rng.randrange(len(self.cases))
        c = self.cases[ci]
        r = rng.random()
        if r < 0.08:
            p = rng.choice(c.packets)                                  # valid as is
        elif r < 0.12:
            p = bytes(rng.getrandbits(8) for _ in range(rng.randrange(80)))   # junk
        else:
            p = mutate.mutate(c, rng.choice(c.packets), mutate.random_mutations(rng, 4))
        if slot < 0:
            self.pool.append(p)
            self.pool_case.append(ci)
        else:
            self.pool[slot] = p

    def next_batch(self) -> natt.PacketBatch:
        a, nr = self.args, self.np_rng
        for _ in range(a.refresh):
            self._add_mutant(self.rng.randrange(len(self.pool)))
        picks = nr.integers(0, len(self.pool), a.batch)
        packets = [self.pool[i] for i in picks]
        batch = mutate.layout_batch(packets, nr.integers(0, 9, 7).tolist(), fill=int(nr.integers(256)))
        # Cheap extra havoc on top of the structure-aware mutants: byte flips and truncations.
        n = len(batch)
        flip = np.nonzero((nr.random(n) < 0.15) & (batch.lengths > 0))[0]
        if flip.size:
            pos = batch.offsets[flip] + nr.integers(0, 1 << 30, flip.size) % batch.lengths[flip]
            batch.data[pos] ^= nr.integers(1, 256, flip.size, dtype=np.uint8)
        cut = np.nonzero((nr.random(n) < 0.03) & (batch.lengths > 0))[0]
        if cut.size:
            batch.lengths[cut] = nr.integers(0, 1 << 30, cut.size) % batch.lengths[cut]
        return natt.PacketBatch(batch.data, batch.offsets, batch.lengths)    # validate again

    # ---- SAs

    def _install(self, nic: natt.Offload) -> np.ndarray:
        # Half the non-ESN SAs run without anti-replay, so that packets met again (the pool
        # repeats) still reach decryption and the trailer checks instead of stopping at REPLAY.
        return np.array([mutate.install(nic, c, replay_window=0 if (not c.esn and i % 2) else 64)
                         for i, c in enumerate(self.cases)], np.int64)

    def fresh(self, backend: str) -> tuple[natt.Offload, np.ndarray]:
        nic = natt.Offload(backend=backend)
        return nic, self._install(nic)

    # ---- findings

    def finding(self, kind: str, index: int, batch: natt.PacketBatch, detail: str) -> None:
        self.findings += 1
        path = self.findings_dir / f"finding-{self.args.seed}-{index}-{self.findings}.npz"
        np.savez(path, data=batch.data, offsets=batch.offsets, lengths=batch.lengths)
        line = f"[{kind}] seed={self.args.seed} batch={index}: {detail} -> {path}"
        print("FINDING " + line, flush=True)
        with open(self.findings_dir / "findings.txt", "a") as f:
            f.write(line + "\n")

    # ---- main loop

    def run(self) -> int:
        a = self.args
        t0 = time.perf_counter()
        decap_time = 0.0
        done = 0
        index = 0
        totals = np.zeros(len(Status), np.int64)
        last_report = t0
        last_save = self.findings_dir / "last-batch.npz"
        out = natt.DecapResult()
        while done < a.packets and (a.seconds is None or time.perf_counter() - t0 < a.seconds):
            batch = self.next_batch()
            if a.save_last:
                np.savez(last_save, data=batch.data, offsets=batch.offsets, lengths=batch.lengths)
            if self.nic is None or index % a.renew == 0:
                if self.nic is not None:
                    self.nic.close()
                self.nic, self.handles = self.fresh(a.backend)
            try:
                t = time.perf_counter()
                res = self.nic.decap(batch, threads=a.threads, out=out)
                decap_time += time.perf_counter() - t
            except Exception:      # the data path must never raise
                self.finding("exception", index, batch, traceback.format_exc(limit=3).strip().replace("\n", " | "))
                index += 1
                continue
            totals += np.bincount(res.status, minlength=len(Status))[: len(Status)]
            for problem in fast_invariants(batch, res, self.handles):
                self.finding("invariant", index, batch, problem)
            if a.isolate:
                self.isolated(batch, index)
            if a.cross_check and index % a.cross_check == 0:
                self.cross_check(batch, index)
            done += len(batch)
            index += 1
            now = time.perf_counter()
            if now - last_report >= a.report or done >= a.packets:
                last_report = now
                hist = " ".join(f"{Status(s).name}={int(totals[s])}" for s in range(len(Status)) if totals[s])
                print(f"{done:>11,} packets  {done / (now - t0):>9,.0f} pkt/s overall  "
                      f"{done / max(decap_time, 1e-9):>10,.0f} pkt/s in decap  findings={self.findings}  "
                      f"[{hist}]", flush=True)
        elapsed = time.perf_counter() - t0
        print(f"done: {done:,} packets in {index:,} batches, {elapsed:.1f} s "
              f"({done / max(elapsed, 1e-9):,.0f} pkt/s overall, {done / max(decap_time, 1e-9):,.0f} pkt/s in decap), "
              f"{self.findings} finding(s)", flush=True)
        if self.nic is not None:
            self.nic.close()
        return 1 if self.findings else 0

    def isolated(self, batch: natt.PacketBatch, index: int) -> None:
        """Decap a few packets each alone in an exactly-sized buffer (ASan sees any over-read)."""
        nic, handles = self.nic, self.handles
        for i in self.np_rng.integers(0, len(batch), min(self.args.isolate, len(batch))):
            p = batch[int(i)]
            data = np.empty(len(p), np.uint8)
            data[:] = np.frombuffer(p, np.uint8)
            one = natt.PacketBatch(data, np.zeros(1, np.int64), np.array([len(p)], np.int64))
            try:
                res = nic.decap(one)
            except Exception:
                self.finding("exception", index, one, traceback.format_exc(limit=3).strip().replace("\n", " | "))
                continue
            for problem in fast_invariants(one, res, handles):
                self.finding("invariant/isolated", index, one, problem)

    def cross_check(self, batch: natt.PacketBatch, index: int) -> None:
        n = min(len(batch), self.args.cross_check_size)
        sub = natt.PacketBatch(batch.data, batch.offsets[:n].copy(), batch.lengths[:n].copy())
        results = {}
        for name in (self.args.backend, "reference"):
            nic, handles = self.fresh(name)
            with nic:
                try:
                    results[name] = nic.decap(sub, threads=self.args.threads if name != "reference" else None)
                except Exception:
                    self.finding("exception", index, sub, f"{name}: " + traceback.format_exc(limit=3)
                                 .strip().replace("\n", " | "))
                    return
                for problem in mutate.check_result(sub, results[name], set(handles.tolist())):
                    self.finding(f"invariant/{name}", index, sub, problem)
        for diff in mutate.compare_results(results[self.args.backend], results["reference"]):
            self.finding("mismatch", index, sub, f"{self.args.backend} vs reference: {diff}")


def replay(args: argparse.Namespace) -> int:
    """Decap a saved batch on the backend and the reference and report what differs."""
    f = np.load(args.replay)
    batch = natt.PacketBatch(f["data"], f["offsets"], f["lengths"])
    fz = Fuzzer.__new__(Fuzzer)
    fz.args, fz.cases = args, mutate.build_corpus(seed=args.seed, packets_per_case=4)
    results = {}
    for name in (args.backend, "reference"):
        nic, handles = fz.fresh(name)
        with nic:
            results[name] = nic.decap(batch, threads=args.threads if name != "reference" else None)
            print(f"{name}: {results[name].counts()}")
            for problem in mutate.check_result(batch, results[name], set(handles.tolist())):
                print(f"  invariant: {problem}")
    diffs = mutate.compare_results(results[args.backend], results["reference"], limit=20)
    for d in diffs:
        print(f"  mismatch: {d}")
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=10_000_000, help="stop after this many packets")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this much time")
    ap.add_argument("--batch", type=int, default=8192, help="packets per decap call")
    ap.add_argument("--pool", type=int, default=8192, help="structure-aware mutants kept")
    ap.add_argument("--refresh", type=int, default=256, help="mutants replaced per batch")
    ap.add_argument("--renew", type=int, default=16, help="fresh Offload (replay state) every N batches")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("NATT_FUZZ_SEED", "1")))
    ap.add_argument("--backend", default="fast", help="backend under test (default fast)")
    ap.add_argument("--threads", type=int, default=None, help="threads= for the backend under test")
    ap.add_argument("--cross-check", type=int, default=20, help="compare with the reference every N batches (0: never)")
    ap.add_argument("--cross-check-size", type=int, default=2048, help="packets compared per cross-check")
    ap.add_argument("--isolate", type=int, default=0, help="packets per batch also decapped in their own buffer")
    ap.add_argument("--findings", default=os.environ.get("NATT_FUZZ_FINDINGS", "/tmp/natt-fuzz"))
    ap.add_argument("--save-last", action="store_true", help="write each batch to last-batch.npz before decap")
    ap.add_argument("--report", type=float, default=5.0, help="seconds between progress lines")
    ap.add_argument("--replay", default=None, help="decap a saved .npz batch on the backend and the reference")
    args = ap.parse_args(argv)
    if args.backend not in natt.backends():
        ap.error(f"backend {args.backend!r} is not available: {natt.backends()}")
    if args.replay:
        return replay(args)
    return Fuzzer(args).run()


if __name__ == "__main__":
    sys.exit(main())
