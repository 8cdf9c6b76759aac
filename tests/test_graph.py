"""Marker graphs (LD and edge lists), graph attention and marker annotations."""

import numpy as np
import pytest
import torch

from gperceiver.cli import main
from gperceiver.data import Genotypes, MarkerMap
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.io import (
    InputError,
    InputWarning,
    read_annotations,
    read_marker_graph,
    read_marker_inputs,
    write_chroms,
    write_markers,
    write_phenotypes,
)
from gperceiver.io.variants import blocks_from_genotypes
from gperceiver.io.vcf import placeholder_alleles
from gperceiver.io.zarr_store import ZarrGenotypes, write_zarr
from gperceiver.marker_graph import ld_graph, ld_scores
from gperceiver.nn.embeddings import MarkerEmbedding
from gperceiver.nn.graph_attention import GraphAttention
from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
from gperceiver.pretraining import load_masked_model, pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate

SMALL = {
    "width": 16,
    "n_latents": 4,
    "self_layers": 1,
    "encode_iters": 1,
    "progress": False,
    "epochs": 1,
    "batch_size": 32,
}


def genotypes_of(dosage, chrom) -> Genotypes:
    """Biallelic diploid genotypes of a dosage matrix (N, M) (-1 = missing)."""
    dosage = np.asarray(dosage)
    n, m = dosage.shape
    alleles = np.stack([np.where(dosage >= 2, 2, 1), np.where(dosage >= 1, 2, 1)], -1)
    alleles[dosage < 0] = 0
    markers, _ = MarkerMap.from_columns(chrom, [f"m{i}" for i in range(m)], range(m))
    names = np.array([f"i{i}" for i in range(n)])
    return Genotypes(alleles.astype(np.uint8), names, markers, 2)


# a and b are uncorrelated (centred dot product 0); markers 0-3 on chromosome 1,
# 4-5 on chromosome 2: m0 = a, m1 = a, m2 = 2 - a, m3 = b, m4 = b, m5 = a
A = np.array([0, 0, 2, 2, 0, 0, 2, 2])
B = np.array([0, 2, 0, 2, 0, 2, 0, 2])
HAND = np.stack([A, A, 2 - A, B, B, A], 1)
HAND_CHROM = ["1"] * 4 + ["2"] * 2


def test_ld_graph__expected_edges_on_hand_made_genotypes():
    g = genotypes_of(HAND, HAND_CHROM)
    graph = ld_graph(g, np.arange(8), window=2, neighbours=2, min_r2=0.5)
    assert graph.neighbours(0) == {1: 1.0, 2: 1.0}
    assert graph.neighbours(1) == {0: 1.0, 2: 1.0}
    assert graph.neighbours(2) == {0: 1.0, 1: 1.0}
    # b is uncorrelated with a; m4 equals m3 but sits on another chromosome, and m5
    # equals m0..m2 but lies beyond the window and on another chromosome
    for marker in (3, 4, 5):
        assert graph.neighbours(marker) == {}
    assert len(graph) == 6
    # one neighbour: of two r² = 1 candidates the nearer one; at equal distance
    # (m1 reads m0 and m2) the left one
    one = ld_graph(g, np.arange(8), window=2, neighbours=1, min_r2=0.5)
    assert one.neighbours(0) == {1: 1.0} and one.neighbours(1) == {0: 1.0}
    assert one.neighbours(2) == {1: 1.0}


def test_ld_graph__uses_only_the_given_individuals():
    """Eight extra individuals make m3 follow m2; they change the graph only
    when they are among the rows."""
    extra = np.stack([[0, 0, 2, 2, 0, 2], [2, 2, 0, 0, 2, 0]] * 4)
    g = genotypes_of(np.concatenate([HAND, extra]), HAND_CHROM)
    train = ld_graph(g, np.arange(8), window=1, neighbours=2, min_r2=0.2)
    every = ld_graph(g, np.arange(16), window=1, neighbours=2, min_r2=0.2)
    assert 2 not in train.neighbours(3)
    assert 2 in every.neighbours(3)


