"""``python -m palette.cli``: the ``palette`` command."""

import sys

from . import main

sys.exit(main())
