"""One module per `latentae` subcommand (see latentae/cli.py)."""
