import sys

from lmix_core.cli import main

sys.exit(main())
