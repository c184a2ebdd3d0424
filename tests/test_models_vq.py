"""VQ tokenizer: VQModel export/import with identical tokens and decodes; latentae's format for the rest."""
import pytest
import torch
from diffusers import VQModel

import latentae
from conftest import assert_close_across_kernels, weight_layers
from latentae.exporting import export
from latentae.models import ModelConfig, VQTokenizer, build_model

TINY = dict(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=8,
            sample_size=32)
VQ_VARIANTS = {
    "plain": {"kind": "vq", "codebook_size": 64},
    "l2_lowdim": {"kind": "vq", "codebook_size": 64, "codebook_dim": 4, "l2_normalize": True},
    "ema": {"kind": "vq", "codebook_size": 64, "ema_decay": 0.9},
}
OTHER = {
    "fsq": {"kind": "fsq", "levels": [5, 4, 3]},
    "lfq": {"kind": "lfq", "codebook_size": 32},
    "gumbel": {"kind": "gumbel", "codebook_size": 32, "codebook_dim": 4},
    "residual": {"kind": "residual", "num_stages": 2, "codebook_size": 16, "codebook_dim": 4},
}


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def trained(spec, steps=3):
    """A few optimizer steps so codebook, projections and EMA state are not at their initial values."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, quantizer=spec))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        out = model(images(4, seed=step))
        ((out.reconstruction - images(4, seed=step)).abs().mean() + out.quant.loss).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("variant", VQ_VARIANTS)
def test_export_to_vqmodel_same_tokens_and_decodes(tmp_path, variant):
    model = trained(VQ_VARIANTS[variant])
    export(model, tmp_path)
    vq = VQModel.from_pretrained(tmp_path).eval()
    x = images(3, seed=9)
    with torch.no_grad():
        tokens = model.tokenize(x)
        h = vq.encode(x).latents
        _, _, (_, _, vq_tokens) = vq.quantize(h)
        # exact: the same encoder modules and the same cdist on the same batch (the same kernels)
        assert torch.equal(vq_tokens.reshape(tokens.shape), tokens)
        assert len(tokens.unique()) > 1  # a meaningful comparison, not one code everywhere
        ours = model.decode(model.encode(x))
        # diffusers quantizes again inside decode (a straight-through rounding residue) and decodes ids from a
        # channels-last view (other kernels): close up to that rounding
        decoder = weight_layers(model.post_quant_conv, model.decoder)
        assert_close_across_kernels(vq.decode(h).sample, ours, layers=decoder)
        b, hh, ww = tokens.shape
        from_ids = vq.decode(tokens.reshape(-1), force_not_quantize=True, shape=(b, hh, ww, -1)).sample
        assert_close_across_kernels(from_ids, model.detokenize(tokens), layers=decoder)


@pytest.mark.parametrize("variant", VQ_VARIANTS)
def test_exported_vqmodel_reimports_identically(tmp_path, variant):
    model = trained(VQ_VARIANTS[variant])
    export(model, tmp_path)
    again = latentae.load(tmp_path)
    x = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(again.tokenize(x), model.tokenize(x))  # the same weights, batch and kernels
        # (bit-identical here; 1e-5 of these ~1-sized images still tells a wrong weight)
        assert (again.decode(again.encode(x)) - model.decode(model.encode(x))).abs().max() <= 1e-5


def test_vqmodel_made_elsewhere_imports(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=8,
                 num_vq_embeddings=32, vq_embed_dim=4, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2).eval()
    vq.save_pretrained(tmp_path)
    model = latentae.load(tmp_path)
    assert isinstance(model, VQTokenizer)
    x = images(2)
    with torch.no_grad():
        h = vq.encode(x).latents
        _, _, (_, _, vq_tokens) = vq.quantize(h)
        assert torch.equal(model.tokenize(x).reshape(-1), vq_tokens)  # the same modules, batch and cdist
        assert_close_across_kernels(model.decode(model.encode(x)), vq.decode(h).sample,  # diffusers re-quantizes
                                    layers=weight_layers(model.post_quant_conv, model.decoder))


@pytest.mark.parametrize("kind", OTHER)
def test_other_quantizers_use_latentae_format(tmp_path, kind):
    model = trained(OTHER[kind], steps=2)
    export(model, tmp_path)
    assert '"format": "latentae"' in (tmp_path / "latentae.json").read_text()
    again = latentae.load(tmp_path)
    x = images(2, seed=4)
    with torch.no_grad():
        tokens = model.tokenize(x)
        assert torch.equal(again.tokenize(x), tokens)  # the same weights, batch and kernels
        assert tokens.min() >= 0 and tokens.max() < model.quantize.codebook_size
        assert torch.equal(again.detokenize(tokens), model.detokenize(tokens))
        # encode's straight-through output may differ from the looked-up codes by a rounding residue
        assert_close_across_kernels(model.detokenize(tokens), model.decode(model.encode(x)),
                                    layers=weight_layers(model.post_quant_conv, model.decoder))


def test_forward_returns_quantizer_output():
    model = build_model(ModelConfig(**TINY, quantizer=VQ_VARIANTS["plain"]))
    out = model(images())
    assert out.reconstruction.shape == (2, 3, 32, 32) and out.posterior is None
    assert set(out.quant.losses) == {"commitment", "codebook"}
    assert {"usage", "perplexity"} <= set(out.quant.stats)
