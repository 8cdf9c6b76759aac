"""Shapes, equivalences and invariances of the nn modules (tiny configs, CPU)."""

import numpy as np
import pytest
import torch

from gperceiver.data import MISSING, MarkerMap
from gperceiver.nn import (
    CrossAttention,
    LocalAttention,
    MarkerEmbedding,
    MaskedMarkerModel,
    PerceiverConfig,
    PerceiverEncoder,
    attention,
    count_targets,
    perceiver,
    window_attention,
)

W = 16  # width of the tiny models


def tiny_config(**overrides) -> PerceiverConfig:
    values = dict(
        n_alleles=2,
        ploidy=2,
        n_markers=60,
        n_chroms=3,
        width=W,
        n_latents=4,
        cross_heads=2,
        self_heads=2,
        self_layers=1,
        encode_iters=2,
        n_fourier=4,
        dropout=0.0,
        chunk_size=None,
    )
    return PerceiverConfig(**(values | overrides))


def marker_map(n_markers: int, n_chroms: int) -> tuple[np.ndarray, np.ndarray]:
    """relative_pos, marker_chrom of markers spread over chromosomes, sorted."""
    chrom = np.sort(np.arange(n_markers) % n_chroms)
    return np.random.default_rng(0).random(n_markers), chrom


def tiny_model(**overrides) -> MaskedMarkerModel:
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    model = MaskedMarkerModel(config, *marker_map(config.n_markers, config.n_chroms))
    return model.eval()


def random_alleles(
    shape: tuple[int, int], ploidy: int, n_alleles: int, missing: float = 0.1, seed=0
) -> torch.Tensor:
    """Sorted allele ids (B, M, P) in 1..A with a share of missing copies."""
    gen = torch.Generator().manual_seed(seed)
    alleles = torch.randint(1, n_alleles + 1, (*shape, ploidy), generator=gen)
    alleles[torch.rand(alleles.shape, generator=gen) < missing] = MISSING
    return alleles.sort(-1).values


def grads(*tensors) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("ploidy, n_alleles", [(1, 2), (2, 2), (2, 3), (4, 4), (6, 2)])
def test_masked_marker_model__shapes_and_grads(ploidy, n_alleles):
    model = tiny_model(ploidy=ploidy, n_alleles=n_alleles, dropout=0.1).train()
    alleles = random_alleles((3, 40), ploidy, n_alleles)
    marker_idx = torch.randperm(60)[:40]
    targets = torch.randint(0, 40, (3, 5))  # (B, T) positions in the input
    logits = model(alleles, marker_idx, targets)
    assert logits.shape == (3, 5, n_alleles, ploidy + 1)
    logits.logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.isfinite().all(), name
    shared_targets = model(alleles, marker_idx, targets[0])  # (T,) for all rows
    assert shared_targets.shape == (3, 5, n_alleles, ploidy + 1)


