"""Checks every quantizer must pass, shared by the per-quantizer test files."""
import torch


def check_low_precision(q, z_channels: int):
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


def check_tokens(q, z: torch.Tensor) -> None:
    """Indices in range, with the uniform shapes and dtypes; indices_to_codes gives forward's `quantized` bit for
    bit, the same on every call."""
    out = q(z)
    b, _, h, w = z.shape
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    assert out.indices.shape == (b, h, w) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size
    decoded = q.indices_to_codes(out.indices)
    assert torch.equal(decoded, out.quantized)
    assert torch.equal(q.indices_to_codes(out.indices), decoded)


def check_export_round_trip(spec: dict, export_dir):
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
    assert again.config["quantizer"] == model.config["quantizer"]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens = model.tokenize(x)
        assert torch.equal(again.tokenize(x), tokens)
        assert torch.equal(again.detokenize(tokens), model(x).reconstruction)
    return tokens
