"""Run by tests/test_train_distributed.py under torchrun (2 CPU processes, gloo). Trains a tiny model step by step
and checks, after every step, that both ranks hold identical generator and discriminator weights, that both
optimizers stepped, and that ranks saw different data; then checkpoints and resumes. Writes a JSON verdict."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_run_overrides  # noqa: E402

from latentae.data.train_stream import train_loader  # noqa: E402
from latentae.trainer import checkpoint  # noqa: E402
from latentae.trainer.config import load_run_config  # noqa: E402
from latentae.trainer.loop import Run  # noqa: E402

out_dir, images, verdict_dir = sys.argv[1:4]
preset = str(Path(__file__).resolve().parents[1] / "configs" / "tiny-kl.yaml")
overrides = tiny_run_overrides(out_dir, images, "loss.disc.start=0", "loss.disc.warmup_steps=0",
                               "train.max_steps=3", "train.checkpoint_every=100", *sys.argv[4:])


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def generator(run) -> torch.Tensor:  # what the generator's optimizer trains: the model (and loss.vf's projection)
    return torch.cat([p.detach().reshape(-1) for p in run.generator_params])


def same_on_all_ranks(t: torch.Tensor) -> bool:
    # exact: gloo reduces each gradient chunk once and sends every rank the same bits, and every rank applies the
    # same update to the same weights
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


run = Run(load_run_config(preset, overrides))
acc, rank = run.accelerator, run.accelerator.process_index
cfg = run.cfg
batches = iter(train_loader(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed, rank=rank,
                            world_size=acc.num_processes))
report = {"world_size": acc.num_processes, "steps": []}
for step in range(cfg.train.max_steps):
    before_g, before_d = generator(run), flat(run.loss.discriminator)
    run.train_step(batches, step)
    run.state.step = step + 1
    g, d = generator(run), flat(run.loss.discriminator)
    keys = run.last_images[0][:, :, :4, :4].reshape(-1)[:16].contiguous()
    report["steps"].append({
        "generator_identical": same_on_all_ranks(g),
        "discriminator_identical": same_on_all_ranks(d),
        "generator_stepped": not torch.equal(g, before_g),
        "discriminator_stepped": not torch.equal(d, before_d),
        "optimizer_steps": [int(next(iter(o.state_dict()["state"].values()))["step"]) for o in (run.opt_g, run.opt_d)],
        "lr": run.opt_g.param_groups[0]["lr"],
        "different_data": not same_on_all_ranks(keys),
    })
saved = checkpoint.save(acc, Path(out_dir) / "checkpoints", run.state.step, keep=2)
expected = generator(run)
cfg2 = load_run_config(preset, overrides + ["train.resume=auto"])
resumed = Run(cfg2)
report["resumed_step"] = resumed.state.step
report["resumed_identical"] = bool(torch.equal(generator(resumed), expected))
report["checkpoint"] = saved.name
Path(verdict_dir, f"rank{rank}.json").write_text(json.dumps(report))
acc.wait_for_everyone()
