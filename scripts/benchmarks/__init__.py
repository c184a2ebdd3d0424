"""The benchmarks behind `python scripts/benchmark.py <name>`: each subcommand is a module (or package) here with
a docstring (its help), `add_arguments(p)` and `run(args)`; the other modules are what they share (the training
loops both sides of a comparison run, paths)."""
