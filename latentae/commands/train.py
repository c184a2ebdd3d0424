"""Train a KL autoencoder or VQ tokenizer from a YAML preset with key=value overrides.

Single process: `latentae train --config ...`. Several GPUs or nodes: the same arguments under
`accelerate launch [--num_processes N ...] train/train.py` (or torchrun); the code is the same.
"""
from latentae.trainer.cli import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
