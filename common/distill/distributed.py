"""Distillation on several GPUs (or CPU processes) under torchrun, with FSDP2 (`fully_shard`).

    torchrun --nproc-per-node 2 -m common distill --student DIR ...

torchrun starts one process per GPU and tells each its place in RANK, WORLD_SIZE and LOCAL_RANK.
Every rank runs the same loop on its share of each batch. FSDP2 keeps a 1/WORLD_SIZE slice of every
weight, gradient and optimizer state on each rank; a layer's full weights are gathered just before
it runs and freed after, and gradients are averaged across ranks as they are split back into slices.

Without torchrun (WORLD_SIZE unset or 1) every function here does nothing or the obvious thing, so
the single-process loop is the same code, with no process group and no sharding.

A script of one's own, under torchrun, loads its models on `rank_device(device)` and calls distill()
inside `with process_group(device):`.
"""
import contextlib
import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

# A causal LM's forward returns its logits as a slice (a view); the losses never change them in place,
# the case this warning of FSDP2's is about.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

# Whole tensors, gathered to rank 0's CPU memory (the other ranks get empty dicts): what a checkpoint holds,
# whatever the number of ranks that wrote it or will read it.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Rank 0 logs, shows progress bars and writes files."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's own GPU (cuda:LOCAL_RANK) under torchrun; `device` unchanged otherwise."""
    if device.type != "cuda" or world_size() == 1:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo between CPU processes. A no-op in a
    single process or when the group exists already."""
    if world_size() == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)  # device_id: NCCL knows its GPU from the start
    else:
        dist.init_process_group("gloo")


@contextlib.contextmanager
def process_group(device: torch.device):
    """init() on entry; on a normal exit every rank waits for the others, then the group is destroyed.

    Not on an error: a rank that fails alone must exit at once (a destroy could wait on peers stuck in
    a collective), and torchrun then stops the others."""
    init(device)
    yield
    if dist.is_initialized():
        dist.barrier()  # no rank closes its connections while another still uses them (rank 0 writing --out)
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(module: torch.nn.Module, units=()) -> None:
    """FSDP2 over every rank: each module of `units` (a model's decoder layers) is its own unit, so one
    layer's full weights exist at a time; the rest (embeddings, final norm, head) belongs to the root."""
    if isinstance(module, FSDPModule):  # sharded by an earlier distill() call
        return
    mesh = init_device_mesh(next(module.parameters()).device.type, (world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(module, mesh=mesh)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` across ranks (one all-reduce); `values` itself in a single process."""
    if world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)  # a sum: gloo has no AVG
    return values / world_size()


def full_model_state(model: torch.nn.Module) -> dict:
    """The model's whole tensors on rank 0's CPU, keyed by parameter name. Collective: every rank calls it."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name (not by position), whole tensors on rank 0's CPU:
    the same file from any number of ranks. Collective: every rank calls it."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of full_optimizer_state: every rank passes the whole state and keeps its own slice."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
