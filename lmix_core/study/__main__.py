"""``python -m lmix_core.study``: see :mod:`lmix_core.study.command`."""

from __future__ import annotations

import sys

from lmix_core.study.command import main

if __name__ == "__main__":
    sys.exit(main())
