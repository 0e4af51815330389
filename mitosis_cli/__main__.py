"""`python -m mitosis_cli` runs the command-line tool."""

import sys

from mitosis_cli.runtime import stop_before_start

stop_before_start()  # before the libraries load: a SIGTERM or Ctrl-C now exits cleanly (nothing is written yet)

from mitosis_cli.cli.app import main  # noqa: E402 - after the signal handlers, on purpose

sys.exit(main())
