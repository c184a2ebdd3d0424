import math

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks
from test_quantizer_contract import check_tokens
from torch.utils._python_dispatch import TorchDispatchMode

from latentae.config import ConfigError
from latentae.quantizers import build_quantizer
from latentae.quantizers.ibq import IBQ
from latentae.quantizers.vector import VectorQuantizer

OPTIONS = dict(beta=0.3, commitment_weight=0.7, double_weight=0.9, entropy_weight=0.2, diversity_gamma=1.5,
               entropy_temperature=0.5)


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _published_loss(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The authors' formulation (float64): logits x.e, one_hot = hard - sg(soft) + soft, q = one_hot @ E; the
    quantization loss of three mse terms and MAGVIT-v2's entropy term on softmax(logits / T), weighted as OPTIONS."""
    logits = x @ codebook.T
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), codebook.shape[0]).double()
    q = (hard - soft.detach() + soft) @ codebook
    q_hard = hard @ codebook
    probs = (logits / OPTIONS["entropy_temperature"]).softmax(-1)
    per_sample = -(probs * probs.log()).sum(-1).mean()
    mean = probs.mean(0)
    codebook_entropy = -(mean * mean.log()).sum()
    terms = {
        "double": OPTIONS["double_weight"] * (q - x).pow(2).mean(),
        "commitment": OPTIONS["commitment_weight"] * (q_hard.detach() - x).pow(2).mean(),
        "codebook": OPTIONS["beta"] * (q_hard - x.detach()).pow(2).mean(),
        "entropy_per_sample": OPTIONS["entropy_weight"] * per_sample,
        "entropy_codebook": -OPTIONS["entropy_weight"] * OPTIONS["diversity_gamma"] * codebook_entropy,
    }
    return q, terms


def _make(dim=4, codebook_size=16, seed=0, **options) -> IBQ:
    torch.manual_seed(seed)
    return IBQ(dim, codebook_size=codebook_size, **{**OPTIONS, **options})


