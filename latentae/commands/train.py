"""Train a KL autoencoder or VQ tokenizer from a YAML preset with key=value overrides.

Single process: `latentae train --config ...`. Several GPUs or nodes: the same arguments under
`accelerate launch [--num_processes N ...] train/train.py` (or torchrun); the code is the same.
"""
from __future__ import annotations

import argparse

HELP = "train a KL autoencoder or VQ tokenizer (run under `accelerate launch` or torchrun for several processes)"
EPILOG = """examples:
  latentae train --config configs/tiny-kl.yaml data.train=shards/train-{00000..00003}.tar train.max_steps=200
  accelerate launch --num_processes 8 train/train.py --config configs/sd-kl-f8.yaml \\
      output_dir=runs/kl data.train='/data/laion/{00000..09999}.tar' train.resume=auto
The config is saved as OUTPUT_DIR/config.yaml, and what it left to the run (the precision auto chose, ...) as
OUTPUT_DIR/resolved.yaml; checkpoints go to OUTPUT_DIR/checkpoints/step-N, TensorBoard logs to OUTPUT_DIR/logs,
and the final model (EMA weights when train.ema_decay is set) to OUTPUT_DIR/export in the diffusers format
(latentae's own where no diffusers class holds the model); train.export=best exports the weights of the validation
with the best train.export_metric instead.
A structured latent (DC-AE 1.5, model.structured_channels): each step encodes with one count drawn from
train.sample_channels (default: all), and each validation runs at every count of eval.channels (default: all),
logged as val/psnr@16, ... and their mean val/psnr@mean, which train.export=best ranks by: one export serves
every count.
Discriminator: loss.disc.kind=patchgan (LDM's, no weights) or dino (the RAE authors': a frozen DINO ViT-S/8,
loss.disc.weights=<hub id or directory>, `latentae fetch-weights --only dino-vits8`; loss.disc.head_kernel, cutout).
A fine-tune (train.init_from) takes its architecture from the model; model.noise_tau (RAE) may still be set."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/sd-kl-f8.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dot-list overrides, e.g. train.max_steps=1000 loss.perceptual_weight=0")


def run(args) -> int:
    import json

    from latentae.exporting import SIDE_FILE
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    run_ = Run(load_run_config(args.config, args.overrides))
    export_dir = run_.fit()
    side = export_dir / SIDE_FILE
    fmt = json.loads(side.read_text()).get("format", "?") if side.is_file() else "?"
    where = "latentae's own format (latentae.load opens it)" if fmt == "latentae" else f"diffusers {fmt}"
    run_.accelerator.print(f"done: step {run_.state.step}; model exported to {export_dir} ({where}); "
                           f"checkpoints in {run_.out / 'checkpoints'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """train/train.py: this command alone, with the launcher's script path as its program name."""
    import sys

    from latentae.config import ConfigError
    from latentae.errors import LatentaeError
    from latentae.threads import follow_free_cpus

    parser = argparse.ArgumentParser(prog="train/train.py", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    follow_free_cpus()
    try:
        return run(args)
    except (LatentaeError, ConfigError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
