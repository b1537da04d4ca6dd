"""``python -m meanode``: the command line (:mod:`meanode.cli`)."""

import sys

from .cli import main

sys.exit(main())
