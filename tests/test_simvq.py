"""SimVQ: codes W(C) with C frozen, checked against a hand computation of the authors' equations."""
import pytest
import torch
from diffusers import VQModel
from gloo_ranks import run_gloo_ranks

import latentae
from conftest import assert_close_across_kernels, weight_layers
from latentae.config import ConfigError
from latentae.exporting import export
from latentae.models import ModelConfig, build_model
from latentae.quantizers import build_quantizer, check_quantizer_spec
from latentae.quantizers.base import flatten_channels_last, unflatten_channels_last
from latentae.quantizers.simvq import SimVQ


def _effective_codebook(q: SimVQ) -> torch.Tensor:
    """W(C) = C W^T + b by hand, float64."""
    c, w, b = (t.detach().double() for t in (q.embedding.weight, q.embedding_proj.weight, q.embedding_proj.bias))
    return c @ w.T + b


def test_lookup_losses_and_gradients_match_the_authors_equations():
    torch.manual_seed(0)
    beta = 0.3
    q = SimVQ(3, codebook_size=6, beta=beta)
    z = torch.randn(2, 3, 2, 3, requires_grad=True)
    out = q(z)

    codebook = _effective_codebook(q)
    x = flatten_channels_last(z.detach()).double()
    dist = ((x[:, None, :] - codebook[None]) ** 2).sum(-1)  # [N, K] squared L2, as the authors' expansion
    top2 = dist.topk(2, dim=1, largest=False).values
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # no near-tie: fp32 and float64 must agree on the argmin
    idx = dist.argmin(1)
    assert torch.equal(out.indices.reshape(-1), idx)
    assert out.indices.min() >= 0 and out.indices.max() < 6

    # forward value: exactly the chosen code of W(C) (fp32), as indices_to_codes gives it
    chosen = codebook[idx]
    torch.testing.assert_close(flatten_channels_last(out.quantized).double(), chosen, rtol=1e-6, atol=1e-6)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    assert torch.equal(q.indices_to_codes(out.indices), q.indices_to_codes(out.indices.clone()))
    assert set(out.stats) == {"usage", "perplexity", "entropy"}

    # legacy=False: beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2)
    mse = ((chosen - x) ** 2).mean()
    assert set(out.losses) == {"commitment", "codebook"}
    assert out.losses["commitment"].item() == pytest.approx(beta * mse.item(), rel=1e-5)
    assert out.losses["codebook"].item() == pytest.approx(mse.item(), rel=1e-5)

    w, b, c = q.embedding_proj.weight, q.embedding_proj.bias, q.embedding.weight
    n = x.numel()
    gz, gw = torch.autograd.grad(out.losses["commitment"], [z, w], retain_graph=True, allow_unused=True)
    expected = 2 * beta * (x - chosen) / n
    torch.testing.assert_close(flatten_channels_last(gz).double(), expected, rtol=1e-4, atol=1e-7)
    assert gw is None or torch.count_nonzero(gw) == 0  # the commitment term leaves the codebook alone

    gz, gw, gb = torch.autograd.grad(out.losses["codebook"], [z, w, b], allow_unused=True)
    assert gz is None or torch.count_nonzero(gz) == 0  # the codebook term leaves the encoder alone
    dq = 2 * (chosen - x) / n  # d/dq of mean((q - sg(z))^2), q_n = W c_n + b
    c_rows = c.detach().double()[idx]
    torch.testing.assert_close(gw.double(), dq.T @ c_rows, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gb.double(), dq.sum(0), rtol=1e-4, atol=1e-7)
    assert not c.requires_grad and c.grad is None


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(1)
    q = SimVQ(4, codebook_size=8)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    (gz,) = torch.autograd.grad(q(z).quantized.sum(), z)
    assert torch.equal(gz, torch.ones_like(z))  # identity, as the authors' z + (z_q - z).detach()


def test_one_step_on_w_moves_every_code_and_c_stays_frozen():
    torch.manual_seed(2)
    q = SimVQ(4, codebook_size=32)
    z = 0.01 * torch.randn(1, 4, 2, 2)  # 4 rows: at most 4 of the 32 codes are chosen
    trainable = [name for name, p in q.named_parameters() if p.requires_grad]
    assert trainable == ["embedding_proj.weight", "embedding_proj.bias"]  # C is not
    opt = torch.optim.SGD([p for p in q.parameters() if p.requires_grad], lr=0.1)
    c_before, codes_before = q.embedding.weight.clone(), q.codebook()
    out = q(z)
    out.loss.backward()
    opt.step()
    unused = torch.ones(32, dtype=torch.bool)
    unused[out.indices.unique()] = False
    assert unused.sum() >= 28
    assert (q.codebook() != codes_before).any(1).all()  # every code moved, the 28+ unchosen ones too
    assert torch.equal(q.embedding.weight, c_before)


