"""torchrun support: process-group setup and a batch sampler that splits each global batch by rank.

Every rank sees the same global batches a single process would see (one seeded permutation per
epoch), each taking its share; with gradients averaged by DDP the step equals the single-process
step, so one process and N processes train the same model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The torchrun world from its environment variables (one process when absent)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def init(device_type: str) -> World:
    """Join the process group once (gloo on CPU, NCCL on CUDA)."""
    w = world()
    if w.distributed:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return w


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(device, *values: float) -> list[float]:
    """Sum numbers over all ranks (float64, so counts stay exact)."""
    import torch
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ShardedBatchSampler:
    """Seeded global batches (same for any world size), each split across ranks by stride."""

    def __init__(self, n: int, batch_size: int, seed: int, w: World, shuffle: bool = True,
                 drop_last: bool = True):
        if batch_size % w.size:
            raise ValueError(f"train.batch_size {batch_size} must be divisible by the number of "
                             f"processes ({w.size}) so every rank gets an equal share")
        self.n, self.batch_size, self.seed, self.world = n, batch_size, seed, w
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last and n >= batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        import torch
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order = self._order()
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch[self.world.rank::self.world.size]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)


def broadcast(value):
    """Rank 0's value on every process (a budget search is measured once, on rank 0)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
