"""``python -m petlbench.cli``: the ``bench`` command."""

import sys

from petlbench.cli import main

sys.exit(main())
