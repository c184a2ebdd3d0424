"""CMMD (latentae/evaluation/cmmd.py) against independent reimplementations of google-research's cmmd: the distance
(distance.py's biased MMD^2, sigma 10, x1000) as plain pair loops on random features, the preprocessing
(io_util.py's center crop and PIL bicubic resize, / 255, CLIP mean / std) on the Kodak files, and the whole metric
through `evaluate` and `latentae eval --metrics psnr,cmmd` on a tiny random-init CLIP laid out like
openai/clip-vit-large-patch14-336 (config.json and pytorch_model.bin of a full CLIPModel); offline without it:
unavailable, naming what to fetch."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_eval_cli import eval_args, fresh_accelerate_state, write_pngs  # noqa: F401 (fixture)
from test_eval_metrics import degrade, fake_reconstruction_model

from latentae.cli import main
from latentae.errors import LatentaeError
from latentae.evaluation import evaluate
from latentae.evaluation.cmmd import CLIPFeatures, mmd
from latentae.evaluation.metrics import to_uint8
from latentae.exporting import export
from latentae.loading import load
from latentae.models import AutoencoderOutput, KLAutoencoder

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)  # OpenAI CLIP's
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def reference_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """Gretton et al.'s biased estimate (every pair, i = j included), one kernel value at a time, x1000."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    def mean_k(a, b):
        return sum(k(p, q) for p in a for q in b) / (len(a) * len(b))

    return 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def unbiased_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """The U-statistic (i != j within a set): what the reference does not compute."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    def within(a):
        return sum(k(a[i], a[j]) for i in range(len(a)) for j in range(len(a)) if i != j) / (len(a) * (len(a) - 1))

    return 1000 * (within(x) + within(y) - 2 * sum(k(p, q) for p in x for q in y) / (len(x) * len(y)))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_mmd_is_the_reference_biased_estimator():
    gen = torch.Generator().manual_seed(0)
    x, y = unit(torch.randn(7, 16, generator=gen)), unit(torch.randn(5, 16, generator=gen) + 0.3)
    expected = reference_mmd(x.double().numpy(), y.double().numpy())
    assert mmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert abs(expected - unbiased_mmd(x.double().numpy(), y.double().numpy())) > 1e-3 * abs(expected)
    raw = 4 * torch.randn(6, 8, generator=gen), 4 * torch.randn(9, 8, generator=gen)  # not normalized, far apart
    assert mmd(*raw) == pytest.approx(reference_mmd(*(r.double().numpy() for r in raw)), rel=1e-10)
    assert mmd(x, y, sigma=2.0, scale=1.0) == pytest.approx(reference_mmd(x.double().numpy(), y.double().numpy(),
                                                                          sigma=2.0) / 1000, rel=1e-10)


def test_mmd_blocks_sum_like_one_matrix(monkeypatch):
    from latentae.evaluation import cmmd

    gen = torch.Generator().manual_seed(1)
    x, y = unit(torch.randn(23, 12, generator=gen)), unit(torch.randn(17, 12, generator=gen))
    whole = mmd(x, y)
    monkeypatch.setattr(cmmd, "KERNEL_BLOCK", 40)  # 1-3 rows per block
    assert mmd(x, y) == pytest.approx(whole, rel=1e-12)


def test_mmd_degenerate_inputs():
    gen = torch.Generator().manual_seed(2)
    x = unit(torch.randn(12, 32, generator=gen, dtype=torch.float64))
    near = unit(x + 0.05 * torch.randn(12, 32, generator=gen, dtype=torch.float64))
    noise = unit(torch.randn(12, 32, generator=gen, dtype=torch.float64))
    assert mmd(x, x) == 0.0  # identical sets: the three means are the same sums
    assert mmd(x, x[torch.randperm(12, generator=gen)]) == pytest.approx(0, abs=1e-9)  # order does not matter
    assert mmd(x, near) == pytest.approx(mmd(near[torch.randperm(12, generator=gen)], x), rel=1e-9)  # symmetric
    assert mmd(x, noise) > 20 * mmd(x, near) > 0
    # Rescaling both sets by c is the kernel's bandwidth divided by c (features the metric feeds are L2-normalized)
    assert mmd(3 * x, 3 * noise) == pytest.approx(mmd(x, noise, sigma=10 / 3), rel=1e-9)
    assert mmd(3 * x, 3 * noise) > 5 * mmd(x, noise)
    const = torch.ones(5, 32, dtype=torch.float64) / 32**0.5
    assert mmd(const, const) == 0.0 and mmd(const, noise) > mmd(x, noise)  # a constant set: no spread at all
    with pytest.raises(LatentaeError, match="at least one embedding on each side, got 0 and 12"):
        mmd(x[:0], x)


@pytest.fixture
def tiny_clip(tmp_path):
    """A random-init CLIPModel saved as OpenAI's repository holds it: a full CLIP config (the vision part at 336 px,
    patch 14) and pytorch_model.bin with both towers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"num_attention_heads": 2, "projection_dim": 16}
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, intermediate_size=32, vocab_size=100,
                         max_position_embeddings=16, **small),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, image_size=336, patch_size=14,
                           **small),
        projection_dim=16)
    model = transformers.CLIPModel(cfg).eval()
    directory = tmp_path / "clip-vit-large-patch14-336"
    cfg.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory, model


