"""Processes for data-parallel training: ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` (and the rendezvous address); one process per device.

* :func:`setup` -- reads the environment, picks the device (``cuda:LOCAL_RANK`` or the
  CPU) and initializes the default process group: NCCL on GPUs, gloo on CPUs. Without
  torchrun's variables (or with ``WORLD_SIZE=1``) nothing is initialized.
* :func:`share_batch_norm` -- batch-norm statistics over all processes:
  ``nn.SyncBatchNorm`` where PyTorch supports it (CUDA) and the layer need not replay
  statistics, :class:`vsc.dnn.batch_norm.BatchNorm2d`'s differentiable all-reduce
  elsewhere (gloo, and the decoder of the selected-sample decode).
* :func:`teardown` -- ``barrier()`` then ``destroy_process_group()``; the caller frees
  its model first (gloo aborts at exit about one run in five otherwise).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .batch_norm import share_statistics

# Rank 0 evaluates alone at each epoch's end while the others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Processes:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None      # None: a single process, no process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def setup(device: str = "auto") -> Processes:
    """Device and process group from the environment (see the module docstring)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, "
                         f"WORLD_SIZE={world_size}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("config: device='cuda' but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has "
                             f"{torch.cuda.device_count()} GPU(s); start at most that many "
                             "processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"config: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    procs = Processes(rank, local_rank, world_size, dev)
    if world_size > 1:
        procs.backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(procs.backend, timeout=TIMEOUT, **kwargs)
    return procs


def share_batch_norm(module: nn.Module, procs: Processes, *, replay: bool = False) -> nn.Module:
    """Batch normalization of ``module`` over all processes. ``replay``: the module's
    layers must record and replay statistics (the selected-sample decode)."""
    if not procs.distributed:
        return module
    if procs.device.type == "cuda" and not replay:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    share_statistics(module, None)
    return module


def all_reduce_sum(values: list[float], procs: Processes) -> list[float]:
    """Elementwise sum of ``values`` over the processes (the values themselves alone)."""
    if not procs.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj, procs: Processes) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not procs.distributed:
        return [obj]
    out = [None] * procs.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, procs: Processes):
    """Rank 0's ``obj`` on every process."""
    if not procs.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn, procs: Processes):
    """``fn()`` on rank 0, its result on every process; an exception it raises is raised
    on every process (the others would otherwise wait for rank 0 until the timeout)."""
    result, error = None, None
    if procs.is_main:
        try:
            result = fn()
        except Exception as failure:   # sent to the other ranks, raised everywhere
            error = failure
    if procs.distributed:
        result, error = broadcast_object((result, error), procs)
    if error is not None:
        raise error
    return result


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


def teardown(procs: Processes) -> None:
    """Barrier, then destroy the process group (free models before calling this)."""
    if procs.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
