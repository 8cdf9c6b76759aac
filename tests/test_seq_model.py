"""Sequence model: FAVOR+ against exact softmax attention, exact chunked prefix sums,
no information from the future, save -> load identity."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gperceiver.seq import SeqConfig, SeqLM
from gperceiver.seq.model import (
    favor_causal,
    hierarchical_causal,
    orthogonal_features,
    positive_features,
)

ATTENTIONS = ["exact", "performer", "hierarchical"]


def tiny(attention: str, **overrides) -> SeqLM:
    torch.manual_seed(0)
    values = dict(width=32, depth=2, heads=2, chunk=16, features=32, context=64)
    model = SeqLM(SeqConfig(attention=attention, **(values | overrides))).double()
    with torch.no_grad():  # larger weights than the init: every path matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def causal_softmax(q, k, v):
    """Reference: explicit S x S masked softmax attention (B, H, S, K)."""
    s = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    return weights @ v, weights


def random_qkv(seed=0, s=256, k=16, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 2, s, k)
    q, kk = (
        scale * torch.randn(shape, generator=gen, dtype=torch.float64) for _ in "qk"
    )
    return q, kk, torch.randn(shape, generator=gen, dtype=torch.float64)


def favor_error(features: int, seed: int = 1) -> tuple[float, float]:
    """Mean |FAVOR+ - exact| / mean |v|, and mean total variation of attention rows."""
    q, k, v = random_qkv()
    exact, weights = causal_softmax(q, k, v)
    w = orthogonal_features(features, 16, torch.Generator().manual_seed(seed)).double()
    pq, pk = positive_features(q, w, True), positive_features(k, w, False)
    out = favor_causal(q, k, v, w, chunk=32)
    implied = (pq @ pk.transpose(-1, -2)).tril()
    implied = implied / implied.sum(-1, keepdim=True)
    tv = 0.5 * (implied - weights).abs().sum(-1).mean()
    return float((out - exact).abs().mean() / v.abs().mean()), float(tv)


def test_favor__approximates_softmax_attention_within_stated_error():
    """Stated error (q, k ~ N(0, 0.25 I), K = 16, 256 positions): with 1024 positive
    orthogonal features the output is within 2 % of mean |v| and each query's
    attention distribution within total variation 0.05 of the softmax; with 16
    features the error is several times larger."""
    many_out, many_tv = favor_error(1024)
    few_out, few_tv = favor_error(16)
    assert many_out < 0.02 and many_tv < 0.05
    assert few_out > 2 * many_out and few_tv > 2 * many_tv


def test_positive_features__are_positive_and_unbiased_for_the_softmax_kernel():
    q, k, _ = random_qkv(s=4)
    w = orthogonal_features(100_000, 16, torch.Generator().manual_seed(3)).double()
    pq, pk = positive_features(q, w, False), positive_features(k, w, False)
    assert (pq > 0).all() and (pk > 0).all()
    kernel = torch.exp(q @ k.transpose(-1, -2) / 4.0)  # exp(q.k / sqrt(K))
    relative = (pq @ pk.transpose(-1, -2) / kernel - 1).abs()
    assert relative.mean() < 0.03 and relative.max() < 0.1


def test_orthogonal_features__rows_within_a_block_are_orthogonal():
    w = orthogonal_features(40, 16, torch.Generator().manual_seed(0)).double()
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    assert torch.allclose(
        block @ block.T, torch.eye(16, dtype=torch.float64), atol=1e-5
    )


def favor_quadratic(q, k, v, w):
    """The S x S form of causal FAVOR+ that the chunked code must equal."""
    pq, pk = positive_features(q, w, True), positive_features(k, w, False)
    weights = (pq @ pk.transpose(-1, -2)).tril()
    return (weights @ v) / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("chunk, segment", [(1, 1), (7, 20), (32, 1024), (300, 1)])
def test_favor_causal__chunks_and_segments_equal_the_quadratic_form(chunk, segment):
    """Outputs and every gradient of the chunked, segment-recomputing code equal
    the explicit S x S computation (float64), whatever the chunk and segment."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 50, 4, generator=gen, dtype=torch.float64).requires_grad_()
        for _ in "qkv"
    )
    w = orthogonal_features(8, 4, gen).double()
    out = favor_causal(q, k, v, w, chunk, segment)
    expected = favor_quadratic(q, k, v, w)
    assert torch.allclose(out, expected, atol=1e-12)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-10)


