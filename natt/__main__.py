"""``python -m natt``: the ``natt`` command line (:func:`natt.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
