"""``python -m bridge.cli``: the ``callbridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
