"""This process's place in a distributed launch (torchrun or accelerate; a plain process is rank 0 of 1) and the
rank-safe collectives every layer uses. Single-process each collective returns its input, so world size 1 and N
run the same code; under a launch every rank must call each of them, in the same order."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks (in place on a copy). A no-op single-process; every rank must call it."""
    t = t.clone()
    if is_distributed():
        dist.all_reduce(t)
    return t


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * dist.get_world_size()


def sum_over_ranks(t: Tensor) -> Tensor:
    """Differentiable sum over ranks of `t`, for a statistic of the global batch that every rank's loss uses
    alike (DDP data parallelism). Forward: one all-reduce, which every rank must call. Backward: world_size x
    the incoming gradient, with no collective: that is what all-reducing the identical gradients of every
    rank's loss would give, and after DDP averages gradients over ranks, each rank's rows get the gradient
    of the global statistic. The identity single-process."""
    return _SumOverRanks.apply(t) if is_distributed() else t


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Rank 0's value on every rank. Every rank must call it with a tensor of the same shape."""
    t = t.contiguous()
    if is_distributed():
        dist.broadcast(t, src=0)
    return t


def leave() -> None:
    """Every rank waits for the others, then tears its process group down. Left to interpreter exit, a rank's gloo
    threads can die while a peer still finishes ("terminate called without an active exception", abort)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    device: torch.device


def launch() -> Launch:
    """This process's place in a distributed launch. Under torchrun / accelerate launch the process group
    is initialized through accelerate; a plain process is rank 0 of 1 on the default device."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True a CPU torchrun stays 1 process
    return Launch(state.process_index, state.num_processes, state.device)