def test_ld_scores__match_numpy_correlations_across_chunks():
    rng = np.random.default_rng(1)
    dosage = rng.integers(0, 3, (40, 23))
    dosage[:, 5] = dosage[:, 4]  # perfect LD inside the map
    g = genotypes_of(dosage, ["1"] * 23)
    window = 4
    r = ld_scores(g, np.arange(40), window, chunk=5)  # chunks cut the band
    expected = np.corrcoef(dosage.T)
    for d in range(1, window + 1):
        # r² of the major-allele dosages equals that of any allele's (biallelic)
        np.testing.assert_allclose(
            r[: 23 - d, d - 1] ** 2, np.diag(expected, d) ** 2, atol=1e-5
        )
        assert np.isnan(r[23 - d :, d - 1]).all()
    assert r[4, 0] ** 2 == pytest.approx(1.0, abs=1e-5)


def test_ld_graph__multi_allelic_marker_scored_by_its_major_allele():
    """m0 carries alleles 2 and 3 only (allele 1 is absent, so its allele-1 dosage
    is constant) and its allele-2 dosage equals m1's: r² = 1, an edge."""
    copies = np.array([0, 1, 2, 2, 1, 0, 2, 1])  # m0's copies of allele 2
    m0 = np.stack([np.where(copies >= 1, 2, 3), np.where(copies >= 2, 2, 3)], -1)
    m1 = genotypes_of(2 - copies[:, None], ["1"]).alleles[:, 0]
    alleles = np.sort(np.stack([m0, m1], 1), -1).astype(np.uint8)  # (8, 2, 2)
    markers, _ = MarkerMap.from_columns(["1", "1"], ["m0", "m1"], [1, 2])
    g = Genotypes(alleles, np.array([f"i{i}" for i in range(8)]), markers, 3)
    assert ld_scores(g, np.arange(8), 1)[0, 0] ** 2 == pytest.approx(1.0)
    assert ld_graph(g, np.arange(8), window=1).neighbours(0) == {1: 1.0}


def test_ld_scores__missing_entries_count_as_the_mean():
    dosage = np.array([[0, 0], [1, 1], [2, 2], [-1, 2], [1, 1]])
    r = ld_scores(genotypes_of(dosage, ["1", "1"]), np.arange(5), 1)
    called = dosage[:, 0] >= 0
    x = np.where(called, dosage[:, 0], dosage[called, 0].mean())
    x = np.where(called, (x - x[called].mean()) / x[called].std(), 0.0)
    y = (dosage[:, 1] - dosage[:, 1].mean()) / dosage[:, 1].std()
    assert abs(r[0, 0]) == pytest.approx(abs((x * y).mean()), abs=1e-6)


def test_ld_graph__streamed_store_equals_in_memory(sim, tmp_path):
    """A VCF Zarr store read block by block (16 samples) gives the same graph."""
    g = sim.genotypes
    blocks = blocks_from_genotypes(g, placeholder_alleles(g.n_alleles), 40)
    write_zarr(blocks, g.names, tmp_path / "g.zarr", 40, 16)
    store = ZarrGenotypes(tmp_path / "g.zarr", block_samples=16)
    rows = np.arange(3, 75, 2)  # training rows spread over several blocks
    expected = ld_graph(g, rows)
    streamed = ld_graph(store, rows)
    assert len(expected) > 50
    np.testing.assert_array_equal(streamed.src, expected.src)
    np.testing.assert_array_equal(streamed.dst, expected.dst)
    np.testing.assert_allclose(streamed.weight, expected.weight, atol=1e-6)
    assert store.alleles.blocks_read == 2 * 5  # two passes over 5 sample blocks


def random_edges(m: int, n_edges: int, seed: int):
    rng = np.random.default_rng(seed)
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, m, (n_edges, 2)) if a != b}
    src, dst = np.array(sorted(pairs)).T
    weight = rng.uniform(0.1, 1.0, len(src))
    order = np.lexsort((src, dst))
    return (
        torch.from_numpy(src[order]),
        torch.from_numpy(dst[order]),
        torch.from_numpy(weight[order]).float(),
    )


def test_graph_attention__relabelling_markers_relabels_outputs():
    torch.manual_seed(0)
    layer = GraphAttention(16, 4, chunk=7).eval()
    m = 30
    x = torch.randn(m, 16)
    src, dst, weight = random_edges(m, 90, seed=0)
    perm = torch.randperm(m)  # new marker i is old marker perm[i]
    new_of_old = torch.empty_like(perm)
    new_of_old[perm] = torch.arange(m)
    new_src, new_dst = new_of_old[src], new_of_old[dst]
    order = torch.from_numpy(np.lexsort((new_src.numpy(), new_dst.numpy())))
    with torch.no_grad():
        out = layer(x, src, dst, weight)
        relabelled = layer(x[perm], new_src[order], new_dst[order], weight[order])
    torch.testing.assert_close(relabelled, out[perm], atol=1e-5, rtol=1e-5)
    assert (out - x).abs().max() > 1e-3  # the layer does change the table


