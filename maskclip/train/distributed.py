"""Process-group setup for torchrun, and the collectives the losses need (gather, the neighbour
exchange of the sigmoid loss, reductions).

Every helper also works without a process group (a plain single-process run), where it is the identity
or returns rank 0 / world size 1, so the training code has one path for one process and for many.
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import InputError

_MAX_GATHER_DIMS = 7  # size of the fixed-length shape record the ranks exchange before a gather
_host_group = None  # a gloo group for flags the host exchanges (None: the default group, or no group)
_shapes_checked = True  # gather compares shapes across ranks first (see assume_equal_shapes)


@dataclass
class DistInfo:
    """Where this process sits in the job: its global rank, the number of processes, its local rank
    on the machine, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    if not value.strip().isdigit():
        raise InputError(f"{name} must be set to an integer by the launcher (torchrun sets RANK, WORLD_SIZE, "
                         f"LOCAL_RANK, MASTER_ADDR, MASTER_PORT); got {value!r}")
    return int(value)


def init_distributed(backend: Optional[str] = None) -> DistInfo:
    """Join the process group torchrun describes in the environment, or run as a single process.

    With ``WORLD_SIZE`` > 1 the group is created (unless one exists) with ``backend``, by default nccl
    when CUDA is available and gloo otherwise, and each process takes the GPU of its local rank.
    Without ``WORLD_SIZE`` (or with 1) no group is created: rank 0 of 1 on cuda:0 or the CPU.
    """
    size = _env_int("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if size <= 1 and not is_initialized():
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return DistInfo(0, 1, 0, device)
    global_rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend, rank=global_rank, world_size=size)
    global _host_group
    if dist.get_backend() != "gloo":  # every rank creates it, in the same order: a collective
        _host_group = dist.new_group(backend="gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def cleanup() -> None:
    """Destroy the process group, if there is one."""
    global _host_group
    _host_group = None
    if is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any. The flags travel as CPU tensors through a gloo
    group, so the host never waits for a device's queue to drain."""
    if world_size() == 1:
        return flag
    return bool(host_sum([float(flag)])[0] > 0)


def host_sum(values: list) -> list:
    """Element-wise sum over ranks of a list of host numbers (through the host's gloo group)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_host_group)
    return t.tolist()


@contextlib.contextmanager
def assume_equal_shapes() -> Iterator[None]:
    """Within this block ``gather`` trusts the caller that every rank passes tensors of one shape and
    skips its check, which reads the ranks' shapes back to the host (a device sync). The training
    loop guarantees it: every rank's batch has ``local_batch`` samples."""
    global _shapes_checked
    before, _shapes_checked = _shapes_checked, False
    try:
        yield
    finally:
        _shapes_checked = before


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _check_same_shape(x: Tensor, what: str = "gather") -> None:
    """Raise on every rank (so none hangs) unless all ranks hold tensors of one shape."""
    if x.dim() > _MAX_GATHER_DIMS:
        raise InputError(f"gather supports tensors of at most {_MAX_GATHER_DIMS} dims; got shape {tuple(x.shape)}")
    record = torch.full((_MAX_GATHER_DIMS + 1,), -1, dtype=torch.long, device=x.device)
    record[0] = x.dim()
    record[1:x.dim() + 1] = torch.tensor(x.shape, dtype=torch.long)
    records = [torch.empty_like(record) for _ in range(world_size())]
    dist.all_gather(records, record)
    shapes = [tuple(r[1:r[0] + 1].tolist()) for r in records]
    if len(set(shapes)) > 1:
        raise InputError(f"{what} needs the same shape on every rank (equal per-rank batch sizes; drop the "
                         f"last incomplete batch); got shapes by rank {shapes}")


def _all_gather_list(x: Tensor) -> list:
    chunks = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(chunks, x.contiguous())
    return chunks


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum, over all ranks' losses, of the gradient
    w.r.t. its own chunk. The sum is an all-reduce of the (small) feature gradient, then a slice:
    one code path for every backend (gloo has no reduce-scatter), and feature gradients are tiny
    next to the parameter gradients DDP reduces in the same step."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.batch = x.shape[0]
        return torch.cat(_all_gather_list(x), dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = rank() * ctx.batch
        return grad[start:start + ctx.batch]


def gather(x: Tensor, with_grad: bool = True) -> Tensor:
    """Concatenate ``x`` [B, ...] from all ranks in rank order -> [world_size * B, ...].

    ``with_grad=True``: differentiable; every rank's loss sends gradient to the rank that owns the row,
    so with DDP's averaging the gradients equal a single process on the global batch.
    ``with_grad=False``: the other ranks' rows are constants and only the local chunk (``x`` itself)
    carries gradient. Without a process group this is the identity.
    """
    if world_size() == 1:
        return x
    if _shapes_checked:
        _check_same_shape(x)
    if with_grad:
        return _GatherWithGrad.apply(x)
    chunks = _all_gather_list(x.detach())
    chunks[rank()] = x
    return torch.cat(chunks, dim=0)


def _exchange(left: int, right: int, to_left: Tensor, to_right: Tensor) -> Tuple[Tensor, Tensor]:
    """Send ``to_left`` to rank ``left`` and ``to_right`` to rank ``right`` while receiving what they
    send this way: returns ``(from_right, from_left)``. One batch of P2P ops, so no rank waits for
    another to start receiving. Needs two distinct neighbours (three ranks or more)."""
    from_right, from_left = torch.empty_like(to_left), torch.empty_like(to_right)
    ops = [dist.P2POp(dist.isend, to_right.contiguous(), right), dist.P2POp(dist.isend, to_left.contiguous(), left),
           dist.P2POp(dist.irecv, from_right, right), dist.P2POp(dist.irecv, from_left, left)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return from_right, from_left


def _send_right(left: int, right: int, x: Tensor) -> Tensor:
    """Send ``x`` to rank ``right``; returns what rank ``left`` sends."""
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), right), dist.P2POp(dist.irecv, received, left)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _ExchangeWithGrad(torch.autograd.Function):
    """``_exchange`` whose backward sends each received block's gradient back to the rank it came
    from: the same exchange with the directions swapped."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_left: Tensor, to_right: Tensor):
        ctx.left, ctx.right = left, right
        return _exchange(left, right, to_left, to_right)

    @staticmethod
    def backward(ctx, grad_from_right: Tensor, grad_from_left: Tensor):
        # What came from the right was the right neighbour's to_left: its gradient goes back right.
        grad_to_right, grad_to_left = _exchange(ctx.left, ctx.right, grad_from_left, grad_from_right)
        return None, None, grad_to_left, grad_to_right


class _SendRightWithGrad(torch.autograd.Function):
    """``_send_right`` whose backward sends the received block's gradient back to the left."""

    @staticmethod
    def forward(ctx, left: int, right: int, x: Tensor) -> Tensor:
        ctx.left, ctx.right = left, right
        return _send_right(left, right, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, _send_right(ctx.right, ctx.left, grad.contiguous())


def neighbour_blocks(x: Tensor) -> Iterator[Tensor]:
    """Every other rank's ``x`` [B, ...], one block at a time, passed along the ring of ranks in both
    directions (open_clip's ``bidir``): W - 1 blocks in about (W - 1) / 2 rounds of neighbour
    exchanges, never more than two blocks held at once, instead of an all-gather of W blocks.

    Differentiable: a block's gradient travels back along the ring to the rank that owns it, so with
    DDP's averaging the gradients equal those of one process on the global batch. Every rank must
    consume every block (the exchanges and their backward are collectives), and every rank's ``x``
    must have one shape (checked as ``gather`` checks it). Without a process group there are no blocks.
    """
    size = world_size()
    if size == 1:
        return
    if _shapes_checked:
        _check_same_shape(x, "the neighbour exchange")
    me = rank()
    left, right = (me - 1) % size, (me + 1) % size
    to_left = to_right = x
    rounds, one_more = divmod(size - 1, 2)
    for _ in range(rounds):
        to_left, to_right = _ExchangeWithGrad.apply(left, right, to_left, to_right)
        yield to_left
        yield to_right
    if one_more:  # an even world size: the last block, opposite on the ring, comes from one side only
        yield _SendRightWithGrad.apply(left, right, to_right)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, as a new detached tensor (for statistics and metrics, not for loss)."""
    out = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks, as a new detached tensor (for statistics and metrics, not for loss)."""
    return all_reduce_sum(x) / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (any picklable object)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without a process group."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
