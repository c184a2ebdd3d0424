"""Benchmarks: `python scripts/benchmark.py <name> [options]`.

Each subcommand lives in `scripts/benchmarks/<name>.py` (or a package of that name), with a module docstring (its
help), `add_arguments(p)` and `run(args)`; adding one touches no other file. `python scripts/benchmark.py <name>
--help` lists options.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def subcommands() -> dict:
    """name -> module of every benchmark in scripts/benchmarks (the modules that define add_arguments and run)."""
    import benchmarks

    found = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"benchmarks.{info.name}")
        if hasattr(module, "add_arguments") and hasattr(module, "run"):
            found[info.name] = module
    return found


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", metavar="NAME", required=True)
    for name, module in subcommands().items():
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