def test_favor_causal__training_keeps_no_per_chunk_features():
    """What autograd saves for backward is the raw q, k, v plus one state per
    segment; the (S, F) feature maps and (C, C) blocks are recomputed."""
    gen = torch.Generator().manual_seed(0)
    s, k_dim, features = 4096, 8, 64
    q, k, v = (
        torch.randn(1, 1, s, k_dim, generator=gen).requires_grad_() for _ in "qkv"
    )
    w = orthogonal_features(features, k_dim, gen)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        favor_causal(q, k, v, w, chunk=128, segment=1024)
    # q, k, v slices and states of 4 segments, the output and its normaliser
    assert sum(saved) < 3 * s * k_dim + 4 * features * (k_dim + 1) + 3 * s * (k_dim + 1)
    assert sum(saved) < s * features  # less than one feature map


def test_hierarchical__equals_exact_attention_within_the_first_window():
    q, k, v = random_qkv(s=40)
    exact, _ = causal_softmax(q, k, v)
    out = hierarchical_causal(q, k, v, chunk=16)
    assert torch.allclose(out[:, :, :16], exact[:, :, :16], atol=1e-12)
    assert not torch.allclose(out[:, :, 16:], exact[:, :, 16:], atol=1e-3)


def future_influence(forward, tokens: torch.Tensor, cut: int) -> tuple[float, float]:
    """Largest |gradient| of outputs before ``cut`` w.r.t. input embeddings at or
    after ``cut`` (must be 0), and of the last output w.r.t. all earlier inputs."""
    x = tokens.clone().requires_grad_(True)
    out = forward(x)
    (grad,) = torch.autograd.grad(out[:, :cut].sum(), x, retain_graph=True)
    (back,) = torch.autograd.grad(out[:, -1].sum(), x)
    return float(grad[:, cut:].abs().max()), float(back[:, :-1].abs().max())


def embedded_forward(model: SeqLM):
    def forward(x):  # (B, S, D) embeddings -> (B, S, V) logits
        for block in model.blocks:
            x = block(x)
        return model.head(model.norm(x))

    return forward


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_model__outputs_never_depend_on_future_positions(attention):
    model = tiny(attention)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 70, 32, generator=gen, dtype=torch.float64)
    for cut in (1, 16, 33, 69):
        leak, reach = future_influence(embedded_forward(model), x, cut)
        assert leak == 0.0
        assert reach > 1e-6  # the last position does see the past


def test_leak_check__catches_attention_without_a_causal_mask():
    """Negative control: the same check flags bidirectional attention."""
    model = tiny("exact")
    for block in model.blocks:
        attn = block.attn

        def bidirectional(x, attn=attn):
            b, s, d = x.shape
            q, k, v = (
                t.view(b, s, 2, d // 2).transpose(1, 2)
                for t in attn.qkv(x).chunk(3, -1)
            )
            y = F.scaled_dot_product_attention(q, k, v)
            return attn.out(y.transpose(1, 2).reshape(b, s, d))

        attn.forward = bidirectional
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    leak, _ = future_influence(embedded_forward(model), x, 20)
    assert leak > 1e-6


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_model__changing_future_tokens_leaves_past_logits_unchanged(attention):
    model = tiny(attention)
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(2, 6, (2, 90), generator=gen)
    changed = tokens.clone()
    changed[:, 50:] = torch.randint(2, 6, (2, 40), generator=gen)
    a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :50], b[:, :50])
    assert not torch.allclose(a[:, 50:], b[:, 50:])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_save_pretrained__load_gives_identical_weights_and_outputs(tmp_path, attention):
    model = tiny(attention).float()
    model.save_pretrained(tmp_path / "m")
    loaded = SeqLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    tokens = torch.randint(2, 6, (2, 64))
    mask = torch.rand(2, 64) < 0.3
    assert torch.equal(loaded(tokens, mask), model(tokens, mask))


def test_config__raises_on_unknown_attention():
    with pytest.raises(ValueError, match="attention must be one of"):
        SeqConfig(attention="sparse")


def test_shipped_weights__load_with_the_config_they_were_trained_with():
    directory = Path(__file__).parents[1] / "benchmarks" / "seq_models" / "kp-60min"
    model = SeqLM.from_pretrained(directory)
    assert model.config == SeqConfig()  # trained with the defaults
    logits = model(torch.randint(2, 6, (1, 256)))
    probs = torch.softmax(logits, -1)[..., 2:6].sum(-1)
    assert torch.isfinite(logits).all() and (probs > 0.95).all()  # mass on A/C/G/T
