"""The train step's rewritten parts equal the computation they replace, in float64:
cross-attention in token space (queries moved through W_k, W_v applied after the
weighted sum) against projected keys and values, outputs and every gradient, for
every path the encoder takes (one chunk or several, masks, checkpointing, a K/V
cache shared by two calls); the window attention's hand-written backward against
autograd through its per-query definition; the marker embedding against the mean
over copies of its allele vectors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gperceiver.nn import CrossAttention

W = 16


def two_reads(layer, queries, tokens, valid, cached):
    """Output of two calls sharing weights (and, if cached, one K/V cache) and the
    gradients of queries, tokens and every parameter."""
    q, x = queries.clone().requires_grad_(), tokens.clone().requires_grad_()
    kv = layer.project_kv(x) if cached else None
    out = layer(layer(q, x, valid, kv), x, valid, kv)
    (out * torch.linspace(-1, 1, W, dtype=out.dtype)).sum().backward()
    grads = [q.grad, x.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
def test_token_space_equals_projected_keys_and_values(
    heads, masked, chunk_size, checkpoint, cached
):
    torch.manual_seed(0)
    layer = CrossAttention(W, heads, chunk_size=chunk_size, checkpoint=checkpoint)
    layer = layer.double()
    for p in layer.parameters():  # non-trivial norms and biases
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 5, W, generator=gen, dtype=torch.float64)
    tokens = torch.randn(3, 30, W, generator=gen, dtype=torch.float64)
    valid = None
    if masked:
        valid = torch.rand(3, 30, generator=gen) > 0.3
        valid[1, :14] = False  # whole chunks of row 1 masked
        valid[2] = False  # nothing to read: the queries get no update
    results = {}
    for token_space in (False, True):
        layer.token_space = token_space
        results[token_space] = two_reads(layer, queries, tokens, valid, cached)
    (want, want_grads), (got, got_grads) = results[False], results[True]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    if masked:
        once = layer(queries, tokens, valid)
        torch.testing.assert_close(once[2], queries[2] + layer.out.bias)


def test_token_space_is_the_default_with_one_head_only():
    assert CrossAttention(W, 1).token_space
    assert not CrossAttention(W, 2).token_space
    assert not CrossAttention(W, 1, token_space=False).token_space


def test_local_attention_gradients_equal_the_per_query_definition():
    """The window attention's hand-written backward (neighbours gathered again,
    gradients added by row) equals autograd through the per-query loops, in
    float64, with targets at both ends, repeated centres and several chunks."""
    from gperceiver.nn import LocalAttention
    from test_nn import local_attention_by_loops

    torch.manual_seed(0)
    layer = LocalAttention(W, 2, window=3, target_chunk=3).double()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 12, W, generator=gen, dtype=torch.float64)
    queries = torch.randn(2, 7, W, generator=gen, dtype=torch.float64)
    centers = torch.tensor([[0, 1, 5, 11, 10, 6, 6], [2, 3, 0, 9, 11, 4, 7]])
    weights = torch.linspace(-1, 1, W, dtype=torch.float64)
    results = []
    for run in (layer, lambda q, x, c: local_attention_by_loops(layer, q, x, c)):
        q, x = queries.clone().requires_grad_(), tokens.clone().requires_grad_()
        out = run(q, x, centers)
        (out * weights).sum().backward()
        results.append([out.detach(), q.grad, x.grad])
        results[-1] += [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("ploidy", [1, 2, 3, 4])
def test_marker_embedding_is_the_copy_mean_of_both_allele_tables(ploidy):
    """Tokens = position + the mean over copies of the shared allele vector and the
    marker's own allele vector (counts divided by P before the products)."""
    torch.manual_seed(0)
    m = 9
    embed = allele_embedding(m, n_chroms=2, own=True).double()
    alleles = torch.randint(0, 5, (2, m, ploidy))  # missing, 3 alleles, mask
    marker_idx = torch.tensor([0, 2, 3, 4, 5, 6, 7, 8, 1])
    got = embed(alleles, marker_idx)
    want = copy_mean_tokens(embed, alleles, marker_idx)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def allele_embedding(m: int, n_chroms: int, own: bool):
    """A MarkerEmbedding of 3 alleles on ``m`` markers in ``n_chroms``
    chromosomes; with ``own``, per-marker allele vectors drawn N(0, 1)."""
    from gperceiver.nn import MarkerEmbedding

    embed = MarkerEmbedding(
        3,
        W,
        torch.rand(m),
        torch.arange(m) % n_chroms,
        n_chroms=n_chroms,
        n_fourier=3,
        marker_allele_embedding=own,
    )
    if own:
        torch.nn.init.normal_(embed.marker_allele_embed)
    return embed


