"""Instructions per ``Offload.decap`` call on a batch of one, counted by valgrind's callgrind.

    python -m benchmarks.call_instructions [--calls 20000] [--statement "nic.decap(pb, out=out)"]

The ratio run's fixed-cost row (one call on a one-packet batch, target ≤ 5 µs) is wall time, and
on this shared host wall time moves by 2× from one minute to the next: two builds timed an hour
apart cannot be compared. An instruction count can. This script runs a child Python under
``valgrind --tool=callgrind`` twice, once with ``--calls`` executions of the statement and once
with none (same set-up: imports, SA, packet), and prints the difference divided by ``--calls``.
The statement sees ``nic`` (an Offload with the SA installed), ``be`` (its backend), ``pb`` (a
PacketBatch of one 64-octet AES-128-GCM tunnel packet), ``out`` (a DecapResult already used once,
so that the calls are in steady state) and ``layout_slots``. Every call after the first decaps a
replayed packet (REPLAY), so the figure is the call's cost around the crypto, which is what a
batch of one adds. Needs ``valgrind`` (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from natt.cli import run_script, say

CHILD = """
import sys
from natt import DecapResult, PacketBatch
from natt._batch import _layout_slots as layout_slots
from natt._bench import build_workload
wl = build_workload("fast", "aes128gcm16", 64, 1, 1, 7)
pb = PacketBatch(wl.esp.data, wl.esp.offsets[:1], wl.esp.lengths[:1])
out = DecapResult()
nic = wl.receiver("fast")
be = nic._backend
nic.decap(pb, out=out)
exec(compile("for _ in range(" + sys.argv[1] + "): " + sys.argv[2], "statement", "exec"))
"""


def _child_env(pycache: str) -> dict[str, str]:
    """The children's environment: one BLAS thread and a fixed hash seed (fewer instructions that
    vary from run to run), and their own cache of compiled modules, ``pycache``, filled before
    the counted runs: a module compiled from source in one run and loaded compiled in the other
    (another process wrote its .pyc meanwhile, or none can be written) moved the difference by
    tens of millions of instructions, a negative count per call included."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def instructions(calls: int, statement: str, env: dict[str, str]) -> int:
    """Instructions callgrind counts for the child with ``calls`` executions of ``statement``."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(tmp, 'cg.out')}",
             sys.executable, "-c", CHILD, str(calls), statement],
            capture_output=True, text=True, cwd=tmp, env=env)
    m = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or m is None:
        raise SystemExit(f"call_instructions: the child failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000, help="executions of the statement (default 20000)")
    ap.add_argument("--statement", default="nic.decap(pb, out=out)",
                    help='what to count (default "nic.decap(pb, out=out)"; e.g. "out._prepare(pb, 0)" '
                         'or "be.decap(pb, out, None)")')
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error("--calls: must be at least 1")
    if shutil.which("valgrind") is None:
        raise SystemExit("call_instructions: needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as pycache:
        env = _child_env(pycache)
        # Outside valgrind: compiles every module the child imports into pycache.
        warm = subprocess.run([sys.executable, "-c", CHILD, "0", "pass"], capture_output=True, text=True,
                              cwd=pycache, env=env)
        if warm.returncode != 0:
            raise SystemExit(f"call_instructions: the child failed (exit {warm.returncode}):\n{warm.stderr[-2000:]}")
        base = instructions(0, args.statement, env)
        total = instructions(args.calls, args.statement, env)
    say(f"{args.statement}: {(total - base) / args.calls:.0f} instructions per execution "
        f"({args.calls} executions; an empty statement counts about 400, the loop's own)")


if __name__ == "__main__":
    run_script(main)
