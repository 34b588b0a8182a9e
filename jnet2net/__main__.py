"""``python -m jnet2net``: the command-line interface (same as the ``jnet2net`` script)."""

import sys

from jnet2net.cli import main

sys.exit(main())
