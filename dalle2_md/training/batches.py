"""The order training visits data in: epoch e is the permutation drawn from (seed, e), and each
optimizer micro-step takes the next positions of that stream, so the stream position alone says
where training stands and a resumed run continues mid-epoch with the very same batches."""

from __future__ import annotations

import torch
from torch import Tensor

from dalle2_md.utils import UserError


def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    # a private generator: data order depends only on (seed, epoch), never on the global RNG
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)


class StreamBatchSampler(torch.utils.data.Sampler):
    """Endless batches of dataset indices for one process, starting at stream `position`.

    Micro-step k covers stream positions [position + k*B*P, position + (k+1)*B*P); rank r takes
    the r-th block of B of them. A batch may span an epoch boundary (tiny data sets need that).
    """

    def __init__(self, n: int, *, batch_size: int, num_processes: int, rank: int, seed: int, position: int):
        if n < 1:
            raise UserError("the training data set is empty; check the data folder.")
        self.n, self.batch_size, self.num_processes, self.rank = n, batch_size, num_processes, rank
        self.seed, self.position = seed, position

    def __iter__(self):
        cache: dict[int, Tensor] = {}
        global_batch = self.batch_size * self.num_processes
        start = self.position
        while True:
            first = start + self.rank * self.batch_size
            idx = []
            for p in range(first, first + self.batch_size):
                epoch = p // self.n
                if epoch not in cache:
                    cache.clear()
                    cache[epoch] = _epoch_permutation(self.n, self.seed, epoch)
                # a batch spanning two epochs evicts and re-draws; cheap next to a training step
                idx.append(int(cache[epoch][p % self.n]))
            yield idx
            start += global_batch

    def __len__(self):  # endless; DataLoader only asks for len() when someone calls len(loader)
        raise TypeError("StreamBatchSampler is endless")
