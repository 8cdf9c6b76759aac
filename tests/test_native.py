"""C kernels built on this machine (gperceiver.nn.native): the window attention's
three kernels against float64 torch autograd, split over threads; and the
fallback to numba when no library can be built."""

import os
import stat

import pytest
import torch

from gperceiver.nn import kernels, native, window_kernels

HEADS, WIDTH, NEAR, ROWS, SEQ, PER_ROW = 2, 16, 6, 3, 11, 4


def _window_case(seed: int = 0):
    """Per-target tensors of 3 batch rows x 4 targets over 11 tokens a row;
    some neighbours outside the sequence."""
    gen = torch.Generator().manual_seed(seed)
    n = ROWS * PER_ROW
    normed = torch.randn(ROWS * SEQ, WIDTH, generator=gen)
    centers = torch.randint(0, SEQ, (ROWS, PER_ROW), generator=gen)
    centers[0, 0], centers[1, 0] = 0, SEQ - 1  # neighbours past both ends
    offsets = torch.tensor([-3, -2, -1, 1, 2, 3])
    pos = centers[..., None] + offsets
    inside = ((pos >= 0) & (pos < SEQ)).view(n, NEAR)
    rows = torch.arange(ROWS)[:, None, None] * SEQ
    index = (rows + pos.clamp(0, SEQ - 1)).view(n, NEAR)
    q = torch.randn(HEADS, n, WIDTH, generator=gen)
    bias = torch.randn(HEADS, n, NEAR, generator=gen)
    grad = torch.randn(HEADS, n, WIDTH, generator=gen)
    return q, bias, inside, normed, index, grad


def _reference(q, bias, inside, normed, index, grad):
    """Scores, mix and every gradient from float64 autograd on gathered rows."""
    q, bias, normed = (t.double().requires_grad_() for t in (q, bias, normed))
    near = normed[index]  # (N, W, D)
    scores = torch.einsum("hnd,nwd->hnw", q, near) + bias
    scores = scores.masked_fill(~inside, float("-inf"))
    weights = scores.softmax(-1)
    mixed = torch.einsum("hnw,nwd->hnd", weights, near)
    mixed.backward(grad.double())
    return (
        scores.detach(),
        weights.detach(),
        mixed.detach(),
        q.grad,
        bias.grad,
        normed.grad,
    )


def close(got, want):
    """float32 results against float64 ones, to float32 rounding."""
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def c_kernels(monkeypatch):
    """The C kernels for (2 heads, width 16), launched on two threads."""
    monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
    lib = native.library("window.c", HEADS=HEADS, WIDTH=WIDTH)
    if lib is None:
        pytest.skip("no C compiler builds gperceiver's native kernels here")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(kernels, "MIN_THREADS", 2)
    for k in kernels.Kernel.every:
        monkeypatch.setattr(k, "min_parallel", 0)
    yield lib
    torch.set_num_threads(threads)


def test_window_c_kernels__match_float64_autograd(c_kernels):
    """Scores (-inf outside the sequence), the weighted sum of neighbours and
    the three gradients agree with float64 autograd; the tokens' gradient is
    written over the buffer with ``zero`` and added to it without."""
    q, bias, inside, normed, index, grad = _window_case()
    scores, weights, mixed, grad_q, grad_bias, grad_normed = _reference(
        q, bias, inside, normed, index, grad
    )
    got = window_kernels.window_scores(q, bias, inside, normed, index)
    assert torch.equal(got.isinf(), scores.isinf())
    finite = scores.isfinite()
    close(got[finite], scores[finite])
    w = weights.float()
    close(window_kernels.window_mix(w, normed, index), mixed)
    buffer = torch.full_like(normed, float("nan"))  # overwritten with zero=True
    gq, gb = window_kernels.window_backward(
        q, normed, index, w, grad, PER_ROW, buffer, True
    )
    close(gq, grad_q)
    close(gb, grad_bias)
    close(buffer, grad_normed)
    window_kernels.window_backward(q, normed, index, w, grad, PER_ROW, buffer, False)
    close(buffer, 2 * grad_normed)


def test_native_library__off_or_unbuildable_gives_none(monkeypatch, tmp_path):
    """``GPERCEIVER_NATIVE=0``, a missing compiler and one whose compile fails
    give no library (the callers then run numba) and leave no file behind."""
    monkeypatch.setenv("GPERCEIVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPERCEIVER_NATIVE", "0")
    assert native.library("window.c", HEADS=3, WIDTH=8) is None
    monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native.library("window.c", HEADS=3, WIDTH=8) is None
    failing = tmp_path / "failing-cc"
    failing.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo fake 1.0 && exit 0\nexit 1\n'
    )
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(failing))
    assert native.library("window.c", HEADS=3, WIDTH=8) is None
    cache = tmp_path / "cache"
    assert not cache.exists() or os.listdir(cache) == []


def test_native_library__built_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    """A second lookup, as a new process makes, loads the library already on
    disk (the same file, not rewritten) instead of building another."""
    if native.library("window.c", HEADS=1, WIDTH=8) is None:
        pytest.skip("no C compiler builds gperceiver's native kernels here")
    monkeypatch.setenv("GPERCEIVER_CACHE", str(tmp_path))
    first = native.library("window.c", HEADS=1, WIDTH=4)
    assert first is not None
    (built,) = tmp_path.iterdir()
    assert built.name.startswith("window-") and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    native._library.cache_clear()  # as a new process would
    assert native.library("window.c", HEADS=1, WIDTH=4) is not None
    assert list(tmp_path.iterdir()) == [built]
    assert built.stat().st_mtime_ns == stamp
