import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks

from latentae.config import ConfigError
from latentae.quantizers.base import flatten_channels_last, unflatten_channels_last
from latentae.quantizers.residual import ResidualVQ
from latentae.quantizers.vector import LAPLACE_EPS, VectorQuantizer


def _chosen_codes(vq: VectorQuantizer, indices: torch.Tensor) -> torch.Tensor:
    """The selected codes (before project_out) laid out as [B, codebook_dim, H, W]."""
    b, h, w = indices.shape
    return unflatten_channels_last(vq.codebook()[indices.reshape(-1)], (b, -1, h, w))


def _set_codebook(vq: VectorQuantizer, codes) -> None:
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.as_tensor(codes, dtype=torch.float32))


def test_commitment_gradient_reaches_encoder_with_beta_and_codebook_term_is_unweighted():
    torch.manual_seed(0)
    beta = 0.3
    vq = VectorQuantizer(3, codebook_size=5, beta=beta)
    _set_codebook(vq, torch.randn(5, 3))
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(z)
    e = _chosen_codes(vq, out.indices)
    weight = vq.embedding.weight
    numel = z.numel()
    assert set(out.losses) == {"commitment", "codebook"}
    assert out.losses["commitment"].item() == pytest.approx(beta * F.mse_loss(z, e).item(), rel=1e-6)
    assert out.losses["codebook"].item() == pytest.approx(F.mse_loss(z, e).item(), rel=1e-6)

    gz, gw = torch.autograd.grad(out.losses["commitment"], [z, weight], retain_graph=True, allow_unused=True)
    torch.testing.assert_close(gz, 2 * beta * (z - e).detach() / numel)
    assert gw is None or torch.count_nonzero(gw) == 0  # the commitment term leaves the codebook alone

    gz, gw = torch.autograd.grad(out.losses["codebook"], [z, weight], allow_unused=True)
    assert gz is None or torch.count_nonzero(gz) == 0  # the codebook term leaves the encoder alone
    z_rows, e_rows = flatten_channels_last(z.detach()), flatten_channels_last(e)
    one_hot = F.one_hot(out.indices.reshape(-1), 5).float()  # [N, K]
    torch.testing.assert_close(gw, one_hot.T @ (2 * (e_rows - z_rows) / numel))  # unweighted


