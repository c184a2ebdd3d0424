"""Training step speed: latentae's trainer at its DEFAULT settings vs a plain diffusers AutoencoderKL fp32 loop.

One step = generator forward, L1 + LPIPS-VGG + KL + hinge adversarial term with the adaptive weight
(autograd.grad at decoder.conv_out.weight), generator backward, discriminator forward + backward on detached
reconstructions, two AdamW steps. "ours" is `latentae.trainer.loop.Run(cfg).train_step` with the preset and no
speed option beyond the trainer's defaults (train.mixed_precision: auto, printed with what it resolved to; --ours
adds overrides); "plain" is what a user of the diffusers example would write:
`diffusers.AutoencoderKL` (same architecture, same initial weights), fp32, no autocast, frozen
`lpips.LPIPS(net='vgg', pnet_rand=True)`, the same PatchGAN, same batch and resolution. LPIPS trunks are random
(timing equals real weights). Data loading is excluded from both sides: each step takes one of two batches of
random images held in memory. Each side runs in its own subprocess (alternating, --repeats times), so peak RSS
(ru_maxrss) is each side's own; warm-up steps are excluded from the median. The machine (CPU model, bf16 / AMX
flags, bf16 and fp32 GEMM rates measured in the run) and the load average are printed with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .loops import LatentaeLoop, PlainLoop
from .paths import ENTRY, ROOT

SIDES = ("plain", "ours")
TARGET_SPEEDUP = 1.0  # the defaults never slower than the plain loop, peak memory no higher
MB = 2**20


def add_arguments(p):
    p.add_argument("--preset", default=str(ROOT / "configs" / "sd-kl-f8.yaml"), help="KL preset for both sides "
                   "(default: configs/sd-kl-f8.yaml)")
    p.add_argument("--resolution", type=int, default=128, help="image side in pixels (default 128; the preset "
                   "trains at 256, which takes ~4x longer per step)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run (oneDNN primitive creation, "
                   "allocator growth, torch.compile); the first one's time is reported apart")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run (median and IQR over all runs)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating plain / ours (a shared "
                   "machine's load then hits both alike)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per side (default: "
                   "all CPUs; on a busy machine 1 thread gives steadier numbers: an op's threads then never wait "
                   "for a core another process holds)")
    p.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for our side "
                   "(default: none; e.g. train.mixed_precision=fp32 train.channels_last=true); the plain side "
                   "reads the same config but ignores the trainer's speed options (mixed precision, channels_last, "
                   "compile, gradient checkpointing)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="after timing, profile one more step of "
                   "each side with torch.profiler and print its N most expensive ops (self CPU time)")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side, print JSON


# ---------------------------------------------------------------------------------------------- both sides


def run_config(args, output_dir: str):
    """The preset with the benchmark's settings; both sides read their architecture and loss from it."""
    from latentae.trainer.config import load_run_config

    common = [f"output_dir={output_dir}", f"data.resolution={args.resolution}", f"train.batch_size={args.batch_size}",
              "train.grad_accum=1", "loss.perceptual_random_init=true",
              "loss.disc.start=0", "loss.disc.warmup_steps=0"]  # adversarial term (and adaptive weight) from step 0
    return load_run_config(args.preset, common + list(args.ours))


def image_batches(args):
    """Two fixed batches of random images in [-1, 1], cycled forever (the trainer's batch format)."""
    import torch

    g = torch.Generator().manual_seed(0)
    pool = [torch.rand(args.batch_size, 3, args.resolution, args.resolution, generator=g) * 2 - 1 for _ in range(2)]
    i = 0
    while True:
        yield {"image": pool[i % 2], "key": [f"random-{i}-{j}" for j in range(args.batch_size)], "skipped": {}}
        i += 1


