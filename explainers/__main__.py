"""``python -m explainers``: the command line (see :mod:`explainers.cli`)."""

import sys

from .cli import main

sys.exit(main())
