"""``python -m cryopose`` runs the command line."""

import sys

from cryopose.cli.main import main

sys.exit(main())
