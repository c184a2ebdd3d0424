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
