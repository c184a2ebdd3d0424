"""`latentae` console command. Each subcommand lives in `latentae/commands/<name>.py` and defines:

    HELP = "one line for `latentae --help`"
    def add_arguments(parser): ...
    def run(args) -> int | None: ...

Modules are discovered, so adding a command touches no other file. Errors a user can fix (LatentaeError and
its subclasses, ConfigError) print one line and exit 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from latentae import commands
from latentae.config import ConfigError
from latentae.errors import LatentaeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentae",
        description="Train, evaluate and export KL autoencoders and VQ tokenizers in the diffusers format.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"latentae.commands.{info.name}")
        name = info.name.replace("_", "-")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__ or module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from latentae.threads import follow_free_cpus

    follow_free_cpus()
    try:
        return int(args._run(args) or 0)
    except (LatentaeError, ConfigError) as e:
        print(f"latentae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
