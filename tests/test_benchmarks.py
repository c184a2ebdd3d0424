"""The benchmark scripts stay runnable (tiny settings; the figures themselves live in BENCHMARKS.md)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_is_a_subcommand(monkeypatch):
    """benchmark.py finds its subcommands in scripts/benchmarks/; the modules they share there are none."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import benchmark

    names = ["batch", "data", "encode", "eval", "eval_scale", "finetune", "quality", "rae", "tiling", "train"]
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


def test_rae_benchmark_runs_both_loops_from_the_same_weights(shared_data, tmp_path):
    """latentae's trainer and the research script's plain loop both train (tiny model and budget), start from the
    same weights (the benchmark asserts it) and keep the frozen encoder."""
    import json

    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "rae", "--data-root", str(shared_data),
           "--output", str(tmp_path / "out"), "--seconds", "1", "--resolution", "32", "--batch-size", "2",
           "--width", "64", "--encoder-layers", "1", "--decoder-layers", "1", "--heldout-images", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert set(results) == {"initial", "latentae", "plain"}
    for name in ("latentae", "plain"):
        assert results[name]["steps"] >= 1 and results[name]["encoder_bit_identical"]
        assert set(results[name]["metrics"]) == {"tiny-imagenet shard 9", "bsds500 test", "kodak"}
    assert "images/s latentae / plain" in out.stdout


def test_equivariance_error_is_capped_only_for_an_equivariant_model(monkeypatch, tmp_path, demo_images):
    """The measure: an exactly equivariant autoencoder of block images scores the PSNR cap under every transform,
    the same autoencoder with a latent that does not rotate or scale with the image does not; the script runs."""
    import json

    from test_losses_regularizers import PoolingAutoencoder, _blocky_images

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from benchmarks.equivariance_error import TRANSFORMS, equivariance_psnr

    images = _blocky_images()
    for _, scale, turns in TRANSFORMS:
        assert equivariance_psnr(PoolingAutoencoder(), images, scale=scale, quarter_turns=turns).min() == 100.0
        assert equivariance_psnr(PoolingAutoencoder(skew=1.0), images, scale=scale, quarter_turns=turns).max() < 40

    from latentae.exporting import export
    from latentae.models.taesd import TAESDAutoencoder

    export(TAESDAutoencoder(latent_channels=4), tmp_path / "model")
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmarks" / "equivariance_error.py"), "--model",
           str(tmp_path / "model"), "--data", str(demo_images), "--resolution", "32", "--output", str(tmp_path / "e.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    psnr = json.loads((tmp_path / "e.json").read_text())["psnr_db"][str(tmp_path / "model")]
    assert list(psnr) == [name for name, _, _ in TRANSFORMS] and all(0 < v < 100 for v in psnr.values())
