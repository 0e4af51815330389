"""`python -m mitosis_cli` runs the command-line tool."""

import sys

from mitosis_cli.cli.app import main

sys.exit(main())
