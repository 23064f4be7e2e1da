"""``python -m tokenreduce`` runs the command line."""

import sys

from tokenreduce.cli import main

sys.exit(main())
