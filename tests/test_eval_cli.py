"""`latentae eval` / `python eval/evaluate.py` end to end: report files, models from diffusers, offline weights,
bad input (not a model, no images, corrupt shards), and a 2-process run equal to the 1-process one."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from PIL import Image

from latentae.cli import main
from latentae.exporting import export
from latentae.models import KLAutoencoder, VQTokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)



@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """`latentae eval` creates an Accelerator; accelerate keeps one process-wide state, which other test files'
    runs (other precision settings) need cleared."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export(KLAutoencoder(**TINY, latent_channels=4).eval(), tmp_path_factory.mktemp("models") / "kl")


def write_pngs(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[str]:
    """n smooth random RGB images (upsampled noise), named img0.png..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        small.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"img{i}.png")
    return [f"img{i}" for i in range(n)]


def eval_args(model, data, out, *extra):
    return ["eval", "--model", str(model), "--data", str(data), "--output", str(out), "--resolution", "32",
            "--num-workers", "0", "--precision", "fp32", *extra]  # metrics compared: not the machine-dependent auto


def one_line_error(capsys, *expected):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentae eval: error: "), err
    for part in expected:
        assert part in err, err
    return err


def test_end_to_end_on_kodak_with_offline_weights(kl_dir, shared_data, offline_cache, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(eval_args(kl_dir, shared_data / "kodak", out, "--max-images", "4", "--grids", "3")) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 4 and report["skipped"] == {}
    assert set(report["metrics"]) >= {"psnr", "ssim", "kl", "kl_per_channel", "active_channels"}
    assert 0 < report["metrics"]["psnr"] < 100 and 0 < report["metrics"]["ssim"] < 1
    assert set(report["unavailable"]) == {"lpips", "rfid"}  # no weights offline: reported, not fatal
    assert "alexnet-owt-7be5be79.pth" in report["unavailable"]["lpips"]
    protocol = report["protocol"]
    assert protocol["resolution"] == 32 and "center square crop" in protocol["crop"]
    assert protocol["model"] == str(kl_dir) and protocol["processes"] == 1
    assert "data_range=1" in protocol["metrics"]["ssim"]
    md = (out / "report.md").read_text()
    for part in ("| PSNR (dB) ↑ |", "| LPIPS-alex ↓ | unavailable (see below) |", "- resolution: 32",
                 "- images evaluated: 4 (skipped samples: none)", "lpips unavailable: pretrained weights"):
        assert part in md
    assert md in printed
    assert Image.open(out / "grid.png").size == (3 * 34 + 2, 3 * 34 + 2)  # 3 images x (input, rec, diff)
    assert Image.open(out / "psnr_hist.png").size == (640, 400)
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "key,psnr,ssim" and [r.split(",")[0] for r in rows[1:]] == [f"kodim0{i}" for i in range(1, 5)]


def test_diffusers_directories_evaluate_side_by_side(tmp_path, capsys):
    data = tmp_path / "images"
    write_pngs(data, 3)
    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    AutoencoderKL(**TINY, **blocks, latent_channels=4).save_pretrained(tmp_path / "sd-like")
    VQModel(**TINY, **blocks, latent_channels=4, num_vq_embeddings=32, vq_embed_dim=4).save_pretrained(tmp_path / "vq")
    for name in ("sd-like", "vq"):
        assert main(eval_args(tmp_path / name, data, tmp_path / f"out-{name}", "--metrics", "psnr,ssim")) == 0
    kl = json.loads((tmp_path / "out-sd-like" / "report.json").read_text())
    vq = json.loads((tmp_path / "out-vq" / "report.json").read_text())
    assert kl["n_images"] == vq["n_images"] == 3
    assert kl["protocol"]["model_class"] == "KLAutoencoder" and "kl" in kl["metrics"]
    assert vq["protocol"]["model_class"] == "VQTokenizer" and vq["metrics"]["codebook_size"] == 32
    assert vq["unavailable"] == {} and "lpips" not in vq["metrics"]


def test_corrupt_shard_is_skipped_and_counted(kl_dir, tmp_path, capsys):
    data = tmp_path / "data"
    write_pngs(data, 3)
    (data / "broken.tar").write_bytes(b"this is not a tar archive" * 40)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert main(eval_args(kl_dir, data, tmp_path / "out", "--metrics", "psnr")) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_images"] == 3
    assert report["skipped"] == {"read_error": 1, "decode_error": 1}
    assert "skipped samples: read_error=1, decode_error=1" in (tmp_path / "out" / "report.md").read_text()


def test_bad_input_gives_one_clear_message(kl_dir, tmp_path, capsys):
    data = tmp_path / "data"
    write_pngs(data, 1)
    assert main(eval_args(tmp_path, data, tmp_path / "o")) == 2  # a folder without config.json
    one_line_error(capsys, "is not a model directory")

    (tmp_path / "empty").mkdir()
    assert main(eval_args(kl_dir, tmp_path / "empty", tmp_path / "o")) == 2
    one_line_error(capsys, "holds no images or tar files")

    with tarfile.open(tmp_path / "nothing.tar", "w"):  # a valid tar with no samples
        pass
    assert main(eval_args(kl_dir, tmp_path / "nothing.tar", tmp_path / "o")) == 2
    one_line_error(capsys, f"no images found in {tmp_path / 'nothing.tar'}")

    (tmp_path / "corrupt.tar").write_bytes(b"\x00garbage" * 100)
    assert main(eval_args(kl_dir, tmp_path / "corrupt.tar", tmp_path / "o")) == 2
    one_line_error(capsys, "every sample in", "was skipped (read_error=1)")

    assert main(eval_args(kl_dir, data, tmp_path / "o", "--metrics", "psnr,psim")) == 2
    one_line_error(capsys, "unknown metric(s) psim")
    assert not (tmp_path / "o").exists()


def _script_env(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TORCH_HOME": str(tmp_path / "torch")}


def test_script_entry_point_reports_bad_model(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "eval" / "evaluate.py"), "--model", str(tmp_path / "none"),
                          "--data", str(tmp_path)], capture_output=True, text=True, env=_script_env(tmp_path),
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"latentae eval: error: {tmp_path / 'none'}: no such file or directory"]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, capsys):
    """torchrun with 2 CPU processes on 5 images (3 + 2, uneven): one gather gives the 1-process result."""
    data = tmp_path / "data"
    keys = write_pngs(data, 5)
    torch.manual_seed(0)
    model = export(VQTokenizer(**TINY, latent_channels=4, quantizer={"kind": "residual", "num_stages": 2,
                                                                     "codebook_size": 16}).eval(), tmp_path / "vq")
    reports = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        args = eval_args(model, data, out, "--metrics", "psnr,ssim", "--batch-size", "2")
        if n == 1:
            assert main(args) == 0
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   str(REPO / "eval" / "evaluate.py"), *args[1:]]
            run = subprocess.run(cmd, capture_output=True, text=True, env=_script_env(tmp_path), timeout=300)
            assert run.returncode == 0, run.stderr[-3000:]
            for share in ("process 1/2]: 3/3 images (100%)", "process 2/2]: 2/2 images (100%)"):  # each its own
                assert share in run.stderr, run.stderr[-3000:]
        reports[n] = json.loads((out / "report.json").read_text())
        reports[n]["keys"] = [line.split(",")[0] for line in (out / "per_image.csv").read_text().splitlines()[1:]]
    one, two = reports[1], reports[2]
    assert two["protocol"]["processes"] == 2 and one["protocol"]["processes"] == 1
    assert one["n_images"] == two["n_images"] == 5 and sorted(two["keys"]) == keys
    # 1 and 2 processes batch the images differently (other kernels): latents <= 1.6e-6 apart; a reconstructed pixel
    # may round to the next 8-bit level (PSNR ~4e-6 relative each); no token flips: the nearest code wins by >= 2.8e-5
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-4), key


def test_reused_loader_counts_each_evaluation_skips_once(kl_dir, tmp_path):
    from latentae.data import DataConfig, eval_loader
    from latentae.evaluation import evaluate
    from latentae.loading import load

    data = tmp_path / "data"
    write_pngs(data, 2)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    loader = eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=4, source=str(data))
    model = load(kl_dir)
    for _ in range(2):  # the trainer's periodic validation may keep one loader
        result = evaluate(model, loader, metrics=("psnr",))
        assert result.n_images == 2 and result.skipped == {"decode_error": 1}


def test_native_resolution_measures_whole_kodak_images(shared_data, tmp_path, capsys):
    """--resolution native: a portrait (512 x 768) and a landscape (768 x 512) Kodak image are measured whole
    (multiples of the model's factor 8) in batches of one size; each PSNR equals numpy's on the full image."""
    torch.manual_seed(0)
    model = KLAutoencoder(block_out_channels=(4, 4, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                          mid_block_add_attention=False).eval()  # small: 768 x 512 images on 2 cores
    files = [shared_data / "kodak" / "kodim04.png", shared_data / "kodak" / "kodim01.png"]
    out = tmp_path / "report"
    assert main(["eval", "--model", str(export(model, tmp_path / "f8")), "--data", ",".join(map(str, files)),
                 "--output", str(out), "--resolution", "native", "--metrics", "psnr", "--num-workers", "0",
                 "--precision", "fp32", "--grids", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 2 and report["protocol"]["resolution"] == "native"
    assert "center crop to a multiple of 8 px, no resize" in report["protocol"]["crop"]
    rows = [line.split(",") for line in (out / "per_image.csv").read_text().splitlines()[1:]]
    assert [key for key, *_ in rows] == ["kodim04", "kodim01"]  # the order given
    for (key, psnr), path in zip(rows, files):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        assert pixels.shape == ((768, 512, 3) if key == "kodim04" else (512, 768, 3))
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            rec = model(x, sample_posterior=False).reconstruction[0].permute(1, 2, 0).double().numpy()
        rec = np.clip(np.round((rec + 1) * 127.5), 0, 255)
        expected = 10 * np.log10(255.0**2 / np.mean((pixels - rec) ** 2))
        # a different oneDNN kernel in the CLI's forward can flip a few of the 1.2M uint8 roundings (~1e-5 dB each)
        assert float(psnr) == pytest.approx(expected, abs=1e-3)
    assert Image.open(out / "grid.png").size == (512 + 4, 3 * 770 + 2)  # the first image's size only


def test_resolution_off_the_models_multiple_is_one_clear_error_and_shapes_print_as_integers(tmp_path, capsys):
    """A --resolution the model cannot encode and decode back to its size (not a multiple of its crop_multiple)
    fails before any image is read, naming the multiple and the nearest valid sides; the report's latent shape
    reads as integers."""
    from families import FAMILIES

    data = tmp_path / "data"
    write_pngs(data, 2)
    for family, resolution, multiple, nearest in (("tiny", 30, 4, "28 or 32"), ("dc", 33, 2, "32 or 34")):
        FAMILIES[family]().save_pretrained(tmp_path / family)
        args = eval_args(tmp_path / family, data, tmp_path / "o", "--metrics", "psnr")
        args[args.index("--resolution") + 1] = str(resolution)
        assert main(args) == 2
        one_line_error(capsys, f"--resolution {resolution}", f"multiple of {multiple}", nearest)
    assert not (tmp_path / "o").exists()
    assert main(eval_args(tmp_path / "tiny", data, tmp_path / "o", "--metrics", "psnr")) == 0
    assert "| latent shape (C x h x w) | 4x8x8 |" in capsys.readouterr().out
