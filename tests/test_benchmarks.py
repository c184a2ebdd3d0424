"""The benchmark scripts stay runnable (tiny settings; the figures themselves live in BENCHMARKS.md)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_is_a_subcommand(monkeypatch):
    """benchmark.py finds its subcommands in scripts/benchmarks/; the modules they share there are none."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import benchmark

    names = ["batch", "data", "encode", "eval", "eval_scale", "finetune", "quality", "tiling", "train"]
    assert list(benchmark.subcommands()) == names


def test_train_benchmark_runs_both_sides():
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "train", "--preset",
           str(ROOT / "configs" / "tiny-kl.yaml"), "--resolution", "32", "--steps", "2", "--warmup", "1",
           "--repeats", "1", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ratio ours/plain" in out.stdout and "verdict" in out.stdout


def test_eval_benchmark_runs_both_sides_at_both_resolutions(shared_data):
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "eval", "--data-root", str(shared_data),
           "--images", "1", "--resolutions", "32,native", "--block-out-channels", "32,32,32,32",
           "--layers-per-block", "1", "--rounds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("speed-up of the defaults over the plain loop") == 2
    for stage in ("| read/decode |", "| model |", "| metrics |", "| writing |", "| total |"):
        assert out.stdout.count(stage) == 2
    assert out.stdout.count("metrics psnr, ssim") == 2  # latentae's, reported beside the plain loop's


def test_finetune_benchmark_keeps_the_latent_space(shared_data, tmp_path):
    """Both decoder fine-tunes run (a random-init TAEF2-shaped model, tiny sizes) and keep the encoder."""
    import json

    import torch

    from latentae.exporting import export
    from latentae.models.taesd import TAESDAutoencoder

    torch.manual_seed(0)
    export(TAESDAutoencoder(latent_channels=32, variant="flux_2"), tmp_path / "model")
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "finetune", "--model", str(tmp_path / "model"),
           "--data-root", str(shared_data), "--output", str(tmp_path / "out"), "--seconds", "1", "--resolution",
           "32", "--eval-resolution", "32", "--batch-size", "2", "--train-pages", "4", "--heldout-pages", "2",
           "--kodak-images", "1", "--bsds-images", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    for name in ("latentae", "plain"):
        assert results[name]["steps"] >= 1
        assert results[name]["encoder_bit_identical"] and results[name]["heldout_latents_equal"]
    assert out.stdout.count("(aim +1.5") == 2