def test_graph_attention__chunked_equals_whole_and_reads_only_neighbours():
    torch.manual_seed(0)
    m = 25
    x = torch.randn(m, 16, requires_grad=True)
    src, dst, weight = random_edges(m, 50, seed=3)
    whole = GraphAttention(16, 2, chunk=1000, checkpoint=False)
    chunked = GraphAttention(16, 2, chunk=4, checkpoint=True)
    for p in (*whole.parameters(), *chunked.parameters()):
        p.data.normal_(0, 0.3)  # not the tiny init: make the attention matter
    chunked.load_state_dict(whole.state_dict())
    out = whole(x, src, dst, weight)
    (grad,) = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
    out_chunked = chunked(x, src, dst, weight)
    (grad_chunked,) = torch.autograd.grad(out_chunked.square().sum(), x)
    torch.testing.assert_close(out_chunked, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_chunked, grad, atol=1e-4, rtol=1e-4)
    # marker i depends on x[j] only when j -> i is an edge (or j == i)
    target = int(dst[0])
    readers = set(src[dst == target].tolist()) | {target}
    (row_grad,) = torch.autograd.grad(out[target].sum(), x)
    depends = set(torch.nonzero(row_grad.abs().sum(1) > 0).flatten().tolist())
    assert depends == readers


def test_graph_attention__weights_steer_attention():
    """With equal attention scores, a marker leans to its heavier edge."""
    layer = GraphAttention(8, 1, chunk=10)
    with torch.no_grad():
        layer.qkv.weight.zero_()  # equal scores: only log(weight) differs
        layer.qkv.bias.zero_()
        layer.qkv.weight[16:].copy_(torch.eye(8))  # values = normalised inputs
        layer.out.weight.copy_(torch.eye(8))
        for p in layer.ff.parameters():
            p.zero_()
        x = torch.zeros(3, 8)
        x[1, 0], x[2, 1] = 1.0, 1.0  # neighbours 1 and 2 point different ways
        src, dst = torch.tensor([1, 2]), torch.tensor([0, 0])
        out = layer(x, src, dst, torch.tensor([0.9, 0.1]))
        swapped = layer(x, src, dst, torch.tensor([0.1, 0.9]))
    assert out[0, 0] > out[0, 1] + 0.5
    assert swapped[0, 1] > swapped[0, 0] + 0.5


def test_position_table__reused_in_inference_until_weights_change():
    torch.manual_seed(0)
    embed = MarkerEmbedding(
        2,
        16,
        np.linspace(0, 1, 12),
        np.zeros(12, int),
        n_chroms=1,
        n_graph_edges=4,
        graph_layers=1,
    )
    embed.set_graph([1, 0, 3, 2], [0, 1, 2, 3], [0.5, 0.5, 0.9, 0.9])
    embed.eval()
    with torch.no_grad():
        first = embed.position_table()
        assert embed.position_table() is first  # one table for every batch
        embed.chrom_embed.weight.add_(1.0)  # e.g. an optimiser step
        changed = embed.position_table()
    assert changed is not first and not torch.allclose(changed, first)
    fresh = embed.position_table()  # with gradients: never cached
    torch.testing.assert_close(fresh.detach(), changed)
    embed.train()
    with torch.no_grad():  # dropout may be on in training mode: no reuse
        assert embed.position_table() is not embed.position_table()


@pytest.fixture(scope="module")
def sim():
    return simulate(
        SimulationConfig(
            n_individuals=80,
            n_markers=120,
            n_chromosomes=2,
            n_qtl=10,
            n_environments=2,
            n_folds=4,
            missing_rate=0.0,
            seed=3,
        )
    )


