"""The rotation trick (Fifty et al. 2024) against its closed form, alone and as the VQ / SimVQ gradient estimator."""
import pytest
import torch

from latentae.config import ConfigError
from latentae.quantizers.base import flatten_channels_last, unflatten_channels_last
from latentae.quantizers.residual import ResidualVQ
from latentae.quantizers.simvq import SimVQ
from latentae.quantizers.vector import VectorQuantizer, rotation_trick


def _rotation(e: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (R [N, D, D], lambda [N]) of the paper, R = I - 2 r r^T + 2 q^ e^^T, built as explicit matrices."""
    e_hat = e / e.norm(dim=1, keepdim=True)
    q_hat = q / q.norm(dim=1, keepdim=True)
    r = (e_hat + q_hat) / (e_hat + q_hat).norm(dim=1, keepdim=True)
    eye = torch.eye(e.shape[1], dtype=e.dtype)
    rot = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * q_hat[:, :, None] * e_hat[:, None, :]
    return rot, q.norm(dim=1) / e.norm(dim=1)


def test_forward_is_the_code_and_gradient_is_the_transposed_rotation():
    torch.manual_seed(0)
    e = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 4, dtype=torch.float64)
    g = torch.randn(6, 4, dtype=torch.float64)
    out = rotation_trick(q, e)
    assert torch.equal(out, q)  # the code bit for bit, not lambda R e with its rounding
    (grad,) = torch.autograd.grad(out, e, g)

    rot, lam = _rotation(e.detach(), q)
    # the hand formula is the paper's: lambda R maps e onto q, and R is a rotation
    torch.testing.assert_close(lam[:, None] * (rot @ e.detach()[:, :, None])[..., 0], q)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(4, dtype=torch.float64).expand(6, 4, 4))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(6, dtype=torch.float64))
    expected = lam[:, None] * (rot.transpose(1, 2) @ g[:, :, None])[..., 0]  # (lambda R)^T g, R and lambda constant
    torch.testing.assert_close(grad, expected)  # float64, a dozen ops: default float64 tolerances
    assert not torch.allclose(grad, g)  # not the straight-through copy


def test_gradient_keeps_its_angle_to_the_code_and_scales_by_the_norm_ratio():
    """The paper's property: the angle between the gradient and e equals that between the code's gradient and q."""
    torch.manual_seed(1)
    e = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    q = 3 * torch.randn(8, 5, dtype=torch.float64)
    g = torch.randn(8, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad(rotation_trick(q, e), e, g)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(grad, e.detach()), cos(g, q))
    torch.testing.assert_close(grad.norm(dim=1), q.norm(dim=1) / e.detach().norm(dim=1) * g.norm(dim=1))


def test_degenerate_rows_stay_finite():
    e = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # e = 0; e opposite q; e along q
    out = rotation_trick(q, e)
    assert torch.equal(out, q)
    (grad,) = torch.autograd.grad(out, e, torch.ones(3, 3))
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[0], torch.ones(3))  # no direction to rotate: the identity gradient
    # opposite: R = I - 2 q^ q^T reflects along q^ (still R e^ = q^), lambda = 2
    torch.testing.assert_close(grad[1], torch.tensor([-2.0, 2.0, 2.0]))
    torch.testing.assert_close(grad[2], 2 * torch.ones(3))  # same direction: R = I, lambda = 2


@pytest.mark.parametrize("cls", [VectorQuantizer, SimVQ])
def test_quantizer_option_uses_the_rotation(cls):
    torch.manual_seed(2)
    q = cls(4, codebook_size=8, grad_estimator="rotation")
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    codes = q.codebook()[out.indices.reshape(-1)]
    assert torch.equal(flatten_channels_last(out.quantized), codes)  # forward unchanged: exactly the code
    g = torch.randn_like(z)
    (grad,) = torch.autograd.grad(out.quantized, z, g)
    e = flatten_channels_last(z.detach()).double()
    rot, lam = _rotation(e, codes.double())
    expected = lam[:, None] * (rot.transpose(1, 2) @ flatten_channels_last(g).double()[:, :, None])[..., 0]
    # fp32 inside the quantizer (norms, two dot products over 4 channels): a few ulps of ~1-sized values
    torch.testing.assert_close(grad.double(), unflatten_channels_last(expected, z.shape), rtol=1e-5, atol=1e-6)
    (ste,) = torch.autograd.grad(cls(4, codebook_size=8)(z).quantized, z, g)
    assert torch.equal(ste, g) and not torch.allclose(grad, g)  # default: the straight-through identity


def test_option_is_checked():
    with pytest.raises(ConfigError, match="grad_estimator"):
        VectorQuantizer(4, grad_estimator="reflection")
    with pytest.raises(ConfigError, match="grad_estimator"):  # residual has one straight-through for the sum
        ResidualVQ(4, num_stages=2, grad_estimator="rotation")


def test_export_keeps_the_estimator_for_fine_tuning(tmp_path):
    """A VQModel export re-imports with grad_estimator: rotation (recorded in latentae.json), so fine-tuning the
    exported tokenizer keeps its gradient estimator."""
    import latentae
    from latentae.exporting import export
    from latentae.models import ModelConfig, build_model

    model = build_model(ModelConfig(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                    latent_channels=8, quantizer={"kind": "vq", "codebook_size": 8,
                                                                  "grad_estimator": "rotation"}))
    export(model, tmp_path)
    again = latentae.load(tmp_path)
    assert again.config["quantizer"]["grad_estimator"] == "rotation"
    assert again.quantize.grad_estimator == "rotation"