def test_matches_the_published_equations():
    ibq = _make()
    z = torch.randn(2, 4, 3, 2, requires_grad=True)
    out = ibq(z)
    x64 = _flat(z.detach()).double().requires_grad_()
    e64 = ibq.embedding.weight.detach().double().requires_grad_()
    q, terms = _published_loss(x64, e64)
    assert torch.equal(out.indices.flatten(), (x64 @ e64.T).argmax(-1))
    assert torch.equal(_flat(out.quantized), q.detach().float())  # the code itself, exactly
    assert set(out.losses) == set(terms)
    for name, value in terms.items():  # fp32 against float64 over a few dozen terms: ~1e-6 relative
        assert out.losses[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    assert out.stats["codebook_entropy"].item() == pytest.approx(-terms["entropy_codebook"].item() / 0.3, rel=1e-5)
    r = torch.randn(out.quantized.shape)  # a decoder-like use of the code, through the straight-through one-hot
    (out.loss + (out.quantized * r).sum()).backward()
    (sum(terms.values()) + (q * _flat(r).double()).sum()).backward()
    # fp32 softmaxes and matmuls against float64: relative ~1e-6 of each gradient's scale
    assert torch.allclose(_flat(z.grad).double(), x64.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ibq.embedding.weight.grad.double(), e64.grad, rtol=1e-4, atol=1e-6)


def test_every_code_gets_gradient_unlike_vq():
    ibq = _make(codebook_size=32)
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = ibq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()  # no loss term: the code's use alone
    assert out.indices.unique().numel() < 32
    assert ibq.embedding.weight.grad.abs().sum(1).gt(0).all()  # every code, chosen or not
    assert z.grad.abs().gt(0).all()  # and the encoder
    vq = VectorQuantizer(4, codebook_size=32)
    out = vq(z)
    (out.loss + (out.quantized * torch.randn_like(out.quantized)).sum()).backward()
    assert vq.embedding.weight.grad.abs().sum(1).gt(0).sum() == out.indices.unique().numel()  # the chosen only


@pytest.mark.parametrize("train", [True, False])
def test_chunked_equals_unchunked(train):
    whole, chunked, single = (_make(dim=5, codebook_size=64, chunk_logits=c).train(train) for c in (10**6, 3 * 64, 1))
    assert (whole.chunk_rows, chunked.chunk_rows, single.chunk_rows) == (10**6 // 64, 3, 1)
    z = torch.randn(2, 5, 3, 5, requires_grad=True)  # 30 rows: 1, 10 and 30 chunks
    logits = (_flat(z.detach()).double() @ whole.embedding.weight.detach().double().T).sort(-1).values
    assert (logits[:, -1] - logits[:, -2]).min() > 1e-3  # no near-tie that a last-ulp difference could flip
    ref = whole(z)
    ref.loss.backward()
    ref_grads = z.grad.clone(), whole.embedding.weight.grad.clone()
    for q in (chunked, single):
        z.grad = None
        out = q(z)
        out.loss.backward()
        assert torch.equal(out.indices, ref.indices) and torch.equal(out.quantized, ref.quantized)
        # per-chunk sums of per-row terms added in another order: a few fp32 ulps
        for name, value in ref.losses.items():
            assert torch.allclose(out.losses[name], value, rtol=1e-5, atol=1e-7), name
        for name in ("codebook_entropy", "per_sample_entropy", "usage", "perplexity"):
            assert torch.allclose(out.stats[name], ref.stats[name], rtol=1e-5), name
        assert torch.allclose(z.grad, ref_grads[0], rtol=1e-5, atol=1e-7)
        assert torch.allclose(q.embedding.weight.grad, ref_grads[1], rtol=1e-5, atol=1e-7)


class _LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op creates."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


def test_memory_stays_bounded_at_2_to_the_18_codes():
    codebook_size, chunk = 2**18, 2**20  # 4 rows per chunk
    ibq = IBQ(4, codebook_size=codebook_size, chunk_logits=chunk)
    z = torch.randn(2, 4, 4, 4, requires_grad=True)  # 32 rows: the logits would be 2^23 elements at once
    saved = {}  # storage -> elements of the tensors kept for the backward pass

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _LargestTensor() as mode:
        out = ibq(z)
    # The codebook, rows x dim inputs and per-code sums, never rows x codes (each checkpointed chunk keeps only
    # its inputs and recomputes the rest); unchunked, 26 x codebook_size are kept.
    assert sum(saved.values()) < 3 * codebook_size * 4
    with _LargestTensor() as backward_mode:
        out.loss.backward()
    assert max(mode.largest, backward_mode.largest) <= chunk  # one chunk's logits at most
    assert torch.isfinite(z.grad).all() and ibq.embedding.weight.grad.abs().sum(1).gt(0).all()
    assert 0 < out.stats["codebook_entropy"] <= math.log(32)  # 32 rows spread over at most 32 codes


@pytest.mark.parametrize("dim,codebook_size", [(4, 16), (8, 300)])
def test_indices_in_range_and_tokens_to_codes_deterministic(dim, codebook_size):
    torch.manual_seed(3)
    ibq = build_quantizer(dim, {"kind": "ibq", "codebook_size": codebook_size, "chunk_logits": 7 * codebook_size})
    check_tokens(ibq.train(), torch.randn(2, dim, 5, 4))
    check_tokens(ibq.eval(), torch.randn(2, dim, 5, 4))


def test_bad_arguments_and_shapes_raise():
    for option in ({"codebook_size": 1}, {"entropy_temperature": 0.0}, {"chunk_logits": 0}):
        with pytest.raises(ConfigError, match=next(iter(option))):
            IBQ(4, **{"codebook_size": 16, **option})
    ibq = IBQ(4, codebook_size=16)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        ibq(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        ibq.indices_to_codes(torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.slow
def test_statistics_over_two_ranks_equal_the_union_batch(tmp_path, monkeypatch):
    """2 gloo ranks with different batches and chunk counts, one of them empty (see dist_entropy_worker.py)."""
    monkeypatch.setenv("DIST_QUANTIZER", "ibq")
    run_gloo_ranks("dist_entropy_worker.py", tmp_path)
