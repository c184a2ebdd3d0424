"""`latentae stats`: moments agree with numpy on the written latents; --write yields a config diffusers loads."""
import json

import numpy as np
import pytest
import torch
from test_encode import make_shards, tiny_kl

from latentae.cli import main
from latentae.errors import LatentaeError
from latentae.exporting import export
from latentae.latents import encode_dataset, iter_encoded, latent_stats, latent_stats_of_images


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    model = tiny_kl(seed=1)
    pattern, _ = make_shards(tmp / "in", 3, 4)
    encode_dataset(model, pattern, tmp / "both", batch_size=5, workers=0)
    encode_dataset(model, pattern, tmp / "mean", store="mean", workers=0)
    return model, pattern, tmp


def test_stats_agree_with_numpy(encoded):
    model, pattern, tmp = encoded
    stored = np.stack([s["latents"] for s in iter_encoded(str(tmp / "both"))]).astype(np.float64)
    mean, logvar = stored[:, :4], stored[:, 4:]
    # posterior means: plain moments
    s = latent_stats(str(tmp / "both"), of="mean")
    np.testing.assert_allclose(s.mean, mean.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(s.std, mean.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose([s.global_mean, s.global_std], [mean.mean(), mean.std()], rtol=1e-6)
    assert s.images == 12 and s.positions == 12 * 9 * 10  # native 20 x 18 images (f = 2), not sample_size 16
    # posterior samples: Var[z] = Var[mean] + E[exp(logvar)] (law of total variance)
    s = latent_stats(str(tmp / "both"))
    var = mean.var(axis=(0, 2, 3)) + np.exp(logvar).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(s.std, np.sqrt(var), rtol=1e-6)
    np.testing.assert_allclose(s.global_std, np.sqrt(mean.var() + np.exp(logvar).mean()), rtol=1e-6)
    draws = mean + np.exp(0.5 * logvar) * np.random.default_rng(0).standard_normal((200, *mean.shape))
    assert abs(draws.std() / s.global_std - 1) < 0.01  # and matches drawing samples
    assert s.recommended()["scaling_factor"] == pytest.approx(1 / s.global_std)
    # stored means only: their statistics, and a clear error for samples
    assert latent_stats(str(tmp / "mean"), of="mean").std == pytest.approx(latent_stats(str(tmp / "both"),
                                                                                        of="mean").std, rel=1e-6)
    with pytest.raises(LatentaeError, match="stored as means only"):
        latent_stats(str(tmp / "mean"))
    # encoding on the fly measures the same latents
    on_the_fly = latent_stats_of_images(model, pattern, workers=0, batch_size=3)
    # batches of 3 here, 5 there (other kernels): latents ~1e-6 apart; measured <= 4e-9 relative
    np.testing.assert_allclose(on_the_fly.std, latent_stats(str(tmp / "both")).std, rtol=1e-4)


def test_write_gives_a_config_diffusers_loads(encoded, capsys):
    from diffusers import AutoencoderKL

    model, pattern, tmp = encoded
    model_dir = export(model, tmp / "export")
    before = json.loads((model_dir / "config.json").read_text())
    expected = latent_stats(str(tmp / "both"))
    assert main(["stats", "--model", str(model_dir), "--latents", str(tmp / "both"), "--write"]) == 0
    out = capsys.readouterr().out
    assert f"{expected.global_std:.4f}" in out and "scaling_factor" in out
    vae = AutoencoderKL.from_pretrained(model_dir)
    assert vae.config.scaling_factor == pytest.approx(1 / expected.global_std)
    assert vae.config.shift_factor is None and vae.config.latents_mean is None
    after = json.loads((model_dir / "config.json").read_text())
    assert {k: v for k, v in after.items() if k != "scaling_factor"} == \
        {k: v for k, v in before.items() if k != "scaling_factor"}

    assert main(["stats", "--model", str(model_dir), "--latents", str(tmp / "both"), "--write",
                 "--convention", "sd3"]) == 0
    vae = AutoencoderKL.from_pretrained(model_dir)
    assert vae.config.shift_factor == pytest.approx(expected.global_mean)
    assert vae.config.scaling_factor == pytest.approx(1 / expected.global_std)
    assert main(["stats", "--model", str(model_dir), "--latents", str(tmp / "both"), "--write",
                 "--convention", "sdxl"]) == 0
    vae = AutoencoderKL.from_pretrained(model_dir)
    assert vae.config.scaling_factor == 1.0 and vae.config.shift_factor == 0.0  # sd3 left a number there
    np.testing.assert_allclose(vae.config.latents_std, expected.std, rtol=1e-6)
    np.testing.assert_allclose(vae.config.latents_mean, expected.mean, rtol=1e-6)
    # latents normalized the SDXL way have zero mean and unit variance per channel
    stored = np.stack([s["latents"][:4] for s in iter_encoded(str(tmp / "both"))])
    means = latent_stats(str(tmp / "both"), of="mean")
    normalized = (stored - np.array(means.mean)[:, None, None]) / np.array(means.std)[:, None, None]
    np.testing.assert_allclose(normalized.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)


def test_cli_errors(encoded, tmp_path, capsys):
    model, pattern, tmp = encoded
    model_dir = export(model, tmp_path / "export")

    def error(*argv) -> str:
        assert main(["stats", "--model", str(model_dir), *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "stored as means only" in error("--latents", str(tmp / "mean"))
    assert "not latentae encode output" in error("--latents", pattern)
    assert "apply to --data" in error("--latents", str(tmp / "both"), "--precision", "bf16")
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error("--data", str(tmp_path / "empty"))
    bad = export(tiny_kl(), tmp_path / "wrong")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DModel"}))
    assert main(["stats", "--model", str(bad), "--data", pattern, "--workers", "0"]) == 2
    assert "not an autoencoder" in capsys.readouterr().err


def test_stats_of_images_at_native_size_and_the_first_images_in_order(tmp_path):
    """--data without --resolution measures the latents of the images at their own size (as encode writes them),
    not resized to sample_size; --max-images takes the first N of the files' order although two workers and
    size batching deliver them out of order."""
    from test_encode import image_bytes, native_crop, native_model
    from webdataset import TarWriter

    shards = [{"wide": (23, 18), "tall": (18, 27), "dot": (3, 3), "wide2": (22, 17)},
              {"tall2": (19, 26), "wide3": (21, 19), "tall3": (17, 25)}]
    crops = {}
    for i, shard in enumerate(shards):
        with TarWriter(str(tmp_path / f"part-{i}.tar"), encoder=False) as w:
            for name, size in shard.items():
                png = image_bytes(len(crops) + 10 * i, size)
                w.write({"__key__": name, "png": png})
                if name != "dot":  # 3 x 3: no crop to a multiple of 4, skipped
                    crops[name] = native_crop(png, 4)
    model = native_model(seed=2)
    with torch.no_grad():
        moments = {k: model.posterior(x[None]) for k, x in crops.items()}

    def expected(keys):
        mean = np.concatenate([moments[k].mean[0].flatten(1).double().numpy() for k in keys], axis=1)
        var = np.exp(np.concatenate([moments[k].logvar[0].flatten(1).double().numpy() for k in keys], axis=1))
        m = mean.mean(1)
        return m, np.sqrt((mean**2 + var).mean(1) - m**2), mean.shape[1]

    pattern = str(tmp_path / "part-{0..1}.tar")
    for max_images, keys in ((None, list(crops)), (4, ["wide", "tall", "wide2", "tall2"])):
        stats = latent_stats_of_images(model, pattern, workers=2, batch_size=2, max_images=max_images)
        mean, std, positions = expected(keys)
        assert stats.images == len(keys) and stats.positions == positions
        # float32 latents from batches of 1 here and 2 there (kernel choice depends on the batch size)
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats.std, std, rtol=1e-4)


def test_write_never_puts_null_over_a_number(encoded, tmp_path):
    """A key the convention does not use, where the config holds numbers (a FLUX.1-style shift_factor, SDXL-style
    latents_mean / std), becomes the value that changes nothing, not null: pipelines that add the shift fail on
    null, and (z - 0) * scaling_factor is the sd convention's z * scaling_factor."""
    from diffusers import AutoencoderKL

    model, pattern, tmp = encoded
    model_dir = export(model, tmp_path / "export")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(shift_factor=0.1159, latents_mean=[0.1] * 4, latents_std=[2.0] * 4)
    (model_dir / "config.json").write_text(json.dumps(config))
    assert main(["stats", "--model", str(model_dir), "--latents", str(tmp / "both"), "--write"]) == 0
    vae = AutoencoderKL.from_pretrained(model_dir)
    assert vae.config.shift_factor == 0.0
    assert vae.config.latents_mean == [0.0] * 4 and vae.config.latents_std == [1.0] * 4
    assert vae.config.scaling_factor == pytest.approx(1 / latent_stats(str(tmp / "both")).global_std)
