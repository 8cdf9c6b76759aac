"""Panel attention (nn/panel.py): exactness against a loop reference, invariances,
self exclusion, shortlist, chunking, gradients for any ploidy / allele number."""

import numpy as np
import pytest
import torch

from gperceiver.data import MISSING, Genotypes, MarkerMap
from gperceiver.nn.panel import (
    PanelAttention,
    PanelConfig,
    PanelGenotypes,
    genotype_frequencies,
)


def mosaic_genotypes(
    n, m, ploidy=2, n_alleles=2, missing=0.1, seed=0, chroms=2, switch=0.05
):
    """Individuals built from six founder haplotypes, each copy switching founder
    with probability ``switch`` per marker, with a share of missing copies."""
    rng = np.random.default_rng(seed)
    founders = rng.integers(1, n_alleles + 1, size=(6, m))
    alleles = np.empty((n, m, ploidy), dtype=np.uint8)
    for i in range(n):
        for c in range(ploidy):
            jumps = np.cumsum(rng.random(m) < switch)
            alleles[i, :, c] = founders[(rng.integers(6) + jumps) % 6, np.arange(m)]
    alleles[rng.random(alleles.shape) < missing] = MISSING
    chrom = np.sort(np.arange(m) % chroms)
    markers = MarkerMap(
        np.array([f"m{j}" for j in range(m)]),
        chrom,
        np.arange(m, dtype=float),
        tuple(f"c{k}" for k in range(chroms)),
    )
    names = np.array([f"i{k}" for k in range(n)])
    return Genotypes(np.sort(alleles, -1), names, markers, n_alleles)


def run(model, query, panel, chrom, **kwargs):
    with torch.no_grad():
        return model(query, panel, chrom, **kwargs)


def reference_copy(query, panel, chrom, config):
    """The copy written as loops over queries, windows and panel members."""
    layer = PanelAttention(config).layers[0]
    taps = layer.taps[0].detach().numpy()
    scale = float(layer.log_scale[0].exp().detach())
    prior = float(layer.log_prior.exp().detach())
    table = query.counts_table().numpy()
    qg, pg = query.genotype.numpy().astype(int), panel.genotype.numpy().astype(int)
    r, s = (len(taps) - 1) // 2, config.block
    out = np.zeros((len(qg), qg.shape[1], table.shape[0]))
    for c in np.unique(chrom):
        cols = np.flatnonzero(chrom == c)
        wins = [cols[i : i + s] for i in range(0, len(cols), s)]
        dist = np.zeros((len(qg), len(pg), len(wins)))
        for q in range(len(qg)):
            for p in range(len(pg)):
                for w, js in enumerate(wins):
                    for j in js:
                        if qg[q, j] >= 0 and pg[p, j] >= 0:
                            diff = table[qg[q, j]] - table[pg[p, j]]
                            dist[q, p, w] += (diff**2).sum()
        for q in range(len(qg)):
            for w, js in enumerate(wins):
                logit = np.zeros(len(pg))
                for d in range(-r, r + 1):
                    if 0 <= w + d < len(wins):
                        logit -= scale * taps[d + r] * dist[q, :, w + d]
                logit[query.ids[q].item() == panel.ids.numpy()] = -np.inf
                alpha = np.exp(logit - logit.max())
                alpha /= alpha.sum()
                for j in js:
                    num, freq = np.zeros(table.shape[0]), np.full(table.shape[0], 0.5)
                    for p in range(len(pg)):
                        if pg[p, j] >= 0:
                            num[pg[p, j]] += alpha[p]
                            if panel.ids[p] != query.ids[q]:  # leave self out
                                freq[pg[p, j]] += 1
                    freq /= freq.sum()
                    out[q, j] = (num + prior * freq) / (num.sum() + prior)
    return out


