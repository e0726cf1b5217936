"""``python -m slmops`` runs the CLI."""

from slmops.cli import main

main()
