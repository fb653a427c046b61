#!/usr/bin/env bash
# The README's test command (CI runs exactly this after installing).
set -euo pipefail
# `pytest`, not `python -m pytest`: the latter puts the checkout on sys.path and would
# shadow the installed package (whose compiled extension the checkout lacks).
pytest
