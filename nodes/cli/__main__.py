"""``python -m nodes.cli``: the same as the installed ``obus`` command."""

import sys

from nodes.cli.main import main

sys.exit(main())