def test_straight_through_forward_is_the_code_and_gradient_is_identity():
    torch.manual_seed(1)
    vq = VectorQuantizer(4, codebook_size=8)
    _set_codebook(vq, torch.randn(8, 4))
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = vq(z)
    rows = flatten_channels_last(z.detach())
    expected_idx = ((rows[:, None, :] - vq.codebook()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(out.indices.reshape(-1), expected_idx)
    assert torch.equal(out.quantized, _chosen_codes(vq, out.indices))  # exactly the code, no rounding residue
    (gz,) = torch.autograd.grad(out.quantized.sum(), z)
    assert torch.equal(gz, torch.ones_like(z))


def test_ema_update_matches_hand_computation():
    torch.manual_seed(2)
    k, d, decay = 3, 2, 0.5  # a fast decay: the unused code's count gets small enough for smoothing to show
    vq = VectorQuantizer(d, codebook_size=k, ema_decay=decay)
    w = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 20.0]])  # code 2 is never chosen
    _set_codebook(vq, w)
    vq.ema_embed_sum.copy_(w)
    assert not vq.embedding.weight.requires_grad
    counts_hand, sums_hand = torch.ones(k), w.clone()  # one pseudo-assignment per code at its initial value
    for step in range(3):
        z = torch.randn(2, d, 2, 3) + step
        out = vq(z)
        assert "codebook" not in out.losses  # the codebook learns by EMA only
        x = flatten_channels_last(z)
        idx = torch.cdist(x, w).argmin(1)
        assert torch.equal(out.indices.reshape(-1), idx)  # looked up with the codebook before this update
        one_hot = F.one_hot(idx, k).float()
        counts_hand = decay * counts_hand + (1 - decay) * one_hot.sum(0)
        sums_hand = decay * sums_hand + (1 - decay) * one_hot.T @ x
        total = counts_hand.sum()
        smoothed = (counts_hand + LAPLACE_EPS) / (total + k * LAPLACE_EPS) * total
        w = sums_hand / smoothed[:, None]
        torch.testing.assert_close(vq.ema_cluster_size, counts_hand)
        torch.testing.assert_close(vq.ema_embed_sum, sums_hand)
        torch.testing.assert_close(vq.embedding.weight, w)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_dead_code_restart_replaces_unused_codes_with_batch_outputs(ema_decay):
    torch.manual_seed(3)
    threshold, window = 2.0, 10
    vq = VectorQuantizer(2, codebook_size=4, dead_code_threshold=threshold, usage_window=window, ema_decay=ema_decay)
    w0 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0], [-100.0, 100.0]])  # codes 2, 3: far from data
    _set_codebook(vq, w0)
    if ema_decay is not None:
        vq.ema_embed_sum.copy_(w0)
    # 12 rows near code 0, 4 near code 1 (enough to stay above the threshold), none near codes 2 and 3
    x = torch.cat([0.1 * torch.randn(12, 2), torch.tensor([10.0, 0.0]) + 0.1 * torch.randn(4, 2)])
    z = x.T.reshape(1, 2, 4, 4).requires_grad_()
    out = vq(z)
    out.loss.backward()  # in-place restarts must not break the backward of this forward

    counts = torch.tensor([12.0, 4.0, 0.0, 0.0])
    decay = 1 - 1 / window
    usage = decay * threshold + (1 - decay) * counts
    dead = usage < threshold
    assert dead.tolist() == [False, False, True, True]
    w = vq.embedding.weight.detach()
    new = w[dead]
    # each restarted code is one of this batch's encoder outputs, two different ones
    matches = (new[:, None, :] == x[None]).all(-1)
    assert matches.any(1).all() and matches.float().argmax(1).unique().numel() == 2
    assert torch.equal(vq.usage_count[~dead], usage[~dead])
    assert torch.equal(vq.usage_count[dead], torch.full((2,), threshold))
    if ema_decay is None:
        assert torch.equal(w[~dead], w0[~dead])  # chosen codes untouched
    else:
        assert torch.equal(vq.ema_cluster_size[dead], torch.ones(2))  # restarted stats: one pseudo-assignment
        assert torch.equal(vq.ema_embed_sum[dead], new)


def test_dead_code_restart_off_by_default():
    vq = VectorQuantizer(2, codebook_size=4)
    _set_codebook(vq, [[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, 50.0]])
    before = vq.embedding.weight.detach().clone()
    vq(0.1 * torch.randn(1, 2, 4, 4))
    assert torch.equal(vq.embedding.weight, before) and not hasattr(vq, "usage_count")