def reference_preprocess(im: Image.Image, size: int = 336) -> np.ndarray:
    """cmmd io_util._center_crop_and_resize + _read_image + the / 255 and CLIP normalization, HWC -> CHW."""
    w, h = im.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.BICUBIC)
    x = np.asarray(im).astype(np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def test_preprocessing_equals_the_reference_on_kodak(shared_data, tiny_clip):
    features = CLIPFeatures(str(tiny_clip[0]))
    files = sorted((shared_data / "kodak").glob("*.png"))
    portrait = next(f for f in files if Image.open(f).size[0] < Image.open(f).size[1])
    for path, box in [(files[0], None), (portrait, None), (files[1], (30, 20, 131, 90))]:  # 768 x 512, 512 x 768,
        im = Image.open(path).convert("RGB")  # and a 101 x 70 crop: upscaled to 336
        im = im.crop(box) if box else im
        pixels = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None]
        ours = features.preprocess(pixels)[0].numpy()
        assert ours.shape == (3, 336, 336)
        np.testing.assert_allclose(ours, reference_preprocess(im), rtol=0, atol=1e-6)
    # torch's antialiased bicubic is not PIL's filter: the test tells them apart
    im = Image.open(files[0]).convert("RGB")
    pixels = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float()
    square = pixels[..., :, 128:640]
    torch_resized = F.interpolate(square, size=(336, 336), mode="bicubic", antialias=True).round().clamp(0, 255) / 255
    mean, std = torch.from_numpy(MEAN).view(1, 3, 1, 1), torch.from_numpy(STD).view(1, 3, 1, 1)
    assert not np.allclose(((torch_resized - mean) / std)[0].numpy(), reference_preprocess(im), atol=1e-6)


def reference_cmmd(model, real: torch.Tensor, fake: torch.Tensor) -> float:
    """The whole reference on uint8 images: preprocessing, CLIPModel's image features / their norm, the loops."""
    def embed(images):
        pv = torch.from_numpy(np.stack([reference_preprocess(Image.fromarray(i.permute(1, 2, 0).numpy()))
                                        for i in images]))
        with torch.no_grad():
            e = model.get_image_features(pixel_values=pv)
        e = getattr(e, "pooler_output", e)
        return (e / e.norm(dim=-1, keepdim=True)).double().numpy()

    return reference_mmd(embed(real), embed(fake))


def test_cmmd_in_evaluate_equals_the_reference(tiny_clip):
    directory, model = tiny_clip
    gen = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(7, 3, 12, 10, generator=gen), size=(48, 40), mode="bilinear") * 2 - 1
    batches = [{"image": images[:4], "key": list("abcd")}, {"image": images[4:], "key": list("efg")}]
    result = evaluate(fake_reconstruction_model(), batches, metrics=("psnr", "cmmd"), cmmd_model=str(directory))
    expected = reference_cmmd(model, to_uint8(images), to_uint8(degrade(images)))
    assert result.metrics["cmmd"] == pytest.approx(expected, rel=1e-4)  # float32 embeddings, batches of 4 + 3 vs 1
    assert expected > 1e-3
    assert "google-research cmmd" in result.protocol["metrics"]["cmmd"]
    assert result.protocol["weight_files"]["cmmd"] == [str(directory)]
    same = evaluate(fake_reconstruction_model(), [{"image": images, "key": list("abcdefg")}], metrics=("cmmd",),
                    cmmd_model=str(directory))
    assert same.metrics["cmmd"] == pytest.approx(result.metrics["cmmd"], rel=1e-4)  # batching does not matter