def copy_mean_tokens(embed, alleles, marker_idx):
    """The closed form: position + the mean over copies of the shared allele
    row and, when the model has them, the marker's own row: (B, M', D)."""
    rows = embed.allele_embed.weight[alleles]  # (B, M', P, D)
    if embed.marker_allele_embed is not None:
        rows = rows + embed.marker_allele_embed[marker_idx[None, :, None], alleles]
    return embed.position(marker_idx) + rows.mean(2)


@pytest.mark.parametrize("standardized", [False, True], ids=["raw", "standardized"])
@pytest.mark.parametrize("own", [True, False], ids=["per_marker", "shared_only"])
@pytest.mark.parametrize("ploidy", [1, 2, 4])
@pytest.mark.parametrize("read", ["all", "subset"])
def test_fused_marker_tokens_equal_the_copy_mean_in_float64(
    own, ploidy, read, standardized, kernel_launch, cpu_backend
):
    """The CPU kernels (nn.embedding_kernels, float32; numba or C) give the tokens and the
    gradients of every table of the closed form position + mean over copies of
    (shared row + marker's own row), computed in float64 by indexing; with
    ``standardized``, of F.layer_norm of it (no affine map) in float64."""
    from gperceiver.nn import embedding_kernels

    torch.manual_seed(1)
    m, b = 40, 3
    embed = allele_embedding(m, n_chroms=3, own=own)
    marker_idx = torch.arange(m) if read == "all" else torch.randperm(m)[:25].sort()[0]
    alleles = torch.randint(0, 5, (b, len(marker_idx), ploidy))
    grad = torch.randn(b, len(marker_idx), W)
    weights = [embed.allele_embed.weight] + ([embed.marker_allele_embed] if own else [])
    assert embedding_kernels.available(alleles, marker_idx, *weights)
    got = embed(alleles, marker_idx, standardized=standardized)
    assert got.grad_fn.name() == "AlleleTokensBackward"
    got.backward(grad)
    got_grads = {k: p.grad.clone() for k, p in embed.named_parameters()}

    embed = embed.double()
    embed.zero_grad()
    want = copy_mean_tokens(embed, alleles, marker_idx)
    if standardized:
        want = F.layer_norm(want, (W,), eps=1e-5)
    want.backward(grad.double())
    # standardizing divides float32 rounding by each token's spread
    atol = 3e-5 if standardized else 1e-6
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)
    for name, p in embed.named_parameters():  # float32 positions: 1e-5 off
        torch.testing.assert_close(
            got_grads[name].double(), p.grad, rtol=1e-4, atol=1e-4
        )


def test_fused_marker_tokens_need_each_marker_read_once_in_order():
    """Repeated or unordered marker indices (two threads could add into one
    per-marker row) and float64 take the torch path."""
    from gperceiver.nn import embedding_kernels

    table = torch.zeros(4, W)
    alleles = torch.zeros(2, 3, 2, dtype=torch.long)
    assert embedding_kernels.available(alleles, torch.tensor([0, 2, 5]), table)
    assert not embedding_kernels.available(alleles, torch.tensor([0, 2, 2]), table)
    assert not embedding_kernels.available(alleles, torch.tensor([2, 0, 5]), table)
    assert not embedding_kernels.available(
        alleles, torch.tensor([0, 1, 2]), table.double()
    )


@pytest.mark.parametrize("shape", [(3, 50, W), (1, 1, W), (7, 5)])
def test_standardize_kernels_equal_layer_norm_in_float64(shape, kernel_launch):
    """standardize on CPU float32 (nn.standardize_kernels) gives F.layer_norm
    without its affine map, computed in float64: output and input gradient."""
    from gperceiver.nn.token_space import standardize

    torch.manual_seed(2)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    grad = torch.randn(shape)
    got = standardize(x)
    assert got.grad_fn.name() == "StandardizeBackward"
    got.backward(grad)
    exact = x.detach().double().requires_grad_()
    want = torch.nn.functional.layer_norm(exact, shape[-1:], eps=1e-5)
    want.backward(grad.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), exact.grad, rtol=1e-4, atol=1e-5)


