"""``python -m jnet2net.cli``: the command-line interface (same as ``python -m jnet2net``)."""

import sys

from jnet2net.cli import main

sys.exit(main())
