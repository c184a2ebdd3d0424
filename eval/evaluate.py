"""`python eval/evaluate.py ARGS` = `latentae eval ARGS` (see `latentae eval --help`); a script path for
`torchrun --nproc_per_node N eval/evaluate.py ...` and `accelerate launch eval/evaluate.py ...`."""
import sys

from latentae.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
