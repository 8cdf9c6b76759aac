"""The hashed-mask dropout (nn.dropout): the rate, the scale, backward's mask,
reproducibility under torch.manual_seed and activation checkpointing."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from gperceiver.nn.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kept_fraction_is_binomial_and_kept_values_are_scaled(p, kernel_launch):
    n = 1_000_000
    x = torch.rand(n) + 0.5
    out = dropout(x, p, True)
    kept = out != 0
    # within 5 binomial standard deviations of 1 - p
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    # blocks of 1,000 consecutive elements vary as binomial counts do (no
    # period, no correlation between neighbours)
    per_block = kept.view(1000, 1000).float().sum(1)
    sd = math.sqrt(1000 * p * (1 - p))
    assert 0.8 * sd < per_block.std().item() < 1.2 * sd
    both = (kept[1:] & kept[:-1]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n)


def test_backward_uses_the_forward_mask(kernel_launch):
    x = (
        torch.rand(3, 1000, 16) + 0.5
    ).requires_grad_()  # no zeros: out != 0 is the mask
    out = dropout(x, 0.2, True)
    grad = torch.randn_like(out)
    out.backward(grad)
    mask = (out != 0).float() / 0.8
    torch.testing.assert_close(x.grad, grad * mask)


def test_masks_follow_the_torch_seed_and_differ_between_calls():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.3, True), dropout(x, 0.3, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3, True), first)
    assert (first != second).float().mean() > 0.3  # about 2 p (1 - p) = 0.42


def test_eval_mode_other_dtypes_and_checkpoint_recompute():
    layer = Dropout(0.25)
    x = torch.randn(4, 500, 8, dtype=torch.float64)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert ((layer(x) == 0).double().mean() - 0.25).abs() < 0.05  # torch's path
    x = torch.randn(4, 500, 8, requires_grad=True)
    torch.manual_seed(5)
    direct = layer(x * 2)
    direct.sum().backward()
    want = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    recomputed = checkpoint(lambda t: layer(t * 2), x, use_reentrant=False)
    recomputed.sum().backward()
    torch.testing.assert_close(recomputed, direct)
    torch.testing.assert_close(x.grad, want)


def test_serial_and_parallel_launches_draw_the_same_mask(monkeypatch):
    from gperceiver.nn import dropout as module
    from gperceiver.nn import kernels

    monkeypatch.setattr(kernels, "MIN_THREADS", 2)
    x = torch.ones(3_000_000)  # over MIN_PARALLEL: parallel with two threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = module._apply(x, 17, 0.3)
        torch.set_num_threads(2)
        parallel = module._apply(x, 17, 0.3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel)
