"""Domain fine-tune of a real pretrained model that keeps its latent space: TAEF2's decoder on rendered text.

One run, on this machine: (1) data: procedural text pages (scripts/text_pages.py; training pages of --resolution
px, held-out pages of --eval-resolution px from another seed, same glyph sizes) in OUTPUT/data, mixed 1:1 with
BSDS500 train photos for training; (2) the pretrained model measured at --eval-resolution on the held-out pages,
Kodak and BSDS500 test (center crops, fp32, PSNR / SSIM on 8-bit images as `latentae eval`); (3) two
decoder-only fine-tunes for the same training wall time, from the same weights, on the same batches:
  latentae  `latentae train --config configs/taef2-decoder-finetune.yaml` (its defaults: precision auto, EMA),
            one Run.train_step per step
  plain     the loop a user writes: the same network, Adam on the decoder's parameters, MSE, fp32
(4) both measured again, with the checks that the latent space is kept: encoder weights bit-identical to the
pretrained ones and the held-out pages' latents unchanged. The encoder is frozen, so every model decodes the
same latents, computed once by the pretrained encoder. LPIPS is not used (no weights offline).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .loops import LatentaeLoop, primed_batches
from .paths import DATA_ROOT, ROOT, SHARED

DEFAULT_MODEL = SHARED / "models" / "taef2"
PRESET = ROOT / "configs" / "taef2-decoder-finetune.yaml"
AIM_GAIN_DB, AIM_KODAK_LOSS_DB = 1.5, 0.2


def add_arguments(p):
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="a TAESD-family model (default: ../shared/models/taef2)")
    p.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding kodak/ and bsds500/")
    p.add_argument("--output", help="data, runs and results.json (default: a temp dir, removed)")
    p.add_argument("--seconds", type=float, default=480, help="training wall time of each contender (default: 480)")
    p.add_argument("--resolution", type=int, default=128, help="training crop side (default: 128)")
    p.add_argument("--eval-resolution", type=int, default=256, help="evaluation crop side (default: 256)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch, both contenders (default: 4)")
    p.add_argument("--lr", type=float, help="learning rate, both contenders (default: the preset's)")
    p.add_argument("--train-pages", type=int, default=200, help="training pages (default: 200, as many as the "
                   "BSDS500 train photos mixed in)")
    p.add_argument("--heldout-pages", type=int, default=24, help="held-out pages (default: 24)")
    p.add_argument("--kodak-images", type=int, default=24, help="first N Kodak images (default: all 24)")
    p.add_argument("--bsds-images", type=int, default=50, help="first N BSDS500 test images (default: 50)")


# ---------------------------------------------------------------------------------------------- held-out sets


def heldout(args, pages: Path) -> dict[str, list]:
    """{set name: [images [B, 3, R, R] in [-1, 1]]}, center crops at the evaluation resolution, read once."""
    from latentae.data.config import DataConfig
    from latentae.data.eval_stream import eval_loader

    data = DataConfig(resolution=args.eval_resolution, num_workers=0)
    root = Path(args.data_root)
    sets = {"text pages (held out)": (str(pages), args.heldout_pages),
            "kodak": (str(root / "kodak"), args.kodak_images),
            "bsds500 test": (str(root / "bsds500" / "test"), args.bsds_images)}
    return {name: [b["image"] for b in eval_loader(data, batch_size=4, source=src).first(n)]
            for name, (src, n) in sets.items()}


def encode_all(model, sets: dict[str, list]) -> dict[str, list]:
    import torch

    with torch.no_grad():
        return {name: [model.encode(x) for x in batches] for name, batches in sets.items()}


def measure(model, sets: dict[str, list], latents: dict[str, list]) -> dict[str, dict]:
    """Mean PSNR / SSIM per set of `model`'s decodes of the (shared) latents, fp32."""
    import torch

    from latentae.evaluation.metrics import psnr_per_image, ssim_per_image, to_uint8

    model.eval()
    out = {}
    with torch.no_grad():
        for name, batches in sets.items():
            psnr, ssim = [], []
            for x, z in zip(batches, latents[name]):
                real, fake = to_uint8(x), to_uint8(model.decode(z))
                psnr.append(psnr_per_image(real, fake))
                ssim.append(ssim_per_image(real, fake))
            out[name] = {"psnr": torch.cat(psnr).mean().item(), "ssim": torch.cat(ssim).mean().item(),
                         "images": sum(len(x) for x in batches)}
    return out


def latent_space_kept(model, pretrained, sets: dict[str, list], latents: dict[str, list]) -> dict:
    """Encoder weights bit-identical, and the held-out pages' latents re-encoded by `model` equal."""
    import torch

    mine = model.state_dict()
    weights = all(torch.equal(mine[k], v) for k, v in pretrained.state_dict().items() if k.startswith("encoder."))
    name = next(iter(sets))
    with torch.no_grad():
        same = all(torch.equal(model.encode(x), z) for x, z in zip(sets[name], latents[name]))
    return {"encoder_bit_identical": weights, "heldout_latents_equal": same}


# ---------------------------------------------------------------------------------------------- contenders