def cross_attention_case(mask: bool, checkpoint: bool, chunk_size: int | None):
    """Output and gradients of one cross-attention call over 50 tokens."""
    torch.manual_seed(0)
    layer = CrossAttention(W, 2, chunk_size=chunk_size, checkpoint=checkpoint)
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 5, W, generator=gen, requires_grad=True)
    tokens = torch.randn(3, 50, W, generator=gen, requires_grad=True)
    valid = None
    if mask:
        valid = torch.rand(3, 50, generator=gen) > 0.3
        valid[1, :20] = False  # whole chunks of row 1 masked
        valid[2] = False  # nothing to read: the queries stay as they were
    out = layer(queries, tokens, valid)
    (out * torch.linspace(-1, 1, W)).sum().backward()
    return out.detach(), grads(queries, tokens, *layer.parameters())


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("mask", [False, True])
def test_cross_attention__chunked_matches_unchunked(mask, checkpoint):
    out, expected_grads = cross_attention_case(mask, False, None)
    chunked, chunked_grads = cross_attention_case(mask, checkpoint, chunk_size=7)
    torch.testing.assert_close(chunked, out, atol=1e-5, rtol=0)
    for got, expected in zip(chunked_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_cross_attention__fully_masked_row_gets_no_update(chunk_size):
    layer = CrossAttention(W, 2, chunk_size=chunk_size)
    queries, tokens = torch.randn(2, 5, W), torch.randn(2, 30, W)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1] = False
    out = layer(queries, tokens, valid)
    torch.testing.assert_close(out[1], queries[1] + layer.out.bias)
    assert out.isfinite().all()


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_cross_attention__cached_kv_matches_recomputed(chunk_size, checkpoint):
    """Outputs and gradients (queries, tokens, every weight) with a K/V cache used
    by two calls equal those of two calls that project the tokens themselves;
    with checkpointing the cache holds no graph and backward recomputes K/V."""
    torch.manual_seed(0)
    layer = CrossAttention(W, 2, chunk_size=chunk_size, checkpoint=checkpoint)
    queries, tokens = torch.randn(2, 5, W), torch.randn(2, 30, W)
    valid = torch.rand(2, 30) > 0.2
    weights = torch.linspace(-1, 1, W)

    def run(cached):
        q, x = queries.clone().requires_grad_(), tokens.clone().requires_grad_()
        kv = layer.project_kv(x) if cached else None
        if cached and checkpoint:
            assert all(not k.requires_grad for k, _ in kv)
        out = layer(layer(q, x, valid, kv), x, valid, kv)
        (out * weights).sum().backward()
        got = out.detach(), grads(q, x, *layer.parameters())
        layer.zero_grad()
        return got

    out, expected = run(cached=False)
    cached_out, cached_grads = run(cached=True)
    torch.testing.assert_close(cached_out, out)
    for got, want in zip(cached_grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("share_weights", ["all", "after_first", "none"])
def test_perceiver_encoder__projects_shared_kv_once(share_weights):
    torch.manual_seed(0)
    config = tiny_config(encode_iters=3, share_weights=share_weights, chunk_size=8)
    encoder = PerceiverEncoder(config).eval()
    tokens = torch.randn(2, 30, W)
    calls = []
    for iteration in encoder.iterations:
        attn = iteration.cross.attn

        def counted(x, project=attn._kv):  # a spy: counts, then projects as before
            calls.append(1)
            return project(x)

        attn._kv = counted
    latents = encoder(tokens)
    assert len(calls) == len(encoder.iterations) * 4  # 4 chunks, once per weight set
    # the same computation without any K/V cache
    x = encoder.latents.expand(2, -1, -1)
    for i in encoder.schedule:
        x = encoder.iterations[i](x, tokens)
    torch.testing.assert_close(latents, encoder.norm(x))


def test_perceiver_encoder__share_weights_layouts_and_extra_latents():
    sizes = {}
    for share in ("all", "after_first", "none"):
        encoder = PerceiverEncoder(tiny_config(encode_iters=3, share_weights=share))
        sizes[share] = sum(p.numel() for p in encoder.parameters())
    assert sizes["all"] < sizes["after_first"] < sizes["none"]
    extra = torch.randn(1, 3, W)  # (1, E, D) shared by the batch
    assert encoder(torch.randn(2, 10, W), extra_latents=extra).shape == (2, 4 + 3, W)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_masked_marker_model__batch_of_one_matches_batch(chunk_size):
    model = tiny_model(chunk_size=chunk_size)
    alleles = random_alleles((4, 60), 2, 2)
    marker_idx, targets = torch.arange(60), torch.randint(0, 60, (4, 6))
    with torch.no_grad():
        batch = model(alleles, marker_idx, targets)
        for row in range(4):
            one = model(alleles[row : row + 1], marker_idx, targets[row : row + 1])
            torch.testing.assert_close(one[0], batch[row], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_masked_marker_model__padded_tokens_have_no_effect(chunk_size):
    model = tiny_model(chunk_size=chunk_size)
    alleles = random_alleles((2, 50), 2, 2)
    marker_idx = torch.stack([torch.randperm(60)[:50] for _ in range(2)])  # (B, M)
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[1, 30:] = False  # row 1 holds only 30 markers, then padding
    with torch.no_grad():
        latents = model.encode(alleles, marker_idx, valid)
        alone = model.encode(alleles[1:, :30], marker_idx[1:, :30])
        garbage = alleles.clone()
        garbage[1, 30:] = model.embed.mask_id
        repadded = model.encode(garbage, marker_idx, valid)
    torch.testing.assert_close(latents[1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(repadded, latents, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_masked_marker_model__marker_order_does_not_matter(chunk_size):
    model = tiny_model(chunk_size=chunk_size)
    alleles = random_alleles((2, 60), 2, 2)
    marker_idx = torch.arange(60)
    order = torch.randperm(60)
    with torch.no_grad():
        latents = model.encode(alleles, marker_idx)
        shuffled = model.encode(alleles[:, order], marker_idx[order])
    torch.testing.assert_close(shuffled, latents, atol=1e-5, rtol=0)


def test_marker_embedding__mask_differs_from_missing():
    model = tiny_model()
    alleles = random_alleles((1, 60), 2, 2)
    missing, masked = alleles.clone(), alleles.clone()
    missing[:, 10] = MISSING
    masked[:, 10] = model.config.mask_id
    marker_idx, targets = torch.arange(60), torch.tensor([10])
    with torch.no_grad():
        assert not torch.allclose(
            model.embed(missing, marker_idx), model.embed(masked, marker_idx)
        )
        assert not torch.allclose(
            model(missing, marker_idx, targets), model(masked, marker_idx, targets)
        )


def test_marker_embedding__alleles_are_a_copy_mean():
    torch.manual_seed(0)
    embed = MarkerEmbedding(2, W, *marker_map(10, 1), n_chroms=1)
    idx = torch.arange(3)
    diploid = torch.tensor([[[1, 1], [1, 2], [0, 2]]])
    tetraploid = torch.tensor([[[1, 1, 1, 1], [1, 1, 2, 2], [0, 0, 2, 2]]])
    swapped = diploid.flip(-1)  # unphased: copy order carries nothing
    torch.testing.assert_close(embed(tetraploid, idx), embed(diploid, idx))
    torch.testing.assert_close(embed(swapped, idx), embed(diploid, idx))


def test_marker_embedding__unplaced_chromosome_with_ordinal_positions():
    n = 30
    markers, _ = MarkerMap.from_columns(
        ["unplaced"] * n, [f"m{i}" for i in range(n)], np.arange(n)
    )
    config = tiny_config(n_markers=n, n_chroms=1)
    model = MaskedMarkerModel(config, markers.relative_pos(), markers.chrom).eval()
    positions = model.embed.position(torch.arange(n))  # (M, D)
    assert torch.cdist(positions, positions).add(torch.eye(n)).min() > 0  # distinct
    logits = model(random_alleles((2, n), 2, 2), torch.arange(n), torch.arange(5))
    assert logits.shape == (2, 5, 2, 3) and logits.isfinite().all()


def test_marker_embedding__raises_on_bad_map():
    with pytest.raises(ValueError, match="marker_chrom"):
        MarkerEmbedding(2, W, np.zeros(4), np.array([0, 0, 1, 2]), n_chroms=2)
    with pytest.raises(ValueError, match="shape"):
        MarkerEmbedding(2, W, np.zeros(4), np.zeros(3, int), n_chroms=1)


def test_count_targets__ignores_missing_and_mask():
    alleles = torch.tensor([[0, 1, 1, 3], [3, 3, 3, 3], [1, 2, 2, 4]])  # A = 3, MASK 4
    expected = [[2, 0, 1], [0, 0, 4], [1, 2, 0]]
    assert count_targets(alleles, 3).tolist() == expected


def test_perceiver_config__dict_roundtrip():
    config = tiny_config(share_weights="after_first", chunk_size=128)
    assert PerceiverConfig.from_dict(config.to_dict()) == config
    assert config.mask_id == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"width": 10, "self_heads": 4}, "heads"),
        ({"share_weights": "xa_only"}, "share_weights"),
        ({"ploidy": 0}, "ploidy"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_perceiver_config__raises_on_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_perceiver_config__raises_on_unknown_field():
    values = tiny_config().to_dict() | {"latent_dim": 256}
    with pytest.raises(ValueError, match="latent_dim"):
        PerceiverConfig.from_dict(values)


def saved_activation_bytes(model, *inputs) -> int:
    """Bytes of distinct storages autograd keeps for backward, parameters aside."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(kept.values())


def test_masked_marker_model__checkpointed_activations_linear_in_markers():
    per_marker = []
    for n in (2000, 4000):
        model = tiny_model(
            n_markers=n, width=64, chunk_size=500, checkpoint_attention=True
        ).train()
        alleles = random_alleles((2, n), 2, 2)
        saved = saved_activation_bytes(model, alleles, torch.arange(n), torch.arange(8))
        per_marker.append(saved / (2 * n * 64 * 4))  # in (B, M, D) float32 tensors
    # tokens plus the shared layer's cached K/V, with a little left over
    assert per_marker[1] < 3.5
    assert per_marker[1] < per_marker[0]  # no term that grows faster than M


def test_masked_marker_model__auto_checkpoint_recomputes_only_large_batches(
    monkeypatch,
):
    """checkpoint_attention None keeps activations while the tokens (B, M, D) are
    below RECOMPUTE_MIN_FLOATS and saves as little as True above it; the decoder's
    window layer has its own, higher limit (LOCAL_RECOMPUTE_MIN_FLOATS): between
    the two only the encoder recomputes."""
    n = 2000
    alleles = random_alleles((2, n), 2, 2)
    tokens = 2 * n * 64
    limits = {  # (encoder, window): tokens at / below each limit
        "large": (tokens, tokens),
        "small": (tokens + 1, tokens + 1),
        "between": (tokens, tokens + 1),
    }
    saved = {}
    for setting in (True, False, None):
        torch.manual_seed(0)
        model = tiny_model(
            n_markers=n, width=64, chunk_size=500, checkpoint_attention=setting
        ).train()
        for size, (encoder, window) in limits.items():
            monkeypatch.setattr(attention, "RECOMPUTE_MIN_FLOATS", encoder)
            monkeypatch.setattr(perceiver, "LOCAL_RECOMPUTE_MIN_FLOATS", window)
            saved[setting, size] = saved_activation_bytes(
                model, alleles, torch.arange(n), torch.arange(8)
            )
    assert saved[None, "large"] == saved[True, "large"] < saved[False, "large"] / 2
    assert saved[None, "small"] == saved[False, "small"]
    assert saved[True, "large"] < saved[None, "between"] < saved[False, "large"]


def test_masked_marker_model__raises_on_wrong_ploidy():
    model = tiny_model(ploidy=2)
    with pytest.raises(ValueError, match="ploidy 4"):
        model.encode(random_alleles((1, 60), 4, 2), torch.arange(60))


def local_attention_by_loops(layer, queries, tokens, centers):
    """Each query's softmax over its in-range neighbours (centre skipped), one query
    and one head at a time: keys LN(x) W_k + b_k + offset, values LN(x) W_v + b_v."""
    b, t, d = queries.shape
    h, c = layer.heads, d // layer.heads
    kv = layer.to_kv(layer.norm_kv(tokens))
    q = layer.to_q(layer.norm_q(queries))
    out = torch.zeros(b, t, d, dtype=queries.dtype)
    for i in range(b):
        for j in range(t):
            picks = [
                (w, int(centers[i, j]) + o)
                for w, o in enumerate(layer.offsets.tolist())
                if 0 <= int(centers[i, j]) + o < tokens.shape[1]
            ]
            for head in range(h):
                part = slice(head * c, (head + 1) * c)
                if not picks:
                    continue
                keys = torch.stack(
                    [
                        kv[i, p, :d][part] + layer.offset.weight[w][part]
                        for w, p in picks
                    ]
                )
                values = torch.stack([kv[i, p, d:][part] for _, p in picks])
                weights = torch.softmax(keys @ q[i, j, part] / c**0.5, 0)
                out[i, j, part] = weights @ values
    return queries + layer.out(out)


def test_local_attention__equals_the_per_query_definition():
    torch.manual_seed(0)
    layer = LocalAttention(W, 2, window=3).double().eval()
    for norm in (layer.norm_q, layer.norm_kv):  # scales and shifts that matter
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(norm.bias, std=0.3)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 12, W, generator=gen, dtype=torch.float64)
    queries = torch.randn(2, 7, W, generator=gen, dtype=torch.float64)
    centers = torch.tensor([[0, 1, 5, 11, 10, 6, 6], [2, 3, 0, 9, 11, 4, 7]])
    with torch.no_grad():
        got = layer(queries, tokens, centers)
        want = local_attention_by_loops(layer, queries, tokens, centers)
        lone = layer(
            queries[:1, :2], tokens[:1, :1], torch.zeros(1, 2, dtype=torch.long)
        )
    torch.testing.assert_close(got, want)
    # a sequence of one token: nothing to read, the query passes through
    torch.testing.assert_close(lone, queries[:1, :2] + layer.out.bias)


@pytest.mark.parametrize("auto_chunk", [False, True])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_local_attention__target_chunks_match_one_pass(
    checkpoint, auto_chunk, monkeypatch
):
    """Explicit chunks of 4 targets, or chunks sized from WINDOW_CHUNK_FLOATS
    (here 4 targets a row: batch 2 x 6 neighbours x W floats each), equal one pass."""
    torch.manual_seed(0)
    whole = LocalAttention(W, 2, window=3, target_chunk=1000)
    if auto_chunk:
        monkeypatch.setattr(window_attention, "WINDOW_CHUNK_FLOATS", 4 * 2 * 6 * W)
    chunk = None if auto_chunk else 4
    chunked = LocalAttention(W, 2, window=3, target_chunk=chunk, checkpoint=checkpoint)
    chunked.load_state_dict(whole.state_dict())
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 20, W, generator=gen, requires_grad=True)
    queries = torch.randn(2, 9, W, generator=gen)
    centers = torch.randint(0, 20, (2, 9), generator=gen)
    outs = []
    for layer in (whole, chunked):
        out = layer(queries, tokens, centers)
        (out * torch.linspace(-1, 1, W)).sum().backward()
        outs.append((out.detach(), tokens.grad.clone()))
        tokens.grad = None
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def _window_step(layer, queries, tokens, centers):
    """Output and the gradients of tokens, queries and weights of one step."""
    tokens = tokens.clone().requires_grad_()
    queries = queries.clone().requires_grad_()
    out = layer(queries, tokens, centers)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    grads = [tokens.grad, queries.grad] + [p.grad for p in layer.parameters()]
    return [out.detach()] + grads


def test_local_attention__cpu_kernels_match_the_torch_ops(kernel_launch, cpu_backend):
    """float32 on the CPU runs the numba kernels (nn.window_kernels), float64 the
    torch ops: same output and gradients, with targets at both ends of the
    sequence and a sequence of one token; FlopCounterMode counts both alike."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    fused = LocalAttention(W, 2, window=3)
    exact = LocalAttention(W, 2, window=3).double()
    exact.load_state_dict(fused.state_dict())
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(3, 10, W, generator=gen, dtype=torch.float64)
    queries = torch.randn(3, 5, W, generator=gen, dtype=torch.float64)
    centers = torch.tensor([[0, 9, 4, 4, 1], [8, 2, 0, 5, 9], [3, 7, 6, 0, 1]])
    cases = [
        (queries, tokens, centers),
        (queries[:, :2], tokens[:, :1], centers[:, :2] * 0),
    ]
    for q, x, c in cases:
        want = _window_step(exact, q, x, c)
        got = _window_step(fused, q.float(), x.float(), c)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)
    counts = []
    for layer, dtype in ((fused, torch.float32), (exact, torch.float64)):
        with FlopCounterMode(display=False) as counter:
            layer(queries.to(dtype), tokens.to(dtype), centers)
        ops = {str(op) for op in counter.get_flop_counts()["Global"]}
        counts.append((counter.get_total_flops(), "gperceiver.window_scores" in ops))
    assert counts == [(counts[1][0], True), (counts[0][0], False)]
    assert counts[0][0] > 0


@pytest.mark.parametrize("per_row", [False, True], ids=["shared_idx", "per_row_idx"])
def test_masked_model_targets_read_the_inputs_positions(per_row):
    """forward() hands the decoder the inputs' position vectors and the targets
    read their rows; that equals encode + decode recomputing each target's
    position from its marker index: logits and every parameter's gradient."""
    model = tiny_model(learned_marker_embedding=True)
    b, m = 3, 40
    alleles = random_alleles((b, m), 2, 2)
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(4))[:m]
    marker_idx = torch.stack([idx.sort().values] * b) if per_row else idx.sort().values
    if per_row:
        marker_idx[1] = torch.randperm(60)[:m].sort().values
    target_pos = torch.tensor([[0, 5, 39], [1, 2, 3], [7, 20, 38]])

    def run(use_forward: bool):
        model.zero_grad()
        if use_forward:
            logits = model(alleles, marker_idx, target_pos)
        else:
            latents, tokens = model.encode(alleles, marker_idx, return_tokens=True)
            logits = model.decode(latents, tokens, marker_idx, target_pos)
        (
            logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)
        ).sum().backward()
        return [logits.detach()] + [p.grad.clone() for p in model.parameters()]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want)
