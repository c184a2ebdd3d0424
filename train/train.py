"""Entry point for `accelerate launch train/train.py --config configs/<preset>.yaml [key=value ...]`."""
import sys

from latentae.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