def write_annotations(path, g, qtl) -> None:
    """score (numeric, NA for one marker), class (categorical), one unknown marker."""
    lines = ["marker\tscore\tclass"]
    for m, name in enumerate(g.markers.names):
        score = "NA" if m == 0 else f"{float(m in qtl) + 0.01 * m:.3f}"
        lines.append(f"{name}\t{score}\t{'exon' if m % 3 else 'intron'}")
    lines.append("elsewhere\t1\texon")
    path.write_text("\n".join(lines) + "\n")


def test_model_with_graph_and_annotations__save_load_identical(sim, tmp_path):
    g, phenos = sim.genotypes, sim.phenotypes
    annotations = tmp_path / "annotations.tsv"
    write_annotations(annotations, g, set(sim.qtl.tolist()))
    params = {**SMALL, "marker_graph": "ld", "annotations": str(annotations)}
    with pytest.warns(InputWarning, match="1 row"):
        inputs = read_marker_inputs(params, g.markers)
        (trained,) = finetune(
            phenos, g, tmp_path / "ft", params, cv="0", marker_inputs=inputs
        )
    model = load_predictor(tmp_path / "ft", g).members[0]
    assert model.config.n_graph_edges > 0 and model.config.annotation_levels == (2,)
    # the graph is the LD graph of the training individuals (cv != 0) alone
    train_rows = np.unique(g.index_of(phenos.split("0")[0]["name"]))
    expected = ld_graph(g, train_rows)
    assert torch.equal(model.embed.graph_src, torch.from_numpy(expected.src))
    assert torch.equal(model.embed.graph_dst, torch.from_numpy(expected.dst))
    assert torch.equal(model.embed.graph_weight, torch.from_numpy(expected.weight))
    every = ld_graph(g, np.arange(g.n_individuals))
    assert len(every) != len(expected) or not np.allclose(every.weight, expected.weight)
    # the loaded model predicts exactly what the trained model in memory predicts
    trained.eval()
    x = torch.from_numpy(g.alleles[:10].astype(np.int64))
    idx = torch.arange(g.n_markers)
    with torch.no_grad():
        torch.testing.assert_close(model(x, idx), trained(x, idx), atol=0, rtol=0)
    assert model.embed.annotations.missing[0, 0] == 1.0  # NA of marker 0


def test_pretrained_graph__carried_into_finetuning(sim, tmp_path):
    g = sim.genotypes
    params = {**SMALL, "marker_graph": "ld", "graph_layers": 1}
    model = pretrain_encoder(g, tmp_path / "pre", params).eval()
    loaded, _ = load_masked_model(tmp_path / "pre", g)
    x = torch.from_numpy(g.alleles[:4].astype(np.int64))
    idx, targets = torch.arange(g.n_markers), torch.arange(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, idx, targets), model(x, idx, targets))
    # finetuning from it keeps the pretrained graph and its layers
    finetune(sim.phenotypes, g, tmp_path / "ft", SMALL, pretrained=tmp_path / "pre")
    member = load_predictor(tmp_path / "ft").members[0]
    assert torch.equal(member.embed.graph_src, model.embed.graph_src)
    assert len(member.embed.graph) == 1


def test_perceiver_config__old_configs_load_without_graph():
    old = {"n_alleles": 2, "ploidy": 2, "n_markers": 10, "n_chroms": 1}
    config = PerceiverConfig.from_dict(old)
    model = MaskedMarkerModel(config, np.linspace(0, 1, 10), np.zeros(10, int))
    names = set(model.state_dict())
    assert not {n for n in names if "graph" in n or "annotation" in n}
    assert "embed.fourier_proj.weight" in names
    assert model.embed.position_table() is None


@pytest.mark.parametrize(
    "overrides, present, absent",
    [
        ({"fourier_position": False}, "marker_embed", "fourier_proj"),
        ({"learned_marker_embedding": False}, "fourier_proj", "marker_embed"),
    ],
)
def test_position_variants__own_only_their_parts(overrides, present, absent):
    sizes = {"n_alleles": 2, "ploidy": 2, "n_markers": 10, "n_chroms": 1}
    config = PerceiverConfig(**sizes, width=16, **overrides)
    model = MaskedMarkerModel(config, np.linspace(0, 1, 10), np.zeros(10, int))
    names = {n.split(".")[1] for n in model.state_dict() if n.startswith("embed.")}
    assert present in names and absent not in names
    x = torch.ones(2, 10, 2, dtype=torch.long)
    assert model(x, torch.arange(10), torch.arange(3)).shape == (2, 3, 2, 3)


