"""``python -m studies.seed_papers``: see :mod:`studies.seed_papers.command`."""

from __future__ import annotations

import sys

from studies.seed_papers.command import main

if __name__ == "__main__":
    sys.exit(main())
