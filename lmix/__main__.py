"""``python -m lmix`` (also under ``torchrun ... -m lmix run RECIPE``)."""

import sys

from lmix_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
