"""``python -m coworker``: the ``coworker`` command."""

import sys

from coworker.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
