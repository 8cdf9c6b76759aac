"""Panel attention through a candidate shortlist (nn/candidates.py,
nn/panel_shortlist.py): the copy equals full attention when everyone is a
candidate; the hashed search recalls the exact nearest individuals, never returns
the query itself and ignores the panel's order."""

import numpy as np
import pytest
import torch

from gperceiver.nn.candidates import SearchConfig
from gperceiver.nn.panel import (
    PanelAttention,
    PanelConfig,
    PanelGenotypes,
    PanelWindows,
    QueryState,
    _padded,
    chromosome_spans,
)
from gperceiver.nn.panel_shortlist import (
    ShortlistPanel,
    query_features,
    self_rows,
    shortlist_layer,
)
from gperceiver.simulate import SimulationConfig, simulate
from test_panel import mosaic_genotypes, run


@pytest.fixture(scope="module")
def haplotypes() -> PanelGenotypes:
    """300 diploids x 1,200 SNPs (MAF >= 0.01) on one chromosome of 20 Mb, Ne = 100,
    10 % of the genotypes missing."""
    config = SimulationConfig(
        n_individuals=300,
        n_markers=1200,
        n_chromosomes=1,
        chromosome_length_bp=20_000_000,
        population_size=100,
        mutation_rate=5e-8,
        min_maf=0.01,
        missing_rate=0.1,
        seed=3,
    )
    return PanelGenotypes.from_genotypes(simulate(config).genotypes)


def test_shortlist_copy__everyone_a_candidate_equals_full_attention():
    g = mosaic_genotypes(30, 100, chroms=1, seed=11)
    panel = PanelGenotypes.from_genotypes(g)
    query = panel.subset([0, 7, 29])
    config = PanelConfig(block=8, head_radii=(1, 3), layers=2, segment=4)
    model = PanelAttention(config)
    with torch.no_grad():
        want = model._full(query, PanelWindows.build(panel, 0, 100, 8), 0, 100, 8, None)
        typed = np.ones(100, bool)
        search = SearchConfig(segment=config.segment)
        side = ShortlistPanel.build(panel, 0, 100, 8, typed, search, panel.ids)
        everyone = torch.stack(
            [torch.tensor([r for r in range(30) if r != q]) for q in (0, 7, 29)]
        )
        cands = [everyone] * len(side.index.markers)
        g8 = _padded(query.genotype, 0, 100, 8)
        table = panel.counts_table()
        own = self_rows(query.ids, panel.ids)
        state, probs = QueryState.observed(g8, table, query.ids), None
        for layer in model.layers:
            if probs is not None:
                state = QueryState.filled(g8, table, query.ids, probs)
            feats = query_features(state.counts, state.sq, state.weight)
            probs = shortlist_layer(layer, feats, side, cands, own, config.segment)
    got = probs.flatten(1, 2)[:, :100]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def exact_top(panel: PanelGenotypes, rows, lo: int, hi: int, top: int) -> torch.Tensor:
    """The ``top`` nearest other individuals ``(Q, top)`` on markers ``lo:hi``:
    summed squared copy-count difference over jointly called loci, by brute force."""
    table = panel.counts_table()
    g = panel.genotype[:, lo:hi].long()
    called = (g >= 0).float()
    c = table[g.clamp(min=0)] * called[..., None]
    sq = (c**2).sum(-1)
    q = torch.as_tensor(rows)
    d = sq[q] @ called.T + called[q] @ sq.T - 2 * c[q].flatten(1) @ c.flatten(1).T
    d[torch.arange(len(q)), q] = torch.inf
    return d.topk(top, largest=False).indices


def test_candidate_search__recalls_the_exact_nearest(haplotypes):
    """On msprime haplotypes with 10 % missing, the shortlist of 32 (of 299 others)
    holds most of each query's exact 8 nearest on every segment: far above the
    32 / 299 = 11 % a random shortlist would reach."""
    block, segment = 32, 8
    typed = np.ones(1200, bool)
    search = SearchConfig(segment=segment)
    side = ShortlistPanel.build(
        haplotypes, 0, 1200, block, typed, search, haplotypes.ids
    )
    rows = np.arange(0, 300, 5)
    flat = haplotypes.genotype[rows].long()
    flat = torch.nn.functional.pad(
        flat, (0, side.genotype.shape[1] * block - 1200), value=-1
    )
    hits = []
    for seg in range(len(side.index.markers)):
        cands = side.index.search(seg, flat, haplotypes.ids[rows], 32)
        lo, hi = seg * segment * block, min(1200, (seg + 1) * segment * block)
        near = exact_top(haplotypes, rows, lo, hi, 8)
        hits.append((near[:, :, None] == cands[:, None]).any(-1).float().mean())
    recall = float(torch.stack(hits).mean())
    assert recall > 0.8, recall