@pytest.mark.parametrize("l2_normalize", [False, True])
def test_kmeans_init_recovers_clusters(l2_normalize):
    torch.manual_seed(4)
    angles = torch.tensor([0.3, 1.9, 3.5, 5.0])
    centers = 5 * torch.stack([angles.cos(), angles.sin()], 1)  # 4 well-separated clusters in 2-D
    labels = torch.arange(4).repeat_interleave(64)
    x = centers[labels] + 0.1 * torch.randn(256, 2)
    z = x.T.reshape(1, 2, 16, 16)
    vq = VectorQuantizer(2, codebook_size=4, kmeans_init=True, kmeans_iters=5, l2_normalize=l2_normalize)
    vq.eval()(z)
    assert not bool(vq.initialized)  # eval forwards do not initialize
    vq.train()(z)
    assert bool(vq.initialized)
    rows = F.normalize(x, dim=1) if l2_normalize else x
    means = torch.stack([rows[labels == c].mean(0) for c in range(4)])
    if l2_normalize:
        means = F.normalize(means, dim=1)
    order = vq.codebook() @ means.T  # match each code to the cluster it lies in
    assert sorted(order.argmax(1).tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(vq.codebook(), means[order.argmax(1)], atol=1e-5, rtol=1e-5)
    # later training forwards do not re-initialize
    before = vq.embedding.weight.detach().clone()
    vq(torch.randn(1, 2, 16, 16))
    assert torch.equal(vq.embedding.weight, before)


def test_kmeans_init_with_fewer_rows_than_codes_uses_every_row():
    torch.manual_seed(9)
    x = torch.randn(6, 3)
    vq = VectorQuantizer(3, codebook_size=10, kmeans_init=True)
    vq(x.T.reshape(1, 3, 2, 3))
    is_row = (vq.codebook()[:, None, :] == x[None]).all(-1)  # [codes, rows]
    assert is_row.any(1).all() and is_row.any(0).all()  # every code is a row, every row is a code


def test_l2_normalize_with_low_codebook_dim_is_cosine_lookup_on_the_sphere():
    torch.manual_seed(5)
    vq = VectorQuantizer(8, codebook_size=32, codebook_dim=3, l2_normalize=True)
    assert isinstance(vq.project_in, torch.nn.Linear) and isinstance(vq.project_out, torch.nn.Linear)
    z = torch.randn(2, 8, 4, 4)
    captured = []
    vq.project_out.register_forward_hook(lambda mod, inputs, output: captured.append(inputs[0].detach()))
    out = vq(z)
    projected = vq.project_in(flatten_channels_last(z)).detach()
    cosine = F.normalize(projected, dim=1) @ F.normalize(vq.embedding.weight.detach(), dim=1).T
    assert torch.equal(out.indices.reshape(-1), cosine.argmax(1))
    (before_out,) = captured
    torch.testing.assert_close(before_out.norm(dim=1), torch.ones(before_out.shape[0]))
    torch.testing.assert_close(before_out, vq.codebook()[out.indices.reshape(-1)])
    torch.testing.assert_close(vq.codebook().norm(dim=1), torch.ones(32))
    # the losses compare unit vectors
    unit = F.normalize(projected, dim=1)
    expected = F.mse_loss(unit, vq.codebook()[out.indices.reshape(-1)])
    assert out.losses["codebook"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("options", [
    {},
    {"codebook_dim": 3},
    {"codebook_dim": 3, "l2_normalize": True},
    {"ema_decay": 0.95, "dead_code_threshold": 0.5, "kmeans_init": True},
])
def test_indices_in_range_and_indices_to_codes_equals_quantized(options):
    torch.manual_seed(6)
    vq = VectorQuantizer(6, codebook_size=16, **options)
    z = torch.randn(3, 6, 5, 4)
    for _ in range(2):
        vq.train()(z)
    out = vq.eval()(z)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (3, 5, 4)
    assert out.indices.min() >= 0 and out.indices.max() < 16
    assert torch.equal(vq.indices_to_codes(out.indices), out.quantized)
    assert set(out.stats) == {"usage", "perplexity", "entropy"}
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in out.stats.values())


def test_eval_forward_changes_no_state():
    torch.manual_seed(7)
    vq = VectorQuantizer(4, codebook_size=8, ema_decay=0.9, dead_code_threshold=5.0, kmeans_init=True)
    vq(torch.randn(2, 4, 4, 4))
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(100 + torch.randn(2, 4, 4, 4))  # data that would restart every code in training
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_loading_a_bare_codebook_keeps_it_for_fine_tuning():
    torch.manual_seed(10)
    codes = torch.randn(8, 4)
    vq = VectorQuantizer(4, codebook_size=8, ema_decay=0.9, kmeans_init=True)
    missing, _ = vq.load_state_dict({"embedding.weight": codes}, strict=False)  # e.g. from an exported VQModel
    assert not any(k.startswith(("ema_", "initialized")) for k in missing)
    assert bool(vq.initialized) and torch.equal(vq.ema_embed_sum, codes)
    z = torch.randn(1, 4, 4, 4)
    out = vq(z)  # no k-means over the loaded codes; EMA moves only codes this batch used
    used = torch.zeros(8, dtype=torch.bool)
    used[out.indices.unique()] = True
    assert out.indices.reshape(-1).tolist() == torch.cdist(flatten_channels_last(z), codes).argmin(1).tolist()
    torch.testing.assert_close(vq.embedding.weight[~used], codes[~used], rtol=1e-4, atol=1e-4)
    # a full training checkpoint keeps its own statistics
    state = vq.state_dict()
    fresh = VectorQuantizer(4, codebook_size=8, ema_decay=0.9, kmeans_init=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ema_embed_sum, state["ema_embed_sum"])


def test_autocast_keeps_losses_in_fp32_and_output_in_input_dtype():
    torch.manual_seed(8)
    vq = VectorQuantizer(4, codebook_size=8, codebook_dim=2)
    z = torch.randn(2, 4, 4, 4)
    reference = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.bfloat16())
    assert out.quantized.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    # the lookup ran in fp32: the same codes as the fp32 run for all but near-ties from bf16 input rounding
    assert (out.indices == reference.indices).float().mean() > 0.9


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="beta"):
        VectorQuantizer(4, beta=-1.0)
    with pytest.raises(ConfigError, match="ema_decay"):
        VectorQuantizer(4, ema_decay=1.0)
    with pytest.raises(ConfigError, match="codebook_size"):
        VectorQuantizer(4, codebook_size=0)
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        VectorQuantizer(4, dead_code_threshold=-1)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        VectorQuantizer(4)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        VectorQuantizer(4).indices_to_codes(torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.slow
def test_two_ranks_with_different_data_stay_identical_and_never_hang(tmp_path):
    """EMA + dead-code restart + k-means on 2 gloo ranks fed different data (see dist_vq_worker.py)."""
    run_gloo_ranks("dist_vq_worker.py", tmp_path)


def test_nonfinite_rows_never_reach_the_ema_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, codebook_size=8, ema_decay=0.9, dead_code_threshold=0.5).train()
    z = torch.randn(2, 4, 3, 3)
    z[0, :, 1, 1] = float("nan")  # e.g. an fp16 overflow in one position
    z[1, 2, 0, 0] = float("inf")
    vq(z)
    vq(torch.randn(2, 4, 3, 3))
    assert torch.isfinite(vq.embedding.weight).all() and torch.isfinite(vq.ema_embed_sum).all()