# -- readers ---------------------------------------------------------------------
@pytest.fixture
def markers():
    return MarkerMap.from_columns(["1", "1", "2"], ["a", "b", "c"], [1, 2, 1])[0]


def test_read_annotations__numeric_and_categorical_aligned_to_map(tmp_path, markers):
    path = tmp_path / "ann.tsv"
    path.write_text("marker\tp\tgene\nc\t3.5\tg2\na\tNA\tg10\nzz\t1\tg1\n")
    with pytest.warns(InputWarning, match="zz"):
        ann = read_annotations(path, markers)
    assert ann.numeric_names == ["p"] and ann.categorical_names == ["gene"]
    np.testing.assert_array_equal(ann.numeric[:, 0], [np.nan, np.nan, 3.5])
    assert ann.categories == [["g2", "g10"]]  # natural order; g1 is not in the map
    np.testing.assert_array_equal(ann.codes[:, 0], [2, 0, 1])  # b has no row
    z, missing = ann.scaled()
    np.testing.assert_array_equal(missing[:, 0], [1, 1, 0])
    assert z[2, 0] == 0.0  # one value: centred to 0


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("name\tp\na\t1\n", "line 1", "expected the annotations columns"),
        ("marker\na\n", "line 1", "no annotation column"),
        ("marker\tp\na\t1\na\t2\n", "line 3, column 'marker'", "duplicate marker"),
        ("marker\tp\na\t1\nb\t1.2x\n", "line 3, column 'p'", "is text but line 2"),
        ("marker\tp\na\tinf\n", "line 2, column 'p'", "not a finite number"),
        ("marker\tp\tq\na\t1\tNA\n", "column 'q'", "no marker of the map has a value"),
        ("marker\tp\nx\t1\n", "line 2", "no annotation row names a marker"),
    ],
)
def test_read_annotations__raises_on_bad_table(tmp_path, markers, text, where, problem):
    path = tmp_path / "ann.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        read_annotations(path, markers)
    assert err.value.path == str(path) and err.value.where == where
    assert err.value.fix


def test_read_marker_graph__undirected_edges(tmp_path, markers):
    path = tmp_path / "graph.tsv"
    path.write_text("marker_a\tmarker_b\tweight\na\tc\t0.5\nb\tzz\t1\n")
    with pytest.warns(InputWarning, match="zz"):
        graph = read_marker_graph(path, markers)
    assert graph.neighbours(0) == {2: 0.5} and graph.neighbours(2) == {0: 0.5}
    assert graph.neighbours(1) == {} and len(graph) == 2


@pytest.mark.parametrize(
    "rows, where, problem",
    [
        ("a\tb\t0\n", "line 2, column 'weight'", "not a positive number"),
        ("a\tb\tNA\n", "line 2, column 'weight'", "not a positive number"),
        ("a\tb\theavy\n", "line 2, column 'weight'", "not a number"),
        ("a\ta\t1\n", "line 2, column 'marker_b'", "to itself"),
        ("a\tb\t1\nb\ta\t2\n", "line 3", "also on line 2"),
        ("x\ty\t1\n", "line 2", "names a marker of the map"),
    ],
)
def test_read_marker_graph__raises_on_bad_table(
    tmp_path, markers, rows, where, problem
):
    path = tmp_path / "graph.tsv"
    path.write_text("marker_a\tmarker_b\tweight\n" + rows)
    with pytest.raises(InputError, match=problem) as err:
        read_marker_graph(path, markers)
    assert err.value.path == str(path) and err.value.where == where


def test_cli_finetune__bad_annotations_exit_1_without_output(sim, tmp_path, capsys):
    g = sim.genotypes
    write_chroms(g.markers, tmp_path / "chroms.tsv")
    write_markers(g, tmp_path / "markers.tsv")
    write_phenotypes(sim.phenotypes, tmp_path / "phenos.tsv")
    bad = tmp_path / "ann.tsv"
    bad.write_text(f"marker\tscore\n{g.markers.names[0]}\t1\n{g.markers.names[1]}\tx\n")
    args = [str(tmp_path / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]
    out = tmp_path / "model"
    code = main(["finetune", *args, "--out", str(out), "--annotations", str(bad)])
    assert code == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "line 3, column 'score'" in err
    assert not (out / "config.json").exists()
