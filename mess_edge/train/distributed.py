"""torchrun support: DistributedDataParallel with gloo on CPU and nccl on GPU; rank 0 logs and saves."""

import os

import torch


class Dist:
    """The process's place in a torchrun job (a single process when WORLD_SIZE is unset or 1)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            if self.device.type == "cpu":
                # Several processes on the same cores: one intra-op thread each, not N each.
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, module):
        if self.world == 1:
            return module
        ids = [self.local_rank] if self.device.type == "cuda" else None
        # Stage 1's round-robin leaves most exit heads out of each step: their grads are simply absent.
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
