"""DC-AE 1.5's structured latent through encode / decode / stats / inspect / side-by-side eval at one count."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dc_ae_15 import COUNTS, tiny_model

from latentae.cli import main
from latentae.data import load_image
from latentae.exporting import export
from latentae.latents.decode import decode_encoded
from latentae.latents.format import iter_encoded
from latentae.loading import load

N = 4


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A structured model (COUNTS) and a plain one, exported."""
    folder = tmp_path_factory.mktemp("dc15")
    export(tiny_model().eval(), folder / "structured")
    export(tiny_model(counts=[]).eval(), folder / "plain")
    return folder


@pytest.fixture(scope="module")
def encoded(exports, demo_images, tmp_path_factory) -> Path:
    """The first N channels of the structured model's latents of the demo images at 32 px."""
    output = tmp_path_factory.mktemp("latents") / "c4"
    assert main(["encode", "--model", str(exports / "structured"), "--data", str(demo_images), "--output",
                 str(output), "--resolution", "32", "--channels", str(N), "--workers", "0", "--precision", "fp32",
                 "--images-per-shard", "12", "--quiet"]) == 0
    return output


def error_line(capsys) -> str:
    """The one error line (beside it at most the precision line of a command that got as far)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("precision ")]
    assert len(err) == 1, err
    return err[0]


def test_encode_at_n_then_decode_is_the_models_reconstruction_at_n(exports, encoded, demo_images, tmp_path):
    model = load(exports / "structured")
    manifest = json.loads((encoded / "manifest.json").read_text())
    assert manifest["channels"] == N and manifest["written"] == 24
    samples = list(iter_encoded(str(encoded)))
    assert {s["meta"]["channels"] for s in samples} == {N} and samples[0]["latents"].shape[0] == N
    decoded = {d["key"]: d["image"] for d in decode_encoded(model, str(encoded))}
    keys = sorted(decoded)[:3]
    x = torch.stack([load_image(str(demo_images / f"{k}.png"), 32) for k in keys])
    with torch.no_grad():
        own = model.at_channels(N)(x).reconstruction
        full = model(x).reconstruction
    assert torch.allclose(torch.stack([decoded[k] for k in keys]), own, atol=1e-5)
    assert not torch.allclose(own, full, atol=1e-3)  # N channels is another reconstruction than the whole latent

    assert main(["decode", "--model", str(exports / "structured"), "--latents", str(encoded), "--output",
                 str(tmp_path / "png"), "--precision", "fp32", "--quiet"]) == 0
    assert len(list((tmp_path / "png").rglob("*.png"))) == 24


def test_stats_of_the_n_channel_latents(exports, encoded, demo_images, capsys):
    capsys.readouterr()
    assert main(["stats", "--model", str(exports / "structured"), "--latents", str(encoded)]) == 0
    out = capsys.readouterr().out
    assert f"24 images, {N} channels (a structured latent's first {N}: --channels {N})" in out
    latents = np.stack([s["latents"] for s in iter_encoded(str(encoded))]).astype(np.float64)
    means = [float(line.split()[1]) for line in out.splitlines() if line.split()[:1] in ([str(c)] for c in range(N))]
    assert means == pytest.approx(latents.mean(axis=(0, 2, 3)).tolist(), abs=1e-4)
    # the same images encoded on the fly at N: the same numbers
    assert main(["stats", "--model", str(exports / "structured"), "--data", str(demo_images), "--resolution", "32",
                 "--channels", str(N), "--workers", "0", "--precision", "fp32"]) == 0
    table = [line for line in out.splitlines() if line.split()[:1] in ([str(c)] for c in range(N))] + \
        [line for line in out.splitlines() if line.strip().startswith("all")]
    again = capsys.readouterr().out
    assert all(line in again for line in table)


def test_unsupported_counts_give_one_error_line(exports, encoded, demo_images, tmp_path, capsys):
    structured, plain = str(exports / "structured"), str(exports / "plain")
    encode = ["encode", "--data", str(demo_images), "--resolution", "32", "--workers", "0", "--quiet"]
    capsys.readouterr()
    assert main([*encode, "--model", structured, "--output", str(tmp_path / "x"), "--channels", "3"]) != 0
    assert error_line(capsys) == f"latentae encode: error: --channels 3: {structured} serves {COUNTS} channels"
    assert main([*encode, "--model", plain, "--output", str(tmp_path / "y"), "--channels", "4"]) != 0
    assert f"--channels 4: {plain} has no structured latent" in error_line(capsys)
    assert main([*encode, "--model", structured, "--output", str(encoded), "--channels", "2"]) != 0
    assert "was written with different settings (channels)" in error_line(capsys)  # no mixing counts in one output

    assert main(["decode", "--model", plain, "--latents", str(encoded), "--output", str(tmp_path / "png"),
                 "--quiet"]) != 0
    assert f"holds the first {N} latent channels (encode --channels {N}): the decoding model has no structured " \
           "latent" in error_line(capsys)

    stats = ["stats", "--model", structured]
    assert main([*stats, "--latents", str(encoded), "--channels", "4"]) != 0
    assert "apply to --data" in error_line(capsys)
    assert main([*stats, "--latents", str(encoded), "--write"]) != 0
    assert "these are statistics of its first 4 channels" in error_line(capsys)
    assert main([*stats, "--data", str(demo_images), "--channels", "4", "--write"]) != 0
    assert "these are statistics of its first 4 channels" in error_line(capsys)
    assert main(["stats", "--model", plain, "--latents", str(encoded)]) != 0
    assert "has no structured latent" in error_line(capsys)
    assert main(["stats", "--model", plain, "--data", str(demo_images), "--channels", "4"]) != 0
    assert "has no structured latent" in error_line(capsys)


def test_inspect_and_side_by_side_eval_at_a_count(exports, demo_images, tmp_path, capsys):
    structured, plain = str(exports / "structured"), str(exports / "plain")
    a, b = sorted(demo_images.glob("*.png"))[:2]
    figure = tmp_path / "interp.png"
    assert main(["inspect", "interpolate", str(a), str(b), "--model", structured, "--channels", "2",
                 "--resolution", "32", "--steps", "3", "--output", str(figure)]) == 0
    assert figure.is_file()
    assert main(["inspect", "anomaly", str(demo_images), "--model", structured, "--channels", "3",
                 "--resolution", "32"]) != 0
    assert error_line(capsys).endswith(f"--channels 3: {structured} serves {COUNTS} channels")
    with pytest.raises(SystemExit):  # the prior draws no image latents: no count to take
        main(["inspect", "prior", "--model", structured, "--channels", "2"])

    capsys.readouterr()
    assert main(["eval", "--model", structured, "--model", plain, "--data", str(demo_images), "--resolution", "32",
                 "--num-workers", "0", "--precision", "fp32", "--metrics", "psnr", "--max-images", "4",
                 "--channels", "2,8", "--output", str(tmp_path / "eval")]) == 0
    rows = json.loads((tmp_path / "eval" / "compare.json").read_text())["models"]
    assert [(r["model"], r["latent_shape"][0]) for r in rows] == [("structured c2", 2), ("structured c8", 8),
                                                                  ("plain", 8)]
    assert rows[0]["psnr"] != rows[1]["psnr"]
    for row in rows:  # each row's report is that entry's own
        report = json.loads((tmp_path / "eval" / row["model"].replace(" ", "_") / "report.json").read_text())
        assert report["metrics"]["psnr"] == pytest.approx(row["psnr"])