def reconstructing(fn):
    """fake_reconstruction_model with another per-image "reconstruction"."""
    model = fake_reconstruction_model()
    model.forward = lambda x, sample_posterior=True: AutoencoderOutput(reconstruction=fn(x),
                                                                       posterior=model.posterior(x))
    return model


def test_cmmd_of_identical_and_noise_reconstructions(tiny_clip):
    gen = torch.Generator().manual_seed(3)
    images = F.interpolate(torch.rand(6, 3, 8, 8, generator=gen), size=(40, 40), mode="bilinear") * 2 - 1
    noise = torch.rand(6, 3, 40, 40, generator=gen) * 2 - 1

    def cmmd_of(model):
        result = evaluate(model, [{"image": images, "key": list("abcdef")}], metrics=("cmmd",),
                          cmmd_model=str(tiny_clip[0]))
        return result.metrics["cmmd"]

    assert cmmd_of(reconstructing(lambda x: x)) == pytest.approx(0, abs=1e-12)
    assert cmmd_of(reconstructing(lambda x: noise)) > 5 * cmmd_of(fake_reconstruction_model()) > 0  # 11x here


def test_cmmd_through_latentae_eval(tiny_clip, tmp_path, capsys):
    """`latentae eval --metrics psnr,cmmd --cmmd-model DIR` on 32 px PNGs (no resize by the loader): the report's
    CMMD is the reference's on the inputs and the model's reconstructions."""
    directory, model = tiny_clip
    torch.manual_seed(0)
    vae = export(KLAutoencoder(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                               latent_channels=4).eval(), tmp_path / "kl")
    names = write_pngs(tmp_path / "data", 5, size=32)
    out = tmp_path / "report"
    assert main(eval_args(vae, tmp_path / "data", out, "--metrics", "psnr,cmmd", "--cmmd-model", str(directory),
                          "--grids", "0")) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) >= {"psnr", "cmmd"} and report["unavailable"] == {}
    assert "CLIPVisionModelWithProjection" in report["protocol"]["metrics"]["cmmd"]
    assert "| CMMD ↓ |" in capsys.readouterr().out

    real = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "data" / f"{n}.png").convert("RGB")).copy())
                        .permute(2, 0, 1) for n in names])
    ae = load(vae)
    with torch.no_grad():
        fake = to_uint8(ae(real.float() / 127.5 - 1, sample_posterior=False).reconstruction)
    assert report["metrics"]["cmmd"] == pytest.approx(reference_cmmd(model, real, fake), rel=1e-4)


def test_cmmd_offline_is_unavailable_naming_what_to_fetch(offline_cache, capsys):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    result = evaluate(fake_reconstruction_model(), [{"image": images, "key": ["a", "b"]}], metrics=("psnr", "cmmd"))
    message = result.unavailable["cmmd"]
    assert "openai/clip-vit-large-patch14-336" in message and "latentae fetch-weights --only clip" in message
    assert "pytorch_model.bin" in message and "psnr" in result.metrics
    assert main(["fetch-weights", "--only", "clip"]) == 1  # offline: one FAILED line naming the model
    assert capsys.readouterr().out.startswith("FAILED clip: clip model 'openai/clip-vit-large-patch14-336' not found")


def test_fetch_weights_finds_clip_in_the_hf_cache(tiny_clip, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    repo = tmp_path / "hf-cache" / "models--openai--clip-vit-large-patch14-336"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    tiny_clip[0].rename(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert main(["fetch-weights", "--only", "clip"]) == 0
    assert capsys.readouterr().out.startswith(f"ok     clip: {snapshot}")
    assert CLIPFeatures().weight_files == [str(snapshot)]  # the default source: the cached hub model


def test_cmmd_gathers_every_rank_embeddings(tiny_clip, tmp_path, monkeypatch):
    """2 gloo ranks with uneven shares (one empty): each reports the CMMD of all images (dist_cmmd_worker.py)."""
    from gloo_ranks import run_gloo_ranks

    monkeypatch.setenv("CMMD_CLIP_DIR", str(tiny_clip[0]))
    run_gloo_ranks("dist_cmmd_worker.py", tmp_path)
