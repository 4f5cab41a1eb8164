"""Entry point of ``python -m candle``."""

import sys

from candle.cli import main

if __name__ == "__main__":
    sys.exit(main())
