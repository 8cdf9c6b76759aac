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


def _token_case(seed: int = 0, queries: int = 8):
    """Queries (3, Q, 16) and tokens (3, 23, 16) (23: the C kernel's last block
    of rows is partial); row 1's first 14 tokens masked, row 2's every one."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(3, queries, WIDTH, generator=gen) * 0.5
    normed = torch.randn(3, 23, WIDTH, generator=gen)
    valid = torch.rand(3, 23, generator=gen) > 0.3
    valid[1, :14] = False
    valid[2] = False
    grad = torch.randn(3, queries, WIDTH, generator=gen)
    return q, normed, valid, grad


@pytest.fixture
def token_c(monkeypatch):
    """The token-attention C kernels, launched on two threads."""
    monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
    if native.library("token.c", QUERIES=8, WIDTH=WIDTH) is None:
        pytest.skip("no C compiler builds gperceiver's native kernels here")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(native, "MIN_PARALLEL_WORK", 0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("queries", [8, 16])
def test_token_c_kernels__match_float64_autograd(queries, keep, token_c):
    """Softmax attention over the valid tokens and its two gradients agree with
    float64 autograd; ``top + log(den)`` is the scores' log-sum-exp; a query
    without valid tokens reads 0 (shift 0, denominator 1) and sends no
    gradient; the tokens' gradient overwrites the buffer, or adds with ``add``;
    with ``keep`` the scores come out and backward reads them. (With AVX-512,
    16 queries take the kernel's 16-float vectors, 8 its 8-float ones.)"""
    from gperceiver.nn import token_kernels

    q, normed, valid, grad = _token_case(queries=queries)
    assert token_kernels.available(q, normed, valid)
    q64, n64 = (t.double().requires_grad_() for t in (q, normed))
    scores = (n64 @ q64.mT).masked_fill(~valid[..., None], float("-inf"))  # (B, M, Q)
    weights = torch.nan_to_num(scores.softmax(1))  # row 2: 0 / 0
    want = weights.mT @ n64
    want.backward(grad.double())
    mixed, top, den, kept = token_kernels.token_forward(q, normed, valid, keep)
    close(mixed, want.detach())
    if keep:
        close(kept, (n64 @ q64.mT).detach())
    else:
        assert kept.numel() == 0
    lse = scores[:2].logsumexp(1).detach()
    close((top + den.log())[:2], lse)
    assert torch.equal(top[2], torch.zeros(queries))
    assert torch.equal(den[2], torch.ones(queries))
    assert torch.equal(mixed[2], torch.zeros(queries, WIDTH))
    buffer = torch.full_like(normed, float("nan"))
    grad_q = token_kernels.token_backward(
        q, normed, valid, top, den, grad, mixed, kept, buffer, False
    )
    close(grad_q, q64.grad)
    close(buffer, n64.grad)
    assert torch.equal(buffer[2], torch.zeros(23, WIDTH))
    token_kernels.token_backward(
        q, normed, valid, top, den, grad, mixed, kept, buffer, True
    )
    close(buffer, 2 * n64.grad)


@pytest.mark.parametrize("masked", [False, True])
def test_token_attention__c_and_torch_paths_agree(masked, monkeypatch, token_c):
    """A token-space cross-attention layer read twice through one K/V cache
    (the encoder's iterations: the second backward adds into the first's token
    gradient) gives the same output and gradients with the C kernels as with
    the torch ops (``GPERCEIVER_NATIVE=0``)."""
    from gperceiver.nn import CrossAttention

    torch.manual_seed(0)
    layer = CrossAttention(WIDTH, 1, chunk_size=10)  # torch: 3 chunks
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 8, WIDTH, generator=gen)
    tokens = torch.randn(3, 23, WIDTH, generator=gen)
    valid = _token_case()[2] if masked else None
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("GPERCEIVER_NATIVE", flag)
        q, x = queries.clone().requires_grad_(), tokens.clone().requires_grad_()
        with torch.profiler.profile() as profile:
            kv = layer.project_kv(x)
            out = layer(layer(q, x, valid, kv), x, valid, kv)
            (out * torch.linspace(-1, 1, WIDTH)).sum().backward()
        ran = {e.name for e in profile.events()}
        native_ran = {"gperceiver::token_forward", "gperceiver::token_backward"} <= ran
        assert native_ran == (flag == "1")  # each path is the one compared
        grads = [q.grad, x.grad] + [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        results.append((out.detach(), grads))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_marker_token_c_kernels__refuse_allele_ids_outside_the_table(monkeypatch):
    """An allele id past the embedding table raises instead of reading (or, in
    backward, writing) memory outside it."""
    from gperceiver.nn import embedding_kernels

    monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
    if native.library("tokens.c", WIDTH=WIDTH) is None:
        pytest.skip("no C compiler builds gperceiver's native kernels here")
    table, position = torch.randn(4, WIDTH), torch.randn(3, WIDTH)
    alleles = torch.tensor([[[0, 1], [2, 7], [3, 3]]])  # id 7: the table has 4
    with pytest.raises(ValueError, match="allele ids outside"):
        embedding_kernels.AlleleTokens.apply(
            alleles, table, None, torch.arange(3), position, True
        )


def test_marker_token_c_kernels__table_gradient_the_same_on_any_threads(monkeypatch):
    """The shared table's gradient is summed over a fixed split of the markers,
    so one thread and two give the same bits (a resumed run on another thread
    count follows the same trajectory)."""
    from gperceiver.nn import embedding_kernels

    monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
    if native.library("tokens.c", WIDTH=WIDTH) is None:
        pytest.skip("no C compiler builds gperceiver's native kernels here")
    monkeypatch.setattr(native, "MIN_PARALLEL_WORK", 0)
    gen = torch.Generator().manual_seed(5)
    alleles = torch.randint(0, 4, (3, 1000, 2), generator=gen)
    position = torch.randn(1000, WIDTH, generator=gen)
    grad = torch.randn(3, 1000, WIDTH, generator=gen)
    threads = torch.get_num_threads()
    grads = []
    for n in (1, 2):
        torch.set_num_threads(n)
        table = torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(6))
        table.requires_grad_()
        tokens = embedding_kernels.AlleleTokens.apply(
            alleles, table, None, torch.arange(1000), position, True
        )
        tokens.backward(grad)
        grads.append(table.grad)
    torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])