def test_gradient_accumulation_updates_the_codebook_once_per_optimizer_step():
    """Micro-batches marked as one optimizer step leave the codebook alone until the last, then give the state
    of one forward on their union (EMA and dead-code usage per optimizer step, not per micro-batch)."""
    torch.manual_seed(0)
    codes = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])

    def make() -> VectorQuantizer:
        vq = VectorQuantizer(2, codebook_size=4, ema_decay=0.8, dead_code_threshold=1.0)
        _set_codebook(vq, codes)
        vq.ema_embed_sum.copy_(codes)
        return vq.train()

    def batch() -> torch.Tensor:  # 4 rows near every code: no code dies, so nothing random is restarted
        return codes[torch.arange(16) % 4].T.reshape(1, 2, 4, 4) + 0.3 * torch.randn(1, 2, 4, 4)

    accumulated, whole = make(), make()
    for step in range(2):
        first, last = batch(), batch()
        before = accumulated.embedding.weight.clone()
        accumulated.set_step(step, last_micro_batch=False)
        out_first = accumulated(first)
        assert torch.equal(accumulated.embedding.weight, before)  # nothing applied mid-step
        accumulated.set_step(step, last_micro_batch=True)
        out_last = accumulated(last)
        out_whole = whole(torch.cat([first, last]))
        assert torch.equal(torch.cat([out_first.indices, out_last.indices]), out_whole.indices)
        for name in ("embedding.weight", "ema_cluster_size", "ema_embed_sum", "usage_count"):
            # the same sums, added as two partial sums instead of one: float rounding only
            torch.testing.assert_close(accumulated.state_dict()[name], whole.state_dict()[name],
                                       rtol=1e-6, atol=1e-6)
        assert not torch.equal(accumulated.embedding.weight, before)

    residual = ResidualVQ(2, num_stages=2, codebook_size=4, ema_decay=0.8)
    residual.set_step(0, last_micro_batch=False)  # reaches the stage quantizers
    assert not any(q.last_micro_batch for q in residual.quantizers)
