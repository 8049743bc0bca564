"""``python -m cuttree.cli``: the ``cuttree`` command."""

import sys

from cuttree.cli.main import main

sys.exit(main())
