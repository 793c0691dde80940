"""torchrun / DistributedDataParallel: the process group and the few collectives training needs.

`torchrun --nproc_per_node N main.py train ...` starts N processes and gives each
RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address in its environment;
`setup()` reads them and joins the group (NCCL when the run trains on CUDA, else
gloo). Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op, so the
trainer has one code path for one process and for many.
"""

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from errors import InputError


@dataclasses.dataclass
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def all_reduce(self, tensor, op="sum"):
        """In place; op is sum, max or min."""
        if self.enabled:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                        "min": dist.ReduceOp.MIN}[op])
        return tensor

    def gather_objects(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects only)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's obj on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.enabled:
            dist.barrier()


def setup(device_name="auto", timeout_minutes=30):
    """Join the process group torchrun describes in the environment; a one-process Group without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Group()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError:
        raise InputError(f"WORLD_SIZE is {world_size} but RANK is not set; start distributed runs with "
                         "torchrun (see docs/distributed.md)") from None
    on_cuda = device_name != "cpu" and torch.cuda.is_available()
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                             "use torchrun --nproc_per_node at most the GPU count")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if on_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return Group(rank, world_size, local_rank, backend)


def shutdown(group):
    if group.enabled and dist.is_initialized():
        dist.destroy_process_group()
