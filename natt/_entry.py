"""The ``natt`` command's entry point (pyproject.toml [project.scripts], ``python -m natt``).

natt.cli imports numpy, the extension and natt's I/O modules, most of the command's startup.
Imported here, inside :func:`main`, a Ctrl-C during that startup ends the command as one during
a command does: a line on stderr and status 130, not a traceback. This module and
natt/__init__.py import nothing heavy, so what comes before ``main`` runs is the interpreter's
own start.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

#: Exit status of a command Ctrl-C ended: 128 + SIGINT, what a shell reports for one.
INTERRUPTED = 130


def interrupted(command: Optional[str] = None) -> int:
    """Say on stderr that Ctrl-C stopped natt (in ``command``, once it is known); the exit status."""
    # Before natt.cli.main has put /dev/null in place of a closed stderr (2>&-), sys.stderr is
    # None, and print(file=None) would write to stdout, which may be the capture.
    if sys.stderr is not None:
        print(f"natt {command}: interrupted" if command else "natt: interrupted", file=sys.stderr)
    return INTERRUPTED


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``natt`` (:func:`natt.cli.main`) with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    try:
        from .cli import main as run
        # A Ctrl-C that reaches here came before the command started (argument parsing) or
        # while natt.cli was importing: the command's own ones end inside run().
        return run(argv)
    except KeyboardInterrupt:
        return interrupted()
