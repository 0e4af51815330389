"""The Typer command-line interface: parsing, progress, messages and exit codes; no science here."""

import os

# Spinning OpenMP workers cost 10-60x on small shared machines; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