def test_initialization_follows_the_authors():
    torch.manual_seed(3)
    q = SimVQ(16, codebook_size=4096)
    c = q.embedding.weight
    # C ~ N(0, 1/d): the sample std of 65536 draws is within ~0.5% of 1/sqrt(16); 3% leaves any seed room
    assert c.mean().abs() < 0.01 and c.std().item() == pytest.approx(16**-0.5, rel=0.03)
    w = q.embedding_proj
    assert isinstance(w, torch.nn.Linear) and w.bias is not None and w.weight.shape == (16, 16)
    assert w.weight.abs().max() <= 16**-0.5  # PyTorch's default Linear init: U(-1/sqrt(d), 1/sqrt(d))


def test_no_rows_give_zero_losses_not_nan():
    q = SimVQ(4, codebook_size=8).train()
    z = torch.zeros(0, 4, 2, 2, requires_grad=True)
    out = q(z)
    assert out.indices.shape == (0, 2, 2)
    assert all(v.item() == 0 for v in out.losses.values())  # a rank without rows adds nothing to DDP's average
    out.loss.backward()
    assert torch.isfinite(q.embedding_proj.weight.grad).all()


def test_autocast_lookup_is_fp32_on_rows_only_fp32_tells_apart():
    """bf16 autocast gives the fp32 indices on rows whose nearest code is unambiguous in fp32 but not in bf16."""
    torch.manual_seed(5)
    q = SimVQ(4, codebook_size=16).eval()
    codes = q.codebook().double()
    nearest = torch.cdist(codes, codes).fill_diagonal_(float("inf")).argmin(1)
    # each row 0.1% of the way from the midpoint of a code and its nearest neighbour towards the code: that code
    # is nearest by a relative margin > 1e-3 in squared distance, ~1000x what fp32 rounding of the lookup can
    # reach, but below what bf16 codes (8-bit mantissa, 4e-3 relative) can
    rows = (codes + codes[nearest]) / 2 + 1e-3 * (codes - codes[nearest]) / 2
    top2 = torch.cdist(rows, codes).topk(2, dim=1, largest=False)
    assert torch.equal(top2.indices[:, 0], torch.arange(16))
    assert ((top2.values[:, 1] ** 2 - top2.values[:, 0] ** 2) / top2.values[:, 0] ** 2).min() > 1e-3
    z = unflatten_channels_last(rows.float(), (1, 4, 16, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(q(z).indices.reshape(-1), torch.arange(16))
    assert torch.equal(out.indices.reshape(-1), torch.arange(16))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="ema_decay"):  # EMA would overwrite C; not a SimVQ option
        check_quantizer_spec({"kind": "simvq", "ema_decay": 0.9})
    with pytest.raises(ConfigError, match="grad_estimator"):
        check_quantizer_spec({"kind": "simvq", "grad_estimator": "gumbel"})
    with pytest.raises(ConfigError, match="beta"):
        build_quantizer(4, {"kind": "simvq", "beta": -1.0})
    assert isinstance(build_quantizer(4, {"kind": "simvq", "codebook_size": 8}), SimVQ)


TINY = dict(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=8,
            sample_size=32)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("spec", [{"kind": "simvq", "codebook_size": 64},
                                  {"kind": "simvq", "codebook_size": 64, "codebook_dim": 4}])
def test_export_to_vqmodel_and_back_gives_the_same_tokens_and_reconstructions(tmp_path, spec):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, quantizer=spec))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):  # W away from its initial value
        out = model(_images(4, step))
        ((out.reconstruction - _images(4, step)).abs().mean() + out.quant.loss).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    export(model, tmp_path)
    vq = VQModel.from_pretrained(tmp_path).eval()
    assert torch.equal(vq.quantize.embedding.weight, model.quantize.codebook())  # W(C), stored as computed
    again = latentae.load(tmp_path)
    assert again.config["quantizer"]["kind"] == "vq"  # W(C) is an ordinary codebook at inference
    x = _images(3, 9)
    with torch.no_grad():
        tokens = model.tokenize(x)
        assert len(tokens.unique()) > 1  # a meaningful comparison, not one code everywhere
        _, _, (_, _, vq_tokens) = vq.quantize(vq.encode(x).latents)
        # exact: the same encoder modules and the same cdist on the same batch (the same kernels)
        assert torch.equal(vq_tokens.reshape(tokens.shape), tokens)
        assert torch.equal(again.tokenize(x), tokens)
        # bit-identical here (the same weights and kernels); 1e-5 of these ~1-sized images still tells a wrong code
        assert (again.detokenize(tokens) - model.detokenize(tokens)).abs().max() <= 1e-5
        assert (again.decode(again.encode(x)) - model.decode(model.encode(x))).abs().max() <= 1e-5
        b, h, w = tokens.shape  # diffusers decodes ids from a channels-last view (other kernels)
        from_ids = vq.decode(tokens.reshape(-1), force_not_quantize=True, shape=(b, h, w, -1)).sample
        assert_close_across_kernels(from_ids, model.detokenize(tokens),
                                    layers=weight_layers(model.post_quant_conv, model.decoder))


@pytest.mark.slow
def test_usage_over_two_ranks_equals_the_union_batch(tmp_path):
    """2 gloo ranks with different batches, one of them empty (see dist_simvq_worker.py)."""
    run_gloo_ranks("dist_simvq_worker.py", tmp_path)