def test_candidate_search__never_self_and_independent_of_panel_order(haplotypes):
    typed = np.ones(1200, bool)
    search = SearchConfig(segment=8)
    order = np.random.default_rng(0).permutation(300)
    shuffled = haplotypes.subset(order)
    rows = np.arange(0, 300, 7)
    pad = (0, 5 * 8 * 32 - 1200)
    flat = torch.nn.functional.pad(haplotypes.genotype[rows].long(), pad, value=-1)
    ids = haplotypes.ids[rows]
    sides = [
        ShortlistPanel.build(p, 0, 1200, 32, typed, search, p.ids)
        for p in (haplotypes, shuffled)
    ]
    for seg in range(len(sides[0].index.markers)):
        a = sides[0].index.search(seg, flat, ids, 24)
        b = sides[1].index.search(seg, flat, ids, 24)
        assert (a >= 0).float().mean() > 0.9  # queries meet at least 24 others
        id_a = torch.where(a >= 0, haplotypes.ids[a.clamp(min=0)], -1)
        id_b = torch.where(b >= 0, shuffled.ids[b.clamp(min=0)], -1)
        assert torch.equal(id_a, id_b)  # the same individuals, in the same order
        assert not (id_a == ids[:, None]).any()  # never the query itself


def test_shortlist__a_query_never_reads_its_own_panel_row():
    """Scrambling the query's own row of the panel changes nothing in its copy."""
    g = mosaic_genotypes(60, 120, seed=12)
    panel = PanelGenotypes.from_genotypes(g)
    model = PanelAttention(PanelConfig(block=8, shortlist=10, segment=2))
    for row in (4, 33):
        query = panel.subset([row])
        genotype = panel.genotype.clone()
        genotype[row] = torch.randint(-1, 3, (120,), dtype=torch.int16)
        scrambled = PanelGenotypes(genotype, panel.ids, panel.ploidy, panel.n_alleles)
        a = run(model, query, panel, g.markers.chrom)
        b = run(model, query, scrambled, g.markers.chrom)
        torch.testing.assert_close(a, b)


def test_shortlist__chunked_equals_unchunked_and_differs_from_full():
    g = mosaic_genotypes(50, 90, seed=13)
    panel = PanelGenotypes.from_genotypes(g)
    model = PanelAttention(PanelConfig(block=8, shortlist=12, segment=2, layers=2))
    a = run(model, panel, panel, g.markers.chrom)
    b = run(model, panel, panel, g.markers.chrom, chunk=7)
    torch.testing.assert_close(a, b)
    full = run(
        PanelAttention(PanelConfig(block=8, layers=2)), panel, panel, g.markers.chrom
    )
    assert not torch.allclose(a, full)


@pytest.mark.parametrize("ploidy, n_alleles", [(1, 2), (4, 2), (2, 3), (4, 3)])
def test_shortlist__forward_backward_any_ploidy(ploidy, n_alleles):
    g = mosaic_genotypes(40, 48, ploidy=ploidy, n_alleles=n_alleles, seed=14)
    panel = PanelGenotypes.from_genotypes(g)
    config = PanelConfig(block=4, head_radii=(1, 2), layers=2, shortlist=9, segment=3)
    model = PanelAttention(config)
    probs = model(panel, panel, g.markers.chrom)
    n_g = len(panel.counts_table())
    assert probs.shape == (40, 48, n_g)
    torch.testing.assert_close(probs.sum(-1), torch.ones(40, 48))
    called = panel.genotype >= 0
    truth = panel.genotype.long().clamp(min=0)[..., None]
    loss = -probs.clamp(min=1e-9).log().gather(-1, truth)[..., 0][called].mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_shortlist__index_built_once_serves_every_target_chunk():
    """impute's order (one candidate index per chromosome, then every chunk of
    targets) copies exactly what a fresh index per chunk copies."""
    g = mosaic_genotypes(70, 96, seed=15, chroms=2)
    panel = PanelGenotypes.from_genotypes(g)
    model = PanelAttention(PanelConfig(block=8, shortlist=12, segment=2, layers=2))
    chrom, typed = g.markers.chrom, np.ones(96, bool)
    (lo, hi), _ = chromosome_spans(chrom)
    chunks = [np.arange(0, 30), np.arange(30, 55), np.arange(55, 70)]
    with torch.no_grad():
        side = model.prepare(panel, lo, hi, 8, typed)
        for rows in chunks:
            fresh = model(panel.subset(rows), panel, chrom, typed=typed)[:, lo:hi]
            reused = model.copy_span(panel.subset(rows), side, lo, hi, 8)
            assert torch.equal(fresh, reused)