def previous_masked_batch(task, rows, generator):
    """MaskedMarkerTask.batch as it was: (locus, allele) indexing of the log
    weights, every row of them indexed by the inputs, mask by index assignment."""
    from gperceiver.tasks.masked import count_targets

    alleles = torch.from_numpy(task.genotypes.alleles[np.sort(rows)].astype(np.int64))
    alleles, inputs = task.select_inputs(alleles, generator)
    log_weights = task.log_weights[inputs]
    loci = torch.arange(alleles.shape[1])[None, :, None]
    logits = log_weights[loci, alleles].sum(-1)
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-12, 1 - 1e-7)
    keys = logits - torch.log(-torch.log(uniform))
    targets = keys.topk(task.n_targets, dim=1).indices.sort(dim=1).values
    valid = torch.isfinite(logits.gather(1, targets))
    counts = count_targets(
        alleles.gather(1, targets[..., None].expand(-1, -1, task.ploidy)),
        task.n_alleles,
    )
    masked = alleles.clone()
    masked[torch.arange(len(alleles))[:, None], targets] = task.n_alleles + 1
    return masked, inputs, targets, valid, counts


@pytest.mark.parametrize("input_fraction", [1.0, 0.5])
@pytest.mark.parametrize("ploidy", [1, 2, 3, 4, 6])
def test_masked_batch_equals_the_previous_formulation(ploidy, input_fraction):
    """Batches (masked alleles, inputs, targets, validity, counts) from gathered
    log weights and a scattered mask are exactly the previous ones."""
    from gperceiver.data import Genotypes, MarkerMap
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask

    rng = np.random.default_rng(ploidy)
    n, m = 6, 300
    alleles = np.sort(rng.integers(0, 4, (n, m, ploidy), dtype=np.uint8), -1)
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{i}" for i in range(m)], range(m)
    )
    names = np.array([f"i{i}" for i in range(n)])
    genotypes = Genotypes(alleles, names, markers, 3)  # ids 1..3, 0 = missing
    config = MaskedConfig(input_fraction=input_fraction)
    task = MaskedMarkerTask(genotypes, genotypes.allele_frequencies(), config)
    rows = np.array([4, 0, 2, 5])
    got = task.batch(rows, torch.Generator().manual_seed(3))
    want = previous_masked_batch(task, rows, torch.Generator().manual_seed(3))
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_token_space_kept_weights_equal_recomputed_scores(chunk_size, monkeypatch):
    """Backward from the weights kept in forward (up to KEEP_WEIGHTS_MAX_FLOATS)
    equals backward that recomputes every chunk's scores, masks included."""
    from gperceiver.nn import attention

    torch.manual_seed(0)
    layer = CrossAttention(W, 1, chunk_size=chunk_size).double()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(4)
    queries = torch.randn(3, 5, W, generator=gen, dtype=torch.float64)
    tokens = torch.randn(3, 30, W, generator=gen, dtype=torch.float64)
    valid = torch.rand(3, 30, generator=gen) > 0.3
    valid[1, :14] = False
    results = []
    for limit in (0, attention.KEEP_WEIGHTS_MAX_FLOATS):
        monkeypatch.setattr(attention, "KEEP_WEIGHTS_MAX_FLOATS", limit)
        results.append(two_reads(layer, queries, tokens, valid, True))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for g, w in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("share_weights", ["all", "none"])
def test_encoder_token_gradient_summed_in_one_buffer_matches_finite_differences(
    share_weights,
):
    """Every encoder iteration adds its gradient of the shared standardized tokens
    into one buffer (SharedTokens); gradcheck (finite differences) confirms the
    sum reaching the tokens, with a mask and two chunks."""
    from gperceiver.nn import PerceiverConfig, PerceiverEncoder

    torch.manual_seed(0)
    config = PerceiverConfig(
        n_alleles=2,
        ploidy=2,
        n_markers=9,
        n_chroms=1,
        width=8,
        n_latents=3,
        cross_heads=1,
        self_heads=2,
        self_layers=1,
        encode_iters=3,
        share_weights=share_weights,
        dropout=0.0,
        chunk_size=5,
        n_fourier=2,
    )
    encoder = PerceiverEncoder(config).double()
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 9, 8, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 9, generator=gen) > 0.3
    tokens.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: encoder(x, mask), (tokens,))


