"""Run by tests/test_rae_training.py under torchrun (2 CPU processes, gloo): trains the tiny RAE a few steps with the
authors' DINO discriminator on (a random tiny ViT backbone, frozen, beside DDP's trained heads) and writes, per rank, whether the decoders and discriminators are identical across ranks after every
step, the frozen encoder bit-identical to its initial weights, and the ranks' data different."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import write_dino_vit  # noqa: E402
from test_rae_training import PRESET, run_overrides  # noqa: E402

from latentae.data.train_stream import train_loader  # noqa: E402
from latentae.trainer.config import load_run_config  # noqa: E402
from latentae.trainer.loop import Run  # noqa: E402

out_dir, images, verdict_dir = sys.argv[1:4]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


dino = write_dino_vit(Path(verdict_dir) / f"dino-{os.environ['RANK']}")  # per rank: no race on one directory
run = Run(load_run_config(PRESET, run_overrides(out_dir, images, "loss.disc.start=0", "loss.disc.warmup_steps=0",
                                                "train.max_steps=3", "loss.disc.kind=dino",
                                                f"loss.disc.weights={dino}")))
acc, cfg = run.accelerator, run.cfg
encoder = flat(run.model.vae.encoder.parameters()).clone()
batches = iter(train_loader(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed, rank=acc.process_index,
                            world_size=acc.num_processes))
steps = []
for step in range(cfg.train.max_steps):
    before = flat(run.model.vae.decoder.parameters())
    run.train_step(batches, step)
    decoder = flat(run.model.vae.decoder.parameters())
    steps.append({"decoder_identical": same_on_all_ranks(decoder), "decoder_stepped": not torch.equal(decoder, before),
                  "discriminator_identical": same_on_all_ranks(flat(run.loss.discriminator.parameters())),
                  "encoder_unchanged": torch.equal(flat(run.model.vae.encoder.parameters()), encoder),
                  "different_data": not same_on_all_ranks(run.last_images[0][:, :, :4, :4].contiguous())})
Path(verdict_dir, f"rank{acc.process_index}.json").write_text(json.dumps({"world_size": acc.num_processes,
                                                                          "steps": steps}))
acc.wait_for_everyone()
