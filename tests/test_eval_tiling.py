"""Tiled encode / decode (latentae.models.tiling): chosen above the pixel budget, close to the untiled
reconstruction, diffusers' own tiling for the wrapped families, stated in the report's protocol."""
import pytest
import torch
from diffusers import AutoencoderTiny

from latentae.errors import LatentaeError
from latentae.evaluation import evaluate
from latentae.evaluation.metrics import psnr_per_image, to_uint8
from latentae.models import KLAutoencoder, VQTokenizer
from latentae.models import tiling
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.tiling import tiled_forward, tiled_map, use_tiling
from latentae.models.wrapped import TinyAutoencoder

TINY = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def smooth_images(n=1, size=160, seed=0):
    small = torch.rand(n, 3, size // 16, size // 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic").clamp(-1, 1)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 64 px overlapping by 16: a 160 px image is 3 x 3 tiles."""
    monkeypatch.setattr(tiling, "TILE_PX", 64)
    monkeypatch.setattr(tiling, "OVERLAP_PX", 16)


def test_blending_an_identity_map_gives_the_input_back():
    from fractions import Fraction

    x = torch.randn(2, 3, 100, 76)
    for tile, overlap in ((32, 8), (40, 12), (200, 16)):
        torch.testing.assert_close(tiled_map(lambda t: t, x, tile, overlap, Fraction(1)), x)
    up = tiled_map(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, 32, 8, Fraction(2))
    torch.testing.assert_close(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("family", ["kl", "vq", "taesd"])
def test_tiled_reconstruction_equals_the_untiled_one_in_one_tile_and_stays_near_it_in_nine(monkeypatch, family):
    torch.manual_seed(0)
    model = {"kl": lambda: KLAutoencoder(**TINY, latent_channels=4),
             "vq": lambda: VQTokenizer(**TINY, latent_channels=4, quantizer={"kind": "vq", "codebook_size": 64}),
             "taesd": lambda: TAESDAutoencoder(latent_channels=4)}[family]().eval()
    x = smooth_images()
    with torch.no_grad():
        whole = model(x, sample_posterior=False) if family == "kl" else model(x)
        one = tiled_forward(model, x)  # 160 px < 512 px: one tile
        monkeypatch.setattr(tiling, "TILE_PX", 64)
        monkeypatch.setattr(tiling, "OVERLAP_PX", 16)
        nine = tiled_forward(model, x)
    assert (one.posterior is not None) == (family == "kl") and (one.quant is not None) == (family == "vq")
    torch.testing.assert_close(one.reconstruction, whole.reconstruction.float(), rtol=0, atol=1e-6)
    assert nine.reconstruction.shape == x.shape
    # tiles see only their own pixels (borders, GroupNorm statistics, attention): near, not equal; a random-init
    # network with 64 px tiles is the hard case (19-21 dB for kl / vq here; BENCHMARKS.md measures 512 px tiles)
    psnr = float(psnr_per_image(to_uint8(whole.reconstruction), to_uint8(nine.reconstruction)))
    assert 15 < psnr < 100, psnr


def test_auto_tiles_above_the_budget_only_models_with_proven_tiles_and_the_report_says_so(small_tiles, monkeypatch):
    """The default, auto: the TAESD family above the pixel budget; KL / VQ (per-tile GroupNorm and attention) and
    diffusers' classes only under --tiling on."""
    torch.manual_seed(0)
    taesd, kl = TAESDAutoencoder(latent_channels=4).eval(), KLAutoencoder(**TINY, latent_channels=4).eval()
    vq = VQTokenizer(**TINY, latent_channels=4, quantizer={"kind": "vq", "codebook_size": 64}).eval()
    x = smooth_images(2)
    assert not use_tiling(taesd, x, "auto") and use_tiling(taesd, x, "on") and not use_tiling(taesd, x, "off")
    batches = [{"image": x, "key": ["a", "b"]}]
    plain = evaluate(taesd, batches, metrics=("psnr",))
    assert "tiling" not in plain.protocol
    monkeypatch.setattr("latentae.evaluation.evaluator.TILE_ABOVE_PIXELS", 100 * 100)
    monkeypatch.setattr(tiling, "TILE_ABOVE_PIXELS", 100 * 100)
    assert use_tiling(taesd, x, "auto") and tiling.tiles_proven(taesd)
    for model in (kl, vq, TinyAutoencoder(AutoencoderTiny(latent_channels=4))):
        assert not use_tiling(model, x, "auto") and use_tiling(model, x, "on") and not tiling.tiles_proven(model)
    assert "tiling" not in evaluate(kl, batches, metrics=("psnr",)).protocol  # the default: auto, KL unproven
    tiled = evaluate(taesd, batches, metrics=("psnr",))  # the default: auto
    assert tiled.protocol["tiling"].startswith("2 of 2 images reconstructed in tiles (--tiling auto; auto: above 10000")
    assert "encoder tiles 64 px overlapping 16 px" in tiled.protocol["tiling"]
    assert "run on the whole latent; measured on TAEF2" in tiled.protocol["tiling"]
    assert tiled.metrics["psnr"] != plain.metrics["psnr"]
    assert tiled.metrics["psnr"] == pytest.approx(plain.metrics["psnr"], abs=0.05)
    assert "17.7 dB" in evaluate(kl, batches, metrics=("psnr",), tiling="on").protocol["tiling"]


@pytest.mark.parametrize("variant,channels", [("taesd", 4), ("flux_2", 32), ("f32", 32)])
def test_taesd_stages_compose_to_encode_and_decode_and_tiles_run_only_above_the_latent_resolution(
        small_tiles, variant, channels):
    torch.manual_seed(0)
    model = TAESDAutoencoder(latent_channels=channels, variant=variant).eval()
    (encode_above, encode_at), (decode_at, decode_above) = model.latent_resolution_stages()
    x = smooth_images(1, 128 if variant == "f32" else 160)
    f = model.downsample_factor
    seen = []
    for stage in (encode_at, decode_at):  # the layers at the latent resolution: called once, on the whole latent
        stage[0].register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        latents = model.encode(x)
        assert torch.equal(encode_at(encode_above(x)), latents)
        assert torch.equal(decode_above(decode_at(latents)), model.decode(latents))
        seen.clear()
        out = tiled_forward(model, x)
    whole = (x.shape[-2] // f, x.shape[-1] // f)
    assert seen == [whole, whole] and out.latent.shape == latents.shape and out.reconstruction.shape == x.shape


def test_real_taef2_tiles_match_its_untiled_reconstruction(shared_data, monkeypatch):
    """TAEF2's GroupNorm branch at the latent resolution normalizes over the whole image: run per tile, each
    tile's colours shift (36.8 dB between tiled and untiled here; 34.8 dB at 2048 x 2048 with 512 px tiles)."""
    from pathlib import Path

    import latentae
    from latentae.data import load_image

    taef2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "taef2"
    if not (taef2 / "taef2_encoder.safetensors").is_file():
        pytest.skip(f"TAEF2 weights not found at {taef2}")
    model = latentae.load(taef2).eval()
    monkeypatch.setattr(tiling, "TILE_PX", 128)  # 3 x 3 tiles of a 256 px photo
    monkeypatch.setattr(tiling, "OVERLAP_PX", 32)
    x = load_image(str(shared_data / "kodak" / "kodim23.png"), 256)[None]
    with torch.no_grad():
        whole, tiled = to_uint8(model(x).reconstruction), to_uint8(tiled_forward(model, x).reconstruction)
    real = to_uint8(x)
    assert float(psnr_per_image(whole, tiled)) > 43  # measured 45.1
    assert float(psnr_per_image(real, tiled)) == pytest.approx(float(psnr_per_image(real, whole)), abs=0.05)


def test_wrapped_diffusers_models_use_their_own_tiling_and_restore_it():
    torch.manual_seed(0)
    model = TinyAutoencoder(AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                                            decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4)).eval()
    seen = []
    encode = model.vae.encode
    model.vae.encode = lambda *a, **k: (seen.append(model.vae.use_tiling), encode(*a, **k))[1]
    with torch.no_grad():
        out = tiled_forward(model, smooth_images(1, 64))
    assert seen == [True] and model.vae.use_tiling is False and out.reconstruction.shape == (1, 3, 64, 64)


def test_forcing_tiles_on_a_model_that_cannot_take_them_is_one_clear_error():
    class Fixed(torch.nn.Module):
        family = "rae"

    with pytest.raises(LatentaeError, match="cannot be evaluated in tiles: use --tiling auto or off"):
        use_tiling(Fixed(), torch.zeros(1, 3, 8, 8), "on")
    assert not use_tiling(Fixed(), torch.zeros(1, 3, 4096, 4096), "auto")


def test_cli_tiling_option_reaches_the_report(tmp_path):
    import json

    from accelerate.state import AcceleratorState, GradientState

    from latentae.cli import main
    from latentae.exporting import export
    from test_eval_cli import eval_args, write_pngs

    torch.manual_seed(0)
    model = export(KLAutoencoder(**TINY, latent_channels=4).eval(), tmp_path / "kl")
    write_pngs(tmp_path / "images", 2)
    try:
        assert main(eval_args(model, tmp_path / "images", tmp_path / "out", "--metrics", "psnr", "--tiling", "on")) == 0
    finally:  # latentae eval's Accelerator: process-wide state other tests' runs need cleared
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["protocol"]["tiling"].startswith("2 of 2 images reconstructed in tiles (--tiling on")
    assert f"- tiling: {report['protocol']['tiling']}\n" in (tmp_path / "out" / "report.md").read_text()