def token_space_config(**fields):
    """A tiny diploid biallelic config on 2 chromosomes whose encoder reads in
    token space (one cross head), dropout off; ``fields`` set the rest."""
    from gperceiver.nn import PerceiverConfig

    values = dict(
        n_alleles=2,
        ploidy=2,
        n_chroms=2,
        width=8,
        n_latents=3,
        cross_heads=1,
        self_heads=2,
        self_layers=1,
        dropout=0.0,
        n_fourier=2,
    )
    return PerceiverConfig(**(values | fields))


def test_tokens_standardized_in_place_give_the_same_model_gradients(monkeypatch):
    """Above IN_PLACE_MIN_FLOATS the encoder standardizes the tokens over
    themselves and backward reuses the summed gradient's buffer: same loss
    gradients as torch's layer norm (here forced on a tiny model), and
    finite differences agree on the in-place function itself."""
    from gperceiver.nn import MaskedMarkerModel
    from gperceiver.nn import perceiver as perceiver_module
    from gperceiver.nn.token_space import SharedTokens

    config = token_space_config(n_markers=12, decoder_window=0, chunk_size=5)
    torch.manual_seed(0)
    pos = np.tile(np.linspace(0, 1, 6), 2)
    model = MaskedMarkerModel(config, pos, np.repeat([0, 1], 6)).double()
    gen = torch.Generator().manual_seed(3)
    alleles = torch.randint(0, 3, (3, 12, 2), generator=gen)
    targets = torch.tensor([1, 4, 9])
    grads = []
    for limit in (1 << 40, 0):
        monkeypatch.setattr(perceiver_module, "IN_PLACE_MIN_FLOATS", limit)
        model.zero_grad()
        logits = model(alleles, torch.arange(12), targets)
        (
            logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)
        ).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    x = torch.randn(2, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    encoder, mask = model.encoder, torch.rand(2, 7, generator=gen) > 0.2

    def read(x):
        tokens = x * 1.0  # a non-leaf to overwrite
        return encoder(tokens, mask, None, SharedTokens.of(tokens, in_place=True))

    assert torch.autograd.gradcheck(read, (x,))
    # no reference cycle keeps a step's graph alive: it is freed as soon as the
    # loss is (the 1 GB tokens of a 500k step must not wait for the collector)
    import gc
    import weakref

    gc.disable()
    try:
        tokens = x * 1.0  # with a graph
        shared = SharedTokens.of(tokens, in_place=True)
        alive = weakref.ref(tokens)
        del tokens, shared
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("recomputed", [False, True])
def test_window_gradient_added_into_the_shared_buffer(
    recomputed, kernel_launch, cpu_backend
):
    """On the CPU in float32 the decoder's window adds its tokens' gradient
    into the encoder's shared buffer, counted once as a reader also when
    checkpointing recomputes it: every parameter's gradient equals the float64
    model's, whose torch ops share nothing."""
    from gperceiver.nn import MaskedMarkerModel

    config = token_space_config(
        n_markers=40, decoder_window=3, chunk_size=16, checkpoint_attention=recomputed
    )
    torch.manual_seed(0)
    pos = np.tile(np.linspace(0, 1, 20), 2)
    model = MaskedMarkerModel(config, pos, np.repeat([0, 1], 20))
    exact = MaskedMarkerModel(config, pos, np.repeat([0, 1], 20)).double()
    exact.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    alleles = torch.randint(0, 3, (3, 40, 2), generator=gen)
    targets = torch.tensor([0, 7, 21, 39])
    grads = []
    for net in (model, exact):
        logits = net(alleles, torch.arange(40), targets)
        weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype)
        (logits * weights.view_as(logits)).sum().backward()
        grads.append({k: p.grad for k, p in net.named_parameters()})
    for name, g in grads[1].items():
        torch.testing.assert_close(
            grads[0][name].double(), g, rtol=1e-4, atol=1e-5, msg=name
        )
