"""``python -m lowbit``: the ``lowbit`` command line (``lowbit.cli``), for environments where
the console script is not on PATH."""

import sys

from lowbit.cli import main

if __name__ == "__main__":
    sys.exit(main())
