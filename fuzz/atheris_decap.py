#!/usr/bin/env python3
"""Coverage-guided decap fuzzing with atheris (libFuzzer for Python). Optional: ``pip install atheris``.

    python fuzz/atheris_decap.py --make-seeds /tmp/natt-seeds
    python fuzz/atheris_decap.py /tmp/natt-corpus /tmp/natt-seeds -max_total_time=600

An input is one octet choosing a case of fuzz/mutate.py's corpus (its inbound SA is installed on
fresh instances) followed by the packet. The packet is decapped twice in one batch (so the replay
path runs too) on the fast and the reference backend; an invariant violation
(mutate.check_result) or any difference between the two raises, and libFuzzer saves the input.

Coverage comes from natt's Python code (the reference data path and the control plane are
instrumented); the Cython kernels run but are not instrumented, so they profit from the inputs the
reference path's coverage discovers. For C-level coverage, build the extension with
``-fsanitize=fuzzer-no-link`` (not wired into setup.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
with atheris.instrument_imports(include=["natt"]):
    import natt
    import natt._reference  # noqa: F401  (instrumented before first use)
import mutate  # noqa: E402

CASES = mutate.build_corpus(seed=1, packets_per_case=2)
BACKENDS = [b for b in ("fast", "reference") if b in natt.backends()]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    case = CASES[data[0] % len(CASES)]
    packet = data[1:]
    batch = natt.PacketBatch.from_packets([packet, packet])
    results = {}
    for name in BACKENDS:
        with natt.Offload(backend=name) as nic:
            handle = mutate.install(nic, case)
            res = results[name] = nic.decap(batch)
            problems = mutate.check_result(batch, res, {handle})
            if problems:
                raise AssertionError(f"{name}, case {case.name}: {problems}")
    if len(results) == 2:
        diffs = mutate.compare_results(results["fast"], results["reference"])
        if diffs:
            raise AssertionError(f"fast vs reference, case {case.name}: {diffs}")


def make_seeds(directory: str) -> None:
    """Write every valid corpus packet (and its second, replayable sibling) as a seed input."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(CASES):
        for j, p in enumerate(case.packets):
            (d / f"{i:03d}-{j}").write_bytes(bytes([i]) + p)
    print(f"wrote {sum(len(c.packets) for c in CASES)} seeds to {d}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        make_seeds(sys.argv[2])
        sys.exit(0)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
