"""RAE decoder training: latentae's trainer against the plain loop of diffusers' research script, same wall time.

One run, on this machine: a fresh RAE (model.family rae, the rae-dinov2-b preset's recipe) with a random-init small
DINOv2-with-registers encoder (frozen) and ViT decoder, at --resolution px; the same initial weights and the same
batches (Tiny ImageNet shards 0-8 + BSDS500 train, random crops) for both contenders, each trained for --seconds:
  latentae  `latentae train --config configs/rae-dinov2-b.yaml` with the tiny model: noise-augmented latents
            (model.noise_tau 0.8), L1 (LPIPS off: no VGG weights offline), AdamW 2e-4 / (0.9, 0.95) / no decay,
            EMA 0.9978 (exported), precision auto; its GAN starts at epoch 8 of 16, beyond this budget (the
            PatchGAN stands in for the DINO one, whose weights are not here)
  plain     diffusers' examples/research_projects/autoencoder_rae/train_autoencoder_rae.py's loop
            (scripts/benchmarks/loops.py PlainRAELoop): the same AutoencoderRAE and noise_tau, L1, AdamW 1e-4 /
            (0.9, 0.999) / 1e-2, clip 1.0, fp32, no EMA
Both warm the learning rate up over --warmup steps, then hold it (a wall-clock budget has no step count for a
cosine). Held-out PSNR / SSIM (8-bit, fp32, clean latents: the frozen encoder in eval mode, the same latents for every
model) on Tiny ImageNet's last shard, BSDS500 test and Kodak, center crops at --resolution px.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .finetune import encode_all, measure, table, train_for
from .loops import LatentaeLoop, PlainRAELoop
from .paths import DATA_ROOT, ROOT

PRESET = ROOT / "configs" / "rae-dinov2-b.yaml"
TRAIN = "tiny-imagenet-64/tiny-{00000..00008}.tar,bsds500/train"
HELDOUT = {"tiny-imagenet shard 9": "tiny-imagenet-64/tiny-00009.tar", "bsds500 test": "bsds500/test",
           "kodak": "kodak"}


def add_arguments(p):
    p.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding tiny-imagenet-64/, bsds500/, kodak/")
    p.add_argument("--output", help="runs and results.json (default: a temp dir, removed)")
    p.add_argument("--seconds", type=float, default=360, help="training wall time of each contender (default: 360)")
    p.add_argument("--resolution", type=int, default=64, help="training and evaluation side (default: 64)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch, both contenders (default: 16)")
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps, both (default: 100)")
    p.add_argument("--width", type=int, default=128, help="encoder and decoder width, a multiple of 64 (the encoder's "
                   "heads are 64 wide; default: 128)")
    p.add_argument("--encoder-layers", type=int, default=2, help="encoder blocks (default: 2)")
    p.add_argument("--decoder-layers", type=int, default=4, help="decoder blocks (default: 4)")
    p.add_argument("--heldout-images", type=int, default=500, help="first N images of each held-out set (default: "
                   "500; Kodak has 24, BSDS500 test 200)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")


def config(args, name: str, output: Path):
    from latentae.trainer.config import load_run_config

    root = Path(args.data_root)
    train = ",".join(str(root / part) for part in TRAIN.split(","))
    patch = 8
    model = {"encoder_hidden_size": args.width, "encoder_patch_size": patch,
             "encoder_num_hidden_layers": args.encoder_layers, "encoder_input_size": args.resolution,
             "patch_size": patch, "decoder_hidden_size": args.width, "decoder_num_hidden_layers": args.decoder_layers,
             "decoder_num_attention_heads": max(1, args.width // 32), "decoder_intermediate_size": 4 * args.width}
    overrides = [f"output_dir={output / 'runs' / name}", f"data.train={train}", f"data.resolution={args.resolution}",
                 "data.num_workers=1", "data.shuffle_buffer=256", f"train.batch_size={args.batch_size}",
                 "model.encoder_weights=random", *(f"model.diffusers.{k}={v}" for k, v in model.items()),
                 "loss.perceptual_weight=0", "loss.disc.kind=patchgan", f"train.warmup_steps={args.warmup}",
                 "train.lr_schedule=constant", "train.checkpoint_every=1000000", "eval.every=0",
                 "train.image_every=0"]
    return load_run_config(str(PRESET), overrides)


def heldout(args) -> dict[str, list]:
    from latentae.data.config import DataConfig
    from latentae.data.eval_stream import eval_loader

    data = DataConfig(resolution=args.resolution, num_workers=0)
    root = Path(args.data_root)
    return {name: [b["image"] for b in eval_loader(data, batch_size=32, source=str(root / src))
                   .first(args.heldout_images)] for name, src in HELDOUT.items()}


def run(args):
    import shutil

    import torch
    from machine import describe, load_average

    root = Path(args.data_root)
    for need in ("tiny-imagenet-64", "bsds500/train", "bsds500/test", "kodak"):
        if not (root / need).exists():
            print(f"need {root / need} (see shared/data/README.md)")
            return 1
    torch.set_num_threads(args.threads)
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="bench-rae-"))
    describe()
    sets = heldout(args)
    print("held out: " + ", ".join(f"{name} {sum(len(x) for x in b)}" for name, b in sets.items()), flush=True)
    results, latents, initial = {}, None, None
    for name, kind in (("latentae", LatentaeLoop), ("plain", PlainRAELoop)):
        trainer = kind(config(args, name, out))
        model = trainer.model()
        if latents is None:  # the frozen encoder is the same for both: encode once, measure the initial decoder
            latents = encode_all(model.eval(), sets)
            initial = {k: v.clone() for k, v in model.state_dict().items()}
            results["initial"] = {"metrics": measure(model, sets, latents)}
            print(f"initial decoder:\n{table(results)}", flush=True)
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in initial.items()), "the contenders start from other weights"
        model.train()
        print(f"[{name}] training {args.seconds:g} s ({trainer.precision}, {torch.get_num_threads()} thread(s)); "
              f"load average {load_average()}", flush=True)
        stats = train_for(trainer, args.seconds)
        model = trainer.model()
        encoder_kept = all(torch.equal(v, initial[k]) for k, v in model.state_dict().items() if ".encoder." in
                           f".{k}")
        results[name] = {**stats, "precision": trainer.precision, "images_per_s":
                         stats["steps"] * args.batch_size / stats["train_seconds"],
                         "metrics": measure(model, sets, latents), "encoder_bit_identical": encoder_kept}
        print(f"[{name}] {stats['steps']} steps of batch {args.batch_size} in {stats['train_seconds']:.0f} s "
              f"({results[name]['images_per_s']:.1f} images/s, cpu {stats['cpu_seconds']:.0f} s); load average "
              f"{stats['load_start']} -> {stats['load_end']}; encoder bit-identical: {encoder_kept}", flush=True)
        del trainer, model
    print(f"\n{table(results)}\n")
    ratio = results["latentae"]["images_per_s"] / results["plain"]["images_per_s"]
    print(f"images/s latentae / plain: {ratio:.2f}x; load average now {load_average()}")
    record = json.dumps({"args": {k: v for k, v in vars(args).items() if k != "_run"},
                         "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "results": results}, indent=1)
    (out / "results.json").write_text(record.replace(str(ROOT), "."))
    if args.output:
        print(f"wrote {out / 'results.json'}")
    else:
        shutil.rmtree(out)
    return 0
