"""The contract every quantizer kind of `latentae.quantizers` keeps, each built at tiny options: tokens in range
that `indices_to_codes` turns back into forward's codes bit for bit, fp32 maths inside a low-precision model, and
an export round trip that keeps the tokens. What only one kind does is tested in that kind's file."""
import pytest
import torch

from latentae.quantizers import KINDS, build_quantizer

TINY = {  # kind -> options for 6 input channels: small, and a projection wherever the kind has one
    "vq": {"codebook_size": 16},
    "simvq": {"codebook_size": 16},
    "fsq": {"levels": [8, 5, 5, 5]},
    "lfq": {"codebook_size": 16},
    "ibq": {"codebook_size": 32, "chunk_logits": 5 * 32},  # chunked logits: several chunks per forward
    "bsq": {"codebook_size": 16},
    "gumbel": {"codebook_size": 16, "codebook_dim": 3},
    "residual": {"num_stages": 2, "codebook_size": 16},
    "vqvae2": {"codebook_size": 16, "hidden": 8},
}
DIM = 6
EXPORTED_AS = {"simvq": "vq"}  # SimVQ's W(C) is an ordinary codebook at inference (exported as a VQModel)


def tiny(kind: str):
    torch.manual_seed(0)
    return build_quantizer(DIM, {"kind": kind, **TINY[kind]})


def test_every_kind_is_in_the_contract():
    assert set(TINY) == set(KINDS)


def check_tokens(q, z: torch.Tensor) -> None:
    """Indices in range, [B, H, W] (or [B, H, W, S] for S stages or levels) int64; indices_to_codes gives forward's
    `quantized` bit for bit, the same on every call."""
    out = q(z)
    b, _, h, w = z.shape
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    assert out.indices.shape[:3] == (b, h, w) and out.indices.ndim in (3, 4) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size
    decoded = q.indices_to_codes(out.indices)
    assert torch.equal(decoded, out.quantized)
    assert torch.equal(q.indices_to_codes(out.indices), decoded)


def check_low_precision(q, z_channels: int) -> None:
    """fp32 maths inside, input dtype outside: under bf16 autocast and with the module cast to bf16."""
    torch.manual_seed(5)
    q = q.eval()
    z = torch.randn(1, z_channels, 4, 4).bfloat16()
    ref = q(z.float())  # fp32 on the same values: the same ops and shapes in one process, so equal bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert out.quantized.dtype == torch.bfloat16 and torch.equal(out.indices, ref.indices)
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    assert torch.equal(out.quantized, ref.quantized.bfloat16())
    assert torch.equal(q.indices_to_codes(out.indices).bfloat16(), out.quantized)
    q = q.bfloat16()  # a model cast wholesale: projections run in bf16, the rest in fp32
    out = q(z)
    assert out.quantized.dtype == torch.bfloat16 and out.indices.dtype == torch.int64
    assert torch.equal(q.indices_to_codes(out.indices).bfloat16(), out.quantized)


def check_export_round_trip(spec: dict, export_dir) -> torch.Tensor:
    """A tiny tokenizer with quantizer `spec`, exported in latentae's format and loaded again: the same tokens and
    the same reconstructions, bit for bit (the same weights run through the same kernels in one process)."""
    import latentae
    from latentae.exporting import export
    from latentae.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                    latent_channels=8, sample_size=32, quantizer=spec)).eval()
    export(model, export_dir)
    again = latentae.load(export_dir)
    kind = spec["kind"]
    assert again.config["quantizer"] == {**model.config["quantizer"], "kind": EXPORTED_AS.get(kind, kind)}
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens = model.tokenize(x)
        assert torch.equal(again.tokenize(x), tokens)
        assert torch.equal(again.detokenize(tokens), model(x).reconstruction)
    return tokens


@pytest.mark.parametrize("kind", list(TINY))
def test_tokens_in_range_and_indices_to_codes_is_forward(kind):
    """In evaluation, after two training forwards (codebooks that learn from data have moved)."""
    q = tiny(kind)
    z = torch.randn(2, DIM, 4, 6, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        q.train()(z)
    check_tokens(q.eval(), z)


@pytest.mark.parametrize("kind", list(TINY))
def test_low_precision_inputs_and_models(kind):
    check_low_precision(tiny(kind), DIM)


@pytest.mark.parametrize("kind", list(TINY))
def test_export_round_trip_keeps_tokens(kind, tmp_path):
    tokens = check_export_round_trip({"kind": kind, **TINY[kind]}, tmp_path / "export")
    assert tokens.shape[:3] == (2, 16, 16)  # 32 px, two levels: 2x downsampling
