"""Two-level VQ-VAE-2 quantizer: the paper's equations by hand, pair tokens, gradients, precision, export, evaluation
statistics, prior samples, a training run, and 2 gloo ranks."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gloo_ranks import run_gloo_ranks
from test_quantizer_contract import check_export_round_trip, check_low_precision
from latentae.quantizers import build_quantizer
from latentae.quantizers.base import flatten_channels_last
from latentae.quantizers.two_level import TwoLevelVQ, pair_tokens, split_tokens

DIM, CODES = 6, 16
PRESETS = Path(__file__).resolve().parents[1] / "configs"


def make(**options) -> TwoLevelVQ:
    """A small two-level quantizer whose codes are features of other random inputs, so that several are chosen."""
    torch.manual_seed(0)
    q = build_quantizer(DIM, {"kind": "vqvae2", "codebook_size": CODES, "hidden": 8, **options})
    with torch.no_grad():
        z = torch.randn(2, DIM, 4, 8)
        top = q.top_encoder(z)
        q.top.embedding.weight.copy_(flatten_channels_last(top)[:CODES])
        bottom = q.bottom_in(torch.cat([z, q.top_decoder(top)], dim=1))
        q.bottom.embedding.weight.copy_(flatten_channels_last(bottom)[::4][:CODES])
    if q.top.ema_decay is not None:  # EMA statistics restart from the new codes
        for level in (q.top, q.bottom):
            level.ema_embed_sum.copy_(level.embedding.weight)
    return q


def nearest(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows, codebook).argmin(1)


@pytest.mark.parametrize("ema_decay", [None, 0.99])
def test_tokens_follow_the_papers_equations(ema_decay):
    """top = argmin |E_top(z) - e_top|, at half resolution; bottom = argmin |mix(z, D_top(e_top)) - e_bottom|;
    decoder input = merge(upsample(e_top), e_bottom); losses: beta x commitment per level (+ codebook terms
    without EMA)."""
    q = make(ema_decay=ema_decay, beta=0.3).eval()
    z = torch.randn(2, DIM, 4, 6, generator=torch.Generator().manual_seed(1))
    out = q(z)
    with torch.no_grad():
        top_in = q.top_encoder(z)
        assert top_in.shape == (2, DIM, 2, 3)
        top_idx = nearest(flatten_channels_last(top_in), q.top.codebook())
        top_codes = q.top.codebook()[top_idx].reshape(2, 2, 3, DIM).permute(0, 3, 1, 2)
        bottom_in = q.bottom_in(torch.cat([z, q.top_decoder(top_codes)], dim=1))
        bottom_idx = nearest(flatten_channels_last(bottom_in), q.bottom.codebook())
        bottom_codes = q.bottom.codebook()[bottom_idx].reshape(2, 4, 6, DIM).permute(0, 3, 1, 2)
        expected = q.merge(torch.cat([q.top_upsample(top_codes), bottom_codes], dim=1))
    top, bottom = split_tokens(out.indices)
    assert torch.equal(top.reshape(-1), top_idx) and torch.equal(bottom.reshape(-1), bottom_idx)
    assert len(top_idx.unique()) > 1 and len(bottom_idx.unique()) > 1
    # the same convolutions on the same values; only the code gather differs (F.embedding vs indexing): equal
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=0)
    commitment = {"top": 0.3 * F.mse_loss(flatten_channels_last(top_in), q.top.codebook()[top_idx]),
                  "bottom": 0.3 * F.mse_loss(flatten_channels_last(bottom_in), q.bottom.codebook()[bottom_idx])}
    expected_keys = {f"commitment/{lv}" for lv in commitment} | (
        {"codebook/top", "codebook/bottom"} if ema_decay is None else set())
    assert set(out.losses) == expected_keys
    for level, value in commitment.items():
        assert out.losses[f"commitment/{level}"].item() == pytest.approx(value.item(), rel=1e-5)
        if ema_decay is None:
            assert out.losses[f"codebook/{level}"].item() == pytest.approx(value.item() / 0.3, rel=1e-5)


def test_pair_tokens_in_range_and_tokens_to_codes_exact():
    q = make().eval()
    z = torch.randn(3, DIM, 6, 4)
    out = q(z)
    assert out.indices.shape == (3, 6, 4, 2) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < CODES
    top, bottom = split_tokens(out.indices)
    assert top.shape == (3, 3, 2) and bottom.shape == (3, 6, 4)
    assert torch.equal(pair_tokens(top, bottom), out.indices)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    assert torch.equal(q.indices_to_codes(out.indices), q.indices_to_codes(out.indices.clone()))
    assert torch.equal(q(z).indices, out.indices)  # deterministic


def test_bad_shapes_are_named():
    q = make().eval()
    with pytest.raises(ValueError, match="even latent size"):
        q(torch.randn(1, DIM, 3, 4))
    tokens = q(torch.randn(1, DIM, 4, 4)).indices
    broken = tokens.clone()
    broken[0, 0, 1, 0] = (broken[0, 0, 0, 0] + 1) % CODES  # a top token that differs inside its 2x2 block
    with pytest.raises(ValueError, match="same over each 2x2 block"):
        q.indices_to_codes(broken)
    with pytest.raises(ValueError, match=r"\[B, H, W, 2\]"):
        q.indices_to_codes(tokens[..., 1])


def test_gradients_reach_the_input_both_levels_and_both_codebooks():
    q = make(ema_decay=None).train()
    z = torch.randn(2, DIM, 4, 4, requires_grad=True)
    out = q(z)
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0
    for name in ("top_encoder", "top_decoder", "bottom_in", "top_upsample", "merge"):
        grads = [p.grad for p in getattr(q, name).parameters()]
        # every parameter is in the graph; some may get exactly 0 where a ReLU is off for every input position
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    for level in (q.top, q.bottom):  # codebook terms move the chosen codes
        assert level.embedding.weight.grad.abs().sum() > 0


def test_ema_codebooks_update_and_usage_is_per_level():
    q = make()  # ema_decay 0.99 by default (VQ-VAE-2)
    assert not q.top.embedding.weight.requires_grad
    before = q.bottom.embedding.weight.clone()
    out = q.train()(torch.randn(2, DIM, 4, 4))
    assert not torch.equal(before, q.bottom.embedding.weight)
    for name in ("usage", "perplexity"):
        assert {f"{name}/top", f"{name}/bottom"} <= set(out.stats)
        assert out.stats[name] == pytest.approx(float(out.stats[f"{name}/top"] + out.stats[f"{name}/bottom"]) / 2)


def test_bf16_autocast_picks_the_fp32_tokens():
    check_low_precision(make(), DIM)


def test_export_round_trip_keeps_tokens(tmp_path):
    tokens = check_export_round_trip({"kind": "vqvae2", "codebook_size": 8}, tmp_path / "export")
    assert tokens.shape == (2, 16, 16, 2)


def test_evaluation_counts_a_top_token_once_in_bits_per_pixel():
    from latentae.evaluation import evaluate
    from latentae.models import VQTokenizer

    torch.manual_seed(0)
    model = VQTokenizer(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        quantizer={"kind": "vqvae2", "codebook_size": 8}).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    result = evaluate(model, [{"image": images, "key": ["a", "b", "c"]}], metrics=("psnr",))
    with torch.no_grad():
        top, bottom = split_tokens(model.tokenize(images))
    assert result.metrics["num_stages"] == 2
    # 8 x 8 bottom tokens + 4 x 4 top tokens of 3 bits for 16 x 16 pixels
    assert result.metrics["bits_per_pixel"] == pytest.approx(3 * (64 + 16) / 256)
    for s, tokens in enumerate((top, bottom)):
        counts = torch.bincount(tokens.reshape(-1), minlength=8)
        assert result.metrics[f"codebook_usage/stage{s}"] == pytest.approx((counts > 0).float().mean().item())


def test_prior_samples_use_valid_pair_tokens():
    from latentae.inspection.latent_space import prior_samples
    from latentae.models import VQTokenizer

    torch.manual_seed(0)
    model = VQTokenizer(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        quantizer={"kind": "vqvae2", "codebook_size": 8}).eval()
    images = prior_samples(model, 2, resolution=16)
    assert len(images) == 2 and images[0].shape == (3, 16, 16) and all(torch.isfinite(i).all() for i in images)


def test_training_run_logs_both_levels_and_exports(tmp_path, demo_images):
    """Two steps of the tiny VQ preset with the two-level quantizer: per-level losses and usage are logged under
    train/, and the export (latentae's format) tokenizes like the trained model."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import latentae
    from conftest import tiny_run_overrides
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    overrides = tiny_run_overrides(tmp_path, demo_images, "train.max_steps=2", "loss.disc.weight=0",
                                   "model.latent_channels=8", "model.quantizer.kind=vqvae2",
                                   "model.quantizer.codebook_size=16")
    run = Run(load_run_config(str(PRESETS / "tiny-vq.yaml"), overrides))
    run.fit()
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    expected = {"train/loss/commitment/top", "train/loss/commitment/bottom", "train/codebook/usage/top",
                "train/codebook/usage/bottom"}
    assert expected <= set(events.Tags()["scalars"])
    again = latentae.load(tmp_path / "export")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.tokenize(x), run.model.eval().tokenize(x))


@pytest.mark.slow
def test_usage_over_two_ranks_equals_the_union_batch(tmp_path):
    """2 gloo ranks with different batches, one of them empty (see dist_vqvae2_worker.py)."""
    run_gloo_ranks("dist_vqvae2_worker.py", tmp_path)

