"""FD-DINOv2 in `evaluate` (latentae/evaluation/fd_dinov2.py) against an independent reimplementation of NVlabs
edm2's protocol (bicubic antialiased resize of the [0, 255] floats to 224, / 255, ImageNet mean / std, the CLS
token, Fréchet distance with scipy's sqrtm), on a tiny random-init DINOv2 placed in the Hugging Face cache as
facebook/dinov2-large (where `latentae fetch-weights --only dinov2` puts it); offline without it: unavailable."""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from test_eval_metrics import degrade, fake_reconstruction_model

from latentae.evaluation import evaluate
from latentae.evaluation.metrics import to_uint8


@pytest.fixture
def dinov2_in_hf_cache(tmp_path, monkeypatch):
    """A random-init Dinov2Model (patch 14, positions for 518 px like the real one) saved as the cached snapshot
    of facebook/dinov2-large."""
    transformers = pytest.importorskip("transformers")
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--facebook--dinov2-large"
    snapshot = repo / "snapshots" / ("0" * 40)
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=518)
    transformers.Dinov2Model(cfg).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def edm2_fd_dinov2(model, real: torch.Tensor, fake: torch.Tensor) -> float:
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)

    def features(x):
        x = F.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
        x = (x / 255 - mean) / std
        with torch.no_grad():
            return model(pixel_values=x).last_hidden_state[:, 0].double().numpy()  # the final-normed CLS token

    (mu, sigma), (mu_ref, sigma_ref) = [(f.mean(0), np.cov(f, rowvar=False)) for f in (features(fake), features(real))]
    s, _ = scipy.linalg.sqrtm(sigma @ sigma_ref, disp=False)
    return float(np.real(np.square(mu - mu_ref).sum() + np.trace(sigma + sigma_ref - s * 2)))


def test_fd_dinov2_equals_edm2_reimplementation(dinov2_in_hf_cache):
    from transformers import Dinov2Model

    gen = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(10, 3, 12, 10, generator=gen), size=(48, 40), mode="bilinear") * 2 - 1
    batches = [{"image": images[:6], "key": list("abcdef")}, {"image": images[6:], "key": list("ghij")}]
    result = evaluate(fake_reconstruction_model(), batches, metrics=("psnr", "fd_dinov2"))
    expected = edm2_fd_dinov2(Dinov2Model.from_pretrained(dinov2_in_hf_cache).eval(), to_uint8(images),
                              to_uint8(degrade(images)))
    # float32 features from batches of 6 + 4 vs 10; eigenvalues vs sqrtm of float64 covariances
    assert result.metrics["fd_dinov2"] == pytest.approx(expected, rel=1e-4)
    assert expected > 0.01
    assert "edm2" in result.protocol["metrics"]["fd_dinov2"]
    assert result.protocol["weight_files"]["fd_dinov2"] == [str(dinov2_in_hf_cache)]


def test_fd_dinov2_offline_is_unavailable_naming_what_to_fetch(offline_cache):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    result = evaluate(fake_reconstruction_model(), [{"image": images, "key": ["a", "b"]}],
                      metrics=("psnr", "fd_dinov2"))
    message = result.unavailable["fd_dinov2"]
    assert "facebook/dinov2-large" in message and "latentae fetch-weights --only dinov2" in message
    assert "psnr" in result.metrics