class PlainDecoderLoop:
    """The same network (latentae.load stands in for the authors' module), Adam on the decoder, MSE, fp32."""

    precision = "fp32"

    def __init__(self, cfg, batches=primed_batches):
        import torch

        from latentae.loading import load

        self.net = load(cfg.train.init_from).train()
        self.net.encoder.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.decoder.parameters(), lr=cfg.train.lr)
        self.batches = batches(cfg)

    def step(self, step: int) -> None:
        import torch
        import torch.nn.functional as F

        images = next(self.batches)["image"]
        with torch.no_grad():
            latents = self.net.encode(images)
        F.mse_loss(self.net.decode(latents), images).backward()
        self.opt.step()
        self.opt.zero_grad()

    def model(self):
        return self.net


def config(args, name: str, train: str, output: Path):
    from latentae.trainer.config import load_run_config

    overrides = [f"output_dir={output / 'runs' / name}", f"train.init_from={Path(args.model).resolve()}",
                 f"data.train={train}", f"data.resolution={args.resolution}", f"train.batch_size={args.batch_size}",
                 "data.num_workers=1", "data.shuffle_buffer=64", "train.checkpoint_every=1000000"]
    return load_run_config(str(PRESET), overrides + ([f"train.lr={args.lr}"] if args.lr else []))


def train_for(trainer, seconds: float) -> dict:
    from machine import load_average

    steps, wall, cpu, load = 0, 0.0, 0.0, load_average()
    while wall < seconds:
        t, c = time.perf_counter(), time.process_time()
        trainer.step(steps)
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        steps += 1
    return {"steps": steps, "train_seconds": wall, "cpu_seconds": cpu, "load_start": load, "load_end": load_average()}


# ---------------------------------------------------------------------------------------------- the run


def table(results: dict) -> str:
    sets = list(next(iter(results.values()))["metrics"])  # every row measures the same sets
    rows = ["| model | steps | " + " | ".join(f"{s} PSNR / SSIM" for s in sets) + " |", "|---" * (len(sets) + 2) + "|"]
    for name, r in results.items():
        cells = [f"{r['metrics'][s]['psnr']:.2f} / {r['metrics'][s]['ssim']:.4f}" for s in sets]
        rows.append(f"| {name} | {r.get('steps', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run(args):
    import shutil

    import torch
    from machine import describe, load_average
    from text_pages import write_pages

    from latentae.loading import load

    root = Path(args.data_root)
    for need in ("kodak", "bsds500/train", "bsds500/test"):
        if not (root / need).is_dir():
            print(f"need {root / need} (see shared/data/README.md)")
            return 1
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    describe()
    write_pages(out / "data" / "train", args.train_pages, args.resolution, seed=0)
    write_pages(out / "data" / "heldout", args.heldout_pages, args.eval_resolution, seed=1)
    train = f"{out / 'data' / 'train'},{root / 'bsds500' / 'train'}"
    print(f"{args.train_pages} training pages ({args.resolution} px) + BSDS500 train photos; {args.heldout_pages} "
          f"held-out pages ({args.eval_resolution} px)", flush=True)

    pretrained = load(args.model).eval()
    sets = heldout(args, out / "data" / "heldout")
    t = time.perf_counter()
    latents = encode_all(pretrained, sets)
    results = {"pretrained": {"metrics": measure(pretrained, sets, latents)}}
    print(f"pretrained, measured in {time.perf_counter() - t:.0f} s:\n{table(results)}", flush=True)

    for name, kind in (("latentae", LatentaeLoop), ("plain", PlainDecoderLoop)):
        torch.manual_seed(0)
        trainer = kind(config(args, name, train, out))
        print(f"[{name}] training {args.seconds:g} s ({trainer.precision}); load average {load_average()}", flush=True)
        stats = train_for(trainer, args.seconds)
        model = trainer.model()
        results[name] = {**stats, "precision": trainer.precision, "metrics": measure(model, sets, latents),
                         **latent_space_kept(model, pretrained, sets, latents)}
        print(f"[{name}] {stats['steps']} steps of batch {args.batch_size} in {stats['train_seconds']:.0f} s "
              f"(cpu {stats['cpu_seconds']:.0f} s); load average {stats['load_start']} -> {stats['load_end']}; "
              f"encoder bit-identical: {results[name]['encoder_bit_identical']}, held-out latents equal: "
              f"{results[name]['heldout_latents_equal']}", flush=True)
        del trainer, model

    print(f"\n{table(results)}\n")
    text, kodak = next(iter(sets)), "kodak"
    before = results["pretrained"]["metrics"]
    for name in ("latentae", "plain"):
        gain = results[name]["metrics"][text]["psnr"] - before[text]["psnr"]
        cost = before[kodak]["psnr"] - results[name]["metrics"][kodak]["psnr"]
        met = gain >= AIM_GAIN_DB and cost <= AIM_KODAK_LOSS_DB
        print(f"{name}: held-out pages {gain:+.2f} dB, Kodak {-cost:+.2f} dB (aim +{AIM_GAIN_DB} / at most "
              f"-{AIM_KODAK_LOSS_DB}: {'MET' if met else 'NOT MET'})")
    print(f"load average now {load_average()}")
    record = json.dumps({"args": {k: v for k, v in vars(args).items() if k != "_run"},
                         "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "results": results}, indent=1)
    (out / "results.json").write_text(record.replace(str(ROOT), "."))  # no checkout path in a committed copy
    if args.output:
        print(f"wrote {out / 'results.json'}")
    else:
        shutil.rmtree(out)
    return 0
