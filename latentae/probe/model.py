"""The probe's diffusion model: a small DiT (diffusers' `DiTTransformer2DModel`, one class: unconditional)
trained with flow matching (rectified flow, Liu et al. 2022; Lipman et al. 2022):
x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, MSE loss; sampling integrates dx/dt = v from t = 1
(noise) to t = 0 with Euler steps."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from latentae.errors import LatentaeError
from latentae.options import PROBE_BUDGETS

# Noise levels of the validation loss: each gets its own fixed eps, so the number is deterministic.
VAL_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Budget:
    """Everything the probe holds fixed across the models it compares."""
    resolution: int  # image side (px) the latents are encoded at
    max_images: int  # images read (train + val)
    val_images: int  # the first ones are validation
    steps: int  # optimizer steps
    batch_size: int
    eval_every: int  # steps between points of the validation curve
    lr: float
    heads: int
    head_dim: int
    layers: int
    patch_size: int  # latent positions per token side; the latent side must be a multiple
    samples: int  # images drawn and decoded per model: the sample metric compares them with the val images
    sample_steps: int  # Euler steps per sample

    def as_dict(self) -> dict:
        return asdict(self)


BUDGETS = {
    "smoke": Budget(resolution=32, max_images=16, val_images=4, steps=6, batch_size=4, eval_every=3, lr=1e-3,
                    heads=2, head_dim=8, layers=1, patch_size=2, samples=4, sample_steps=4),
    "cpu": Budget(resolution=64, max_images=2048, val_images=256, steps=1500, batch_size=16, eval_every=250,
                  lr=3e-4, heads=4, head_dim=16, layers=2, patch_size=1, samples=256, sample_steps=50),
    "gpu": Budget(resolution=256, max_images=20000, val_images=1000, steps=20000, batch_size=128, eval_every=1000,
                  lr=2e-4, heads=6, head_dim=64, layers=12, patch_size=2, samples=1000, sample_steps=100),
}
assert set(BUDGETS) == set(PROBE_BUDGETS), "latentae.options.PROBE_BUDGETS lists the CLI's choices"

# Sustained DiT FLOP/s of a probe run (training, validation and sampling FLOPs over the run's wall time, which also
# holds decoding and the sample metrics), for the duration printed before a run. cpu: measured 2026-12-07 with the
# cpu budget (64 px, 2 models, 10.9 min: 14.5 GFLOP/s; at 32 px, 5 models: 11.4) at one thread, AMD EPYC, 2 cores
# shared (load 4-6). cuda: assumed, not measured: ~30% of an H100's 67 TFLOP/s dense fp32 (torch leaves TF32 off
# for matmuls), which puts the gpu budget at ~70 min per f8 model (86 PFLOP; BENCHMARKS.md, Diffusability).
THROUGHPUT = {"cpu": 14.5e9, "cuda": 2e13}


def forward_flops(dit, channels: int, side: int) -> int:
    """FLOPs of one image's DiT forward (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(dit.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        velocity(dit, torch.zeros(1, channels, side, side, device=device), torch.full((1,), 0.5, device=device))
    return counter.get_total_flops()


def run_flops(budget: Budget, per_image: int) -> float:
    """DiT FLOPs of one model's probe run: training steps (backward ~2x forward), validation curve, sampling."""
    evals = len(set(range(0, budget.steps + 1, budget.eval_every)) | {budget.steps})
    return per_image * (3 * budget.batch_size * budget.steps + len(VAL_LEVELS) * budget.val_images * evals
                        + budget.samples * budget.sample_steps)


def make_dit(*, channels: int, side: int, budget: Budget):
    from diffusers import DiTTransformer2DModel
    from diffusers.models.embeddings import LabelEmbedding

    if side % budget.patch_size:
        raise LatentaeError(f"latents of side {side} do not split into {budget.patch_size}x{budget.patch_size} "
                            f"patches; choose a --resolution whose latent side is a multiple of "
                            f"{budget.patch_size}")
    dit = DiTTransformer2DModel(num_attention_heads=budget.heads, attention_head_dim=budget.head_dim,
                                in_channels=channels, num_layers=budget.layers, sample_size=side,
                                patch_size=budget.patch_size, num_embeds_ada_norm=1)
    for module in dit.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0  # no classifier-free guidance to train (one class); and no global RNG draws
    return dit


def velocity(dit, x: Tensor, t: Tensor) -> Tensor:
    """The predicted v at noise level t [B] in [0, 1] (DiT's timestep embedding expects 0..1000)."""
    labels = torch.zeros(len(x), dtype=torch.long, device=x.device)  # the one class: unconditional
    return dit(x, timestep=t * 1000, class_labels=labels).sample


def flow_loss(dit, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    tb = t.view(-1, 1, 1, 1)
    return torch.nn.functional.mse_loss(velocity(dit, (1 - tb) * x0 + tb * eps, t), eps - x0)


@torch.no_grad()
def validation_loss(dit, val: Tensor, *, seed: int, batch_size: int) -> dict[float, float]:
    """Flow-matching loss on `val` at each of VAL_LEVELS, with eps drawn once per level from `seed`."""
    dit.eval()
    out = {}
    for i, level in enumerate(VAL_LEVELS):
        eps = torch.randn(val.shape, generator=torch.Generator().manual_seed(seed + i))
        total = 0.0
        for start in range(0, len(val), batch_size):
            x0 = val[start:start + batch_size]
            t = torch.full((len(x0),), level)
            device = next(dit.parameters()).device
            loss = flow_loss(dit, x0.to(device), t.to(device), eps[start:start + batch_size].to(device))
            total += loss.item() * len(x0)
        out[level] = total / len(val)
    dit.train()
    return out


def train(dit, train_latents: Tensor, val: Tensor, *, budget: Budget, seed: int) -> list[dict]:
    """Trains `dit` for budget.steps (batches, t ~ U(0, 1) and eps drawn from `seed`); returns the validation
    curve: [{"step", "loss": {level: loss}, "mean"}] at step 0, every budget.eval_every steps and the last."""
    device = next(dit.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(dit.parameters(), lr=budget.lr, weight_decay=0.0)
    curve = []

    def evaluate(step):
        loss = validation_loss(dit, val, seed=seed, batch_size=budget.batch_size)
        curve.append({"step": step, "loss": loss, "mean": sum(loss.values()) / len(loss)})

    from tqdm import tqdm

    dit.train()
    evaluate(0)
    bar = tqdm(range(1, budget.steps + 1), desc="probe: DiT", leave=False)  # the cpu budget runs for minutes
    for step in bar:
        idx = torch.randint(0, len(train_latents), (budget.batch_size,), generator=g)
        x0 = train_latents[idx]
        t = torch.rand(len(x0), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = flow_loss(dit, x0.to(device), t.to(device), eps.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % budget.eval_every == 0 or step == budget.steps:
            evaluate(step)
            bar.set_postfix(val_loss=f"{curve[-1]['mean']:.4f}")
    return curve


@torch.no_grad()
def sample(dit, shape: tuple[int, ...], *, steps: int, seed: int, batch_size: int) -> Tensor:
    """Euler integration of dx/dt = v from noise (t = 1) to data (t = 0), `batch_size` samples at a time; noise
    drawn from `seed`."""
    device = next(dit.parameters()).device
    dit.eval()
    ts = torch.linspace(1.0, 0.0, steps + 1)
    out = []
    for x in torch.randn(shape, generator=torch.Generator().manual_seed(seed)).split(batch_size):
        x = x.to(device)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t).item() * velocity(dit, x, torch.full((len(x),), t.item(), device=device))
        out.append(x.cpu())
    return torch.cat(out)
