"""Command-line options the decap benchmark scripts share (``bench_active_sas``,
``bench_batch_size``, ``bench_replay_window``, ``bench_threads``): one definition of each, so
that their bounds, defaults and help read the same everywhere."""

from __future__ import annotations

import argparse
from typing import Callable, Optional

from natt.cli import at_least


def add_workload(ap: argparse.ArgumentParser, *, sas: bool = False, reps: Optional[int] = None) -> None:
    """``--size`` and ``--packets`` (the batch every round decaps), ``--sas`` (inbound SAs
    installed) when ``sas``, and ``--reps`` with default ``reps`` when given."""
    if sas:
        ap.add_argument("--sas", type=at_least(1), default=100_000, help="inbound SAs installed (default 100000)")
    ap.add_argument("--size", type=at_least(28, 65000), default=64,
                    help="inner packet size in octets, 28..65000 (default 64)")
    ap.add_argument("--packets", type=at_least(1), default=100_000, help="packets per batch (default 100000)")
    if reps is not None:
        ap.add_argument("--reps", type=at_least(1), default=reps, help=f"interleaved repetitions (default {reps})")


def counts(what: str) -> Callable[[str], list[int]]:
    """An argparse type: a comma-separated list of whole numbers of 1 or more (``what`` names
    them in the message for a bad list)."""
    def parse(text: str) -> list[int]:
        try:
            ks = [int(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {what}: {text!r}") from None
        if not ks or min(ks) < 1:
            raise argparse.ArgumentTypeError(f"{what} must be 1 or more: {text!r}")
        return ks
    return parse
