"""Batch normalisation whose statistics span every rank of a ``torchrun`` job.

``torch.nn.SyncBatchNorm`` needs CUDA tensors; the models here train on the CPU
under gloo. :class:`RankSyncedBatchNorm1d` sums the batch's counts and sums, then
its squared deviations, over the ranks (a differentiable all-reduce), so N processes
normalise with the statistics of the whole global batch, as one process does.
Alone (no process group, or in eval mode) it is exactly ``nn.BatchNorm1d``; its
state-dict keys are the same, so saved models load either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class RankSyncedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over ``(B, C)`` inputs, batch statistics shared by ranks."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce

        # deprecated in favour of the functional collectives; this one carries
        # autograd through the sum, which the normalisation needs
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional")

        # two passes (mean, then squared deviations): E[x^2] - mean^2 in float32
        # loses the variance of a column whose mean is large next to its sd
        n = torch.tensor([float(x.shape[0])], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([n, x.sum(0)]))  # (1 + C,)
        count, mean = sums[0], sums[1:] / sums[0]
        var = all_reduce(((x - mean) ** 2).sum(0)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum  # None: cumulative mean, as BatchNorm1d
                if m is None:
                    m = 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out
