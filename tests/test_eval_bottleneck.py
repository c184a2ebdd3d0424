"""Codebook and KL statistics of an evaluation, recomputed by hand from the models' own outputs; evaluate()
leaves the model as it found it; max_images caps the set."""
import math

import pytest
import torch

from latentae.evaluation import evaluate
from latentae.evaluation.evaluator import _local_cap
from latentae.models import KLAutoencoder, VQTokenizer

TINY = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)


def batches(n=7, size=16, batch_size=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    return [{"image": images[i:i + batch_size], "key": [f"img{j}" for j in range(i, min(i + batch_size, n))]}
            for i in range(0, n, batch_size)]


def all_images(bs):
    return torch.cat([b["image"] for b in bs])


def entropy_bits(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def test_codebook_statistics_of_a_tokenizer():
    torch.manual_seed(0)
    model = VQTokenizer(**TINY, quantizer={"kind": "vq", "codebook_size": 16}).eval()
    bs = batches()
    result = evaluate(model, bs, metrics=("psnr",))
    # batch by batch as evaluate runs them: one latent lies only 1.1e-5 nearer its code than the next, ~3x what other
    # kernels (one batch of 7) move it; the same batches run the same kernels, so the counts compare exactly
    with torch.no_grad():
        tokens = torch.cat([model.tokenize(b["image"]) for b in bs])  # [7, 8, 8]
    counts = torch.bincount(tokens.reshape(-1), minlength=16)
    m = result.metrics
    assert m["codebook_size"] == 16
    assert m["codebook_usage"] == pytest.approx((counts > 0).float().mean().item())
    assert m["entropy_bits"] == pytest.approx(entropy_bits(counts), rel=1e-5)
    assert m["perplexity"] == pytest.approx(2 ** entropy_bits(counts), rel=1e-5)
    assert m["bits_per_pixel"] == pytest.approx(math.log2(16) / 4)  # one 4-bit token per 2 x 2 pixels
    assert m["entropy_bits_per_pixel"] == pytest.approx(entropy_bits(counts) / 4, rel=1e-5)
    assert "num_stages" not in m and "kl" not in m
    assert "bits_per_pixel: log2(K)" in result.protocol["bottleneck"]


def test_residual_tokenizer_reports_every_stage():
    torch.manual_seed(0)
    model = VQTokenizer(**TINY, quantizer={"kind": "residual", "num_stages": 3, "codebook_size": 8}).eval()
    bs = batches(n=4)
    m = evaluate(model, bs, metrics=()).metrics
    with torch.no_grad():  # batch by batch, as evaluate runs them (see above)
        tokens = torch.cat([model.tokenize(b["image"]) for b in bs])  # [4, 8, 8, 3]
    per_stage = [torch.bincount(tokens[..., s].reshape(-1), minlength=8) for s in range(3)]
    assert m["num_stages"] == 3
    for s, counts in enumerate(per_stage):
        assert m[f"codebook_usage/stage{s}"] == pytest.approx((counts > 0).float().mean().item())
        assert m[f"entropy_bits/stage{s}"] == pytest.approx(entropy_bits(counts), rel=1e-5)
    assert m["entropy_bits"] == pytest.approx(sum(entropy_bits(c) for c in per_stage) / 3, rel=1e-5)
    assert m["bits_per_pixel"] == pytest.approx(3 * 3 / 4)  # 3 stages x 3 bits per 2 x 2 pixels


def test_kl_statistics_and_active_channels():
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY).eval()
    bs = batches()
    with torch.no_grad():
        posterior = model.posterior(all_images(bs))
    per_channel = (posterior.kl_per_channel() / (8 * 8)).mean(0).double()  # nats / element, mean over images
    m = evaluate(model, bs, metrics=()).metrics
    # one batch of 7 here, 3 + 3 + 1 there (other kernels): measured <= 3e-7 relative
    assert m["kl_per_channel"] == pytest.approx(per_channel.tolist(), rel=1e-5)
    assert m["kl"] == pytest.approx(per_channel.mean().item(), rel=1e-5)
    assert m["latent_channels"] == 4 and m["active_channels"] == int((per_channel > 0.01).sum())
    # the threshold decides: halfway between the two smallest channels leaves one channel inactive
    low = sorted(per_channel.tolist())[:2]
    m = evaluate(model, bs, metrics=(), active_threshold=sum(low) / 2).metrics
    assert m["active_channels"] == 3
    assert "codebook_usage" not in m


def test_model_left_unchanged_and_in_train_mode():
    torch.manual_seed(0)
    model = VQTokenizer(**TINY, quantizer={"kind": "vq", "codebook_size": 16, "ema_decay": 0.9,
                                           "dead_code_threshold": 1.0}).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, batches(), metrics=("psnr",))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no EMA / usage / dead-code update
    assert all(p.grad is None for p in model.parameters())


def test_max_images_takes_the_first_images_and_shares_split_the_cap():
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY).eval()
    result = evaluate(model, batches(n=7, batch_size=3), metrics=("psnr",), max_images=5, examples=4)
    assert result.n_images == 5 and result.image_keys == [f"img{i}" for i in range(5)]
    assert len(result.per_image_psnr) == 5
    assert result.examples["input"].shape == (4, 3, 16, 16) and result.examples["input"].dtype == torch.uint8
    assert [_local_cap(10, r, 4) for r in range(4)] == [3, 3, 2, 2]
    assert [_local_cap(1, r, 2) for r in range(2)] == [1, 0]


def test_unknown_metric_and_non_autoencoder_rejected():
    from latentae.errors import LatentaeError, ModelFormatError

    with pytest.raises(LatentaeError, match="unknown metric.*psim.*choose from psnr, ssim, lpips, rfid"):
        evaluate(KLAutoencoder(**TINY), batches(), metrics=("psnr", "psim"))
    with pytest.raises(ModelFormatError, match="takes a latentae model"):
        evaluate(torch.nn.Conv2d(3, 3, 1), batches())
