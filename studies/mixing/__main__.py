"""``python -m studies.mixing``: see :mod:`studies.mixing.command`."""

from __future__ import annotations

import sys

from studies.mixing.command import main

if __name__ == "__main__":
    sys.exit(main())
