"""``python -m manager_api.cli``: the ``modelgate`` CLI."""

import sys

from manager_api.cli import main

sys.exit(main())
