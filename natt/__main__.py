"""``python -m natt``: the ``natt`` command line (:func:`natt._entry.main`, as the console script)."""

import sys

from ._entry import main

sys.exit(main())