def state_bytes(modules, optimizers) -> int:
    """Parameters and buffers of `modules`, a gradient per trainable parameter, and the optimizers' state."""
    import torch

    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.nbytes * (2 if t.requires_grad else 1)
    for opt in optimizers:
        for state in opt.state.values():
            total += sum(v.nbytes for v in state.values() if torch.is_tensor(v))
    return total


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def profile_table(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


# ---------------------------------------------------------------------------------------------- one side


def worker(args) -> int:
    """Build one side, time it, print one JSON line (stdout)."""
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        cfg = run_config(args, out)
        side = (LatentaeLoop if args.worker == "ours" else PlainLoop)(cfg, lambda _: image_batches(args))
        rss_setup = rss_bytes()
        times, cpu_times = [], []
        sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None  # GPU work is asynchronous
        for step in range(args.warmup + args.steps):
            t, c = time.perf_counter(), time.process_time()
            logs = side.step(step)
            sync()
            if args.worker == "ours" and ("adaptive_weight" not in logs or "loss/disc_total" not in logs):
                raise RuntimeError("our step ran without the adaptive adversarial term or the discriminator update")
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        result = {
            "side": args.worker, "first_step_s": times[0], "times": times[args.warmup:],
            "cpu_times": cpu_times[args.warmup:],
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
            "rss_setup": rss_setup, "state_bytes": state_bytes(*side.state()), "threads": torch.get_num_threads(),
            "precision": side.precision,  # after auto resolved
        }
        if args.profile:
            result["profile"] = profile_table(lambda: side.step(args.warmup + args.steps), args.profile)
        print("RESULT " + json.dumps(result), flush=True)
    return 0


def spawn(args, side: str) -> dict:
    cmd = [sys.executable, str(ENTRY), "train", "--worker", side,
           "--preset", args.preset, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
           "--profile", str(args.profile), "--ours", *args.ours]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {side} side failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------- report


def conv_speedup(threads: int) -> float:
    """How much faster a 3x3 convolution (forward + backward) runs in bf16 channels_last than in fp32: the most
    that autocast can gain on this CPU (about 2x with AVX512-BF16, far more with AMX or on a GPU)."""
    import torch

    torch.set_num_threads(threads)
    seconds = []
    for dtype, layout in ((torch.float32, torch.contiguous_format), (torch.bfloat16, torch.channels_last)):
        x = torch.randn(2, 256, 64, 64, dtype=dtype).contiguous(memory_format=layout).requires_grad_(True)
        conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(dtype=dtype, memory_format=layout)
        best = float("inf")
        for _ in range(4):  # the first one creates the oneDNN primitives
            t = time.process_time()
            conv(x).sum().backward()
            best = min(best, time.process_time() - t)
        seconds.append(best)
    return seconds[0] / seconds[1]


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def describe_config(args) -> str:
    with tempfile.TemporaryDirectory() as out:
        cfg = run_config(args, out)
    m, l, t = cfg.model, cfg.loss, cfg.train
    return (f"preset {Path(args.preset).name}: channels {list(m.block_out_channels)}, "
            f"{m.layers_per_block} resnets/level, "
            f"latent {m.latent_channels}, mid attention {m.mid_block_add_attention}; {l.pixel_loss} + "
            f"{l.perceptual_weight} LPIPS-{l.perceptual_net} (random trunk) + KL {l.kl.weight:g} ({l.reduction}) + "
            f"{l.disc.loss} PatchGAN ({l.disc.layers} layers, {l.disc.channels} ch, {l.disc.norm} norm) x adaptive "
            f"weight x {l.disc.weight:g} from step 0; AdamW betas {tuple(t.betas)}\n"
            f"batch {args.batch_size} x {args.resolution} px, {args.warmup} warm-up + {args.steps} timed steps "
            "per run, "
            f"{args.repeats} run(s) per side; ours: {' '.join(args.ours) or 'the defaults'}\n"
            "data: two in-memory batches of random images (data loading excluded from both sides)")


def run(args):
    if args.worker:
        return worker(args)
    if min(args.resolution, args.batch_size, args.steps, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--resolution, --batch-size, --steps and --repeats must be >= 1, --warmup >= 0")
    import torch

    from machine import describe

    print(describe_config(args))
    torch.set_num_threads(args.threads)
    describe()
    ceiling = conv_speedup(args.threads)
    print(f"bf16 / fp32 convolution speed on this CPU: {ceiling:.2f}x (bounds what mixed precision can gain)",
          flush=True)
    results = {side: [] for side in SIDES}
    for r in range(args.repeats):
        for side in SIDES:
            results[side].append(spawn(args, side))
            res = results[side][-1]
            print(f"  run {r + 1} {side:5s}: steps {' '.join(f'{x:.2f}' for x in res['times'])} s "
                  f"(first step {res['first_step_s']:.1f} s, {res['threads']} threads, {res['precision']})",
                  flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (this benchmark adds "
          f"~{args.threads})")

    summary, busy = {}, 1.0
    print(f"\n{'side':6s} {'median s':>9s} {'IQR s':>13s} {'img/s':>7s} {'CPU s':>7s} {'busy':>5s} {'first s':>8s} "
          f"{'peak RSS':>9s} {'setup RSS':>9s} {'model state':>11s}")
    for side in SIDES:
        runs = results[side]
        q1, med, q3 = quartiles([t for res in runs for t in res["times"]])
        cpu = statistics.median(t for res in runs for t in res["cpu_times"])
        peak = max(res["peak_rss"] for res in runs)
        summary[side] = (med, cpu, peak)
        busy = min(busy, cpu / (med * args.threads))
        print(f"{side:6s} {med:9.2f} {q1:6.2f}-{q3:6.2f} {args.batch_size / med:7.2f} {cpu:7.2f} "
              f"{cpu / (med * args.threads):5.0%} "
              f"{statistics.median(res['first_step_s'] for res in runs):8.1f} {peak / MB:7.0f}MB "
              f"{max(res['rss_setup'] for res in runs) / MB:7.0f}MB {runs[0]['state_bytes'] / MB:9.0f}MB")
    print("(median s / IQR: wall seconds per step; CPU s: process CPU seconds per step, all threads; busy: CPU s / "
          "(wall s x threads); first s: the first warm-up step; setup RSS: after building, before step 1; model "
          "state: weights, buffers, a gradient per trainable weight and the AdamW moments)")
    if busy < 0.9:
        print(f"warning: a side kept its {args.threads} thread(s) busy only {busy:.0%} of the time: other processes "
              "held the CPUs, so the wall times are inflated (uneven between the sides when the load changed); "
              "repeat on an idle machine, or compare with --threads 1")
    speedup = summary["plain"][0] / summary["ours"][0]
    memory = summary["ours"][2] / summary["plain"][2]
    print(f"\nratio ours/plain: {speedup:.2f}x faster per step (wall), {summary['plain'][1] / summary['ours'][1]:.2f}x "
          f"by CPU time; peak RSS ours/plain: {memory:.2f}")
    print(f"verdict (defaults: ours ran in {results['ours'][0]['precision']}): speed "
          f"{'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'} ({speedup:.2f}x vs >= "
          f"{TARGET_SPEEDUP:g}x); memory {'MET' if memory <= 1.0 else 'NOT MET'} "
          f"(peak RSS {summary['ours'][2] / MB:.0f} MB vs {summary['plain'][2] / MB:.0f} MB, no higher)"
          + (f"; the bf16 convolution speed-up here is {ceiling:.2f}x" if speedup < TARGET_SPEEDUP else ""))
    if args.profile:
        for side in SIDES:
            print(f"\n--- {side}: one step under torch.profiler (self CPU time)\n{results[side][-1]['profile']}")
    return 0
