"""Run by tests/test_eval_max_images.py under torchrun (CPU processes, gloo), or imported for one process:
evaluates each case of CASES through eval_loader + evaluate(max_images=...) and writes what rank 0 got (keys,
per-image PSNR, image and skip counts) as JSON."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from latentae.data import DataConfig, eval_loader
from latentae.evaluation import evaluate
from latentae.models import KLAutoencoder

# name -> (source inside the data folder, max_images); see test_eval_max_images.write_data
CASES = {"below one shard": ("one.tar", 7), "uneven shards": ("part-{0..2}.tar", 9),
         "uneven shards, all": ("part-{0..2}.tar", None)}


def run(data: Path) -> dict:
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(0)  # the same weights in every process
    model = KLAutoencoder(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4)
    results = {}
    for name, (source, max_images) in CASES.items():
        loader = eval_loader(DataConfig(num_workers=0), batch_size=3, rank=rank, world_size=world_size,
                             source=str(data / source), native_multiple=2)
        result = evaluate(model, loader, metrics=("psnr",), max_images=max_images)
        results[name] = {"keys": result.image_keys, "psnr": result.per_image_psnr, "n_images": result.n_images,
                         "skipped": result.skipped, "processes": result.protocol["processes"]}
    return results


if __name__ == "__main__":
    dist.init_process_group("gloo")
    got = run(Path(sys.argv[1]))
    if dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(got))
    dist.destroy_process_group()
