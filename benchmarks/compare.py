"""The ratio benchmark: ``python -m benchmarks.compare [--quick] [--json out.json]``.

The implementation lives in :mod:`natt._bench` so that an installed natt can
run the same thing as ``natt bench``; this module is the checkout's entry
point. See BENCHMARKS.md for what it measures and the figures.
"""

import sys

from natt._bench import main
from natt.cli import run_script

if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:], prog="python -m benchmarks.compare"))