def test_panel_attention__matches_the_loop_reference():
    g = mosaic_genotypes(7, 23, seed=1)
    panel = PanelGenotypes.from_genotypes(g)
    query = PanelGenotypes.from_genotypes(g, rows=[0, 3])
    config = PanelConfig(block=4, head_radii=(2,), inverse_temperature=0.7, layers=1)
    got = run(PanelAttention(config), query, panel, g.markers.chrom)
    want = reference_copy(query, panel, g.markers.chrom, config)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_panel_attention__invariant_to_panel_order():
    g = mosaic_genotypes(40, 60, seed=2)
    panel = PanelGenotypes.from_genotypes(g)
    order = np.random.default_rng(3).permutation(40)
    shuffled = PanelGenotypes.from_genotypes(g, rows=order)
    query = PanelGenotypes.from_genotypes(g, rows=[1, 5, 9])
    for k in (1024, 7):  # full attention, then a shortlist
        model = PanelAttention(PanelConfig(block=8, shortlist=k))
        a = run(model, query, panel, g.markers.chrom)
        b = run(model, query, shuffled, g.markers.chrom)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_panel_attention__query_never_copies_itself():
    """Output with the query in the panel == output with it removed."""
    g = mosaic_genotypes(30, 48, seed=4)
    panel = PanelGenotypes.from_genotypes(g)
    model = PanelAttention(PanelConfig(block=8))
    for row in (0, 17):
        query = panel.subset([row])
        others = panel.subset([i for i in range(30) if i != row])
        a = run(model, query, panel, g.markers.chrom)
        b = run(model, query, others, g.markers.chrom)
        torch.testing.assert_close(a, b)
    # a panel that holds only the query knows nothing: uniform probabilities
    alone = panel.subset([3])
    got = run(model, alone, alone, g.markers.chrom)
    torch.testing.assert_close(got, torch.full_like(got, 1 / 3))


def test_panel_attention__shortlist_of_everyone_equals_full_attention():
    g = mosaic_genotypes(20, 40, seed=5)
    panel = PanelGenotypes.from_genotypes(g)
    query = panel.subset([2, 11])
    full = run(PanelAttention(PanelConfig(block=8)), query, panel, g.markers.chrom)
    # a panel of at most `shortlist` individuals is read whole
    for k in (20, 25):
        short = run(
            PanelAttention(PanelConfig(block=8, shortlist=k)),
            query,
            panel,
            g.markers.chrom,
        )
        torch.testing.assert_close(short, full)
    fewer = run(
        PanelAttention(PanelConfig(block=8, shortlist=3)), query, panel, g.markers.chrom
    )
    assert not torch.allclose(fewer, full)


def test_panel_attention__chunked_equals_unchunked():
    g = mosaic_genotypes(25, 50, seed=6)
    panel = PanelGenotypes.from_genotypes(g)
    model = PanelAttention(PanelConfig(block=8, layers=2))
    a = run(model, panel, panel, g.markers.chrom)
    b = run(model, panel, panel, g.markers.chrom, chunk=3)
    torch.testing.assert_close(a, b)


def test_panel_attention__copies_better_than_frequencies():
    """On mosaics of six founders the copy recovers hidden genotypes far better
    than the panel's most frequent genotype does."""
    g = mosaic_genotypes(200, 300, missing=0.0, seed=7, switch=0.005)
    panel = PanelGenotypes.from_genotypes(g)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.rand(panel.genotype.shape, generator=gen) < 0.2
    query = panel.hide(hidden)
    probs = run(PanelAttention(PanelConfig(block=8)), query, panel, g.markers.chrom)
    truth = panel.genotype.long()
    copy_acc = (probs.argmax(-1) == truth)[hidden].float().mean()
    mode = genotype_frequencies(panel).argmax(-1)
    mode_acc = (mode[None].expand_as(truth) == truth)[hidden].float().mean()
    assert copy_acc > 0.9 and copy_acc > mode_acc + 0.2, (copy_acc, mode_acc)


@pytest.mark.parametrize("ploidy, n_alleles", [(1, 2), (2, 2), (4, 2), (2, 3), (4, 3)])
def test_panel_attention__forward_backward_any_ploidy(ploidy, n_alleles):
    g = mosaic_genotypes(16, 30, ploidy=ploidy, n_alleles=n_alleles, seed=8)
    panel = PanelGenotypes.from_genotypes(g)
    n_complete = len(panel.counts_table())
    assert n_complete == {1: n_alleles, 2: 3, 4: 5}[ploidy] if n_alleles == 2 else True
    model = PanelAttention(PanelConfig(block=4, head_radii=(1, 3), layers=2))
    probs = model(panel, panel, g.markers.chrom)
    assert probs.shape == (16, 30, n_complete)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16, 30))
    called = panel.genotype >= 0
    loss = (
        -probs.clamp(min=1e-9)
        .log()
        .gather(-1, panel.genotype.long().clamp(min=0)[..., None])[..., 0][called]
        .mean()
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.layers[0].log_scale.grad.abs().sum() > 0
