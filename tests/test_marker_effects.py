"""rrBLUP marker effects back-solved from GBLUP: the same as ridge regression on
the centred allele dosages, and they reproduce the breeding values."""

import numpy as np
import pandas as pd
import pytest

from gperceiver.baselines import GBLUP, FixedEffects, Kernel
from gperceiver.cli import main
from gperceiver.data import Genotypes, MarkerMap
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.selection import marker_effects


def random_genotypes(rng, n=60, m=80, ploidy=2, n_alleles=3) -> Genotypes:
    """Random alleles with 2 % missing copies and one monomorphic marker."""
    alleles = rng.integers(1, n_alleles + 1, size=(n, m, ploidy)).astype(np.uint8)
    alleles[:, 0] = 1  # monomorphic
    alleles[rng.random(alleles.shape) < 0.02] = 0
    markers, _ = MarkerMap.from_columns(
        ["1"] * (m // 2) + ["2"] * (m - m // 2), [f"m{i}" for i in range(m)],
        np.r_[np.arange(m // 2), np.arange(m - m // 2)] * 1000 + 1,
    )  # fmt: skip
    names = np.array([f"i{k}" for k in range(n)])
    return Genotypes(np.sort(alleles, axis=-1), names, markers, n_alleles)


def centred_dosages(genotypes: Genotypes) -> tuple[np.ndarray, np.ndarray]:
    """``Z`` ``(N, M * A)`` by direct counting (missing copies at the mean) and
    VanRaden's denominator ``sum P p (1 - p)``, written out independently."""
    a, ploidy = genotypes.alleles, genotypes.ploidy
    columns, denominator = [], 0.0
    for m in range(a.shape[1]):
        called = a[:, m] > 0
        for allele in range(1, genotypes.n_alleles + 1):
            p = (a[:, m] == allele).sum() / called.sum()
            # a missing copy counts its expectation p
            dosage = (a[:, m] == allele).sum(1) + (~called).sum(1) * p
            columns.append(dosage - ploidy * p)
            denominator += ploidy * p * (1 - p)
    return np.stack(columns, axis=1), denominator


def test_marker_effects__equal_ridge_regression_and_reproduce_the_blup():
    rng = np.random.default_rng(7)
    g = random_genotypes(rng)
    z, c = centred_dosages(g)
    # 50 phenotyped individuals, 10 of them with a second record; a sex effect
    names = np.r_[g.names[:50], g.names[:10]]
    sex = rng.choice(["F", "M"], len(names))
    truth = z[g.index_of(names)] @ rng.normal(0, 0.1, z.shape[1])
    y = 2.0 + 0.8 * (sex == "M") + truth + rng.normal(0, 1.0, len(names))
    records = pd.DataFrame({"name": names, "response": y, "sex": sex})
    kernel = Kernel.relationship(g)
    assert np.allclose(kernel.matrix, z @ z.T / c)
    model = GBLUP(kernel, fixed=FixedEffects(("sex",))).fit(records, g)
    table = marker_effects(model.fit_, names, g, method="gblup")
    effects = effect_matrix(table, g)
    assert (table["marker"] != "m0").all()  # monomorphic: no row

    # ridge (rrBLUP) solved directly: lambda = s2e / s2g x c, X unpenalised
    x = np.c_[np.ones(len(y)), sex == "M"]
    zr = z[g.index_of(names)]
    lam = model.fit_.s2e / model.fit_.s2g * c
    lhs = np.block(
        [[x.T @ x, x.T @ zr], [zr.T @ x, zr.T @ zr + lam * np.eye(len(z.T))]]
    )
    solution = np.linalg.lstsq(lhs, np.r_[x.T @ y, zr.T @ y], rcond=None)[0]
    assert np.allclose(solution[:2], model.fit_.beta, atol=1e-8)
    assert np.allclose(solution[2:], effects, atol=1e-9)
    # Z effects are the BLUPs of every individual, phenotyped or not
    assert np.allclose(z @ effects, model.fit_.blup, atol=1e-9)
    assert np.abs(model.fit_.blup[50:]).max() > 1e-3  # the unphenotyped too


@pytest.fixture(scope="module")
def simulated():
    from gperceiver.simulate import SimulationConfig, simulate

    config = SimulationConfig(
        n_individuals=120, n_markers=300, chromosome_length_bp=20_000_000,
        n_qtl=30, n_environments=2, n_folds=5, fixed_variance=0.3, seed=5,
    )  # fmt: skip
    return simulate(config)


def write_inputs(data, directory) -> list[str]:
    write_phenotypes(data.phenotypes, directory / "phenos.tsv")
    write_chroms(data.genotypes.markers, directory / "chroms.tsv")
    write_markers(data.genotypes, directory / "markers.tsv")
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


def effect_matrix(table: pd.DataFrame, genotypes: Genotypes) -> np.ndarray:
    """The long table's effects as ``(M * A,)`` in map order (0 where absent)."""
    flat = np.zeros((genotypes.n_markers, genotypes.n_alleles))
    rows = pd.Index(genotypes.markers.names).get_indexer(table["marker"])
    flat[rows, table["allele"].to_numpy() - 1] = table["effect"]
    return flat.ravel()


def test_gblup_marker_effects__file_reproduces_the_gebv(simulated, tmp_path):
    g = simulated.genotypes
    inputs = write_inputs(simulated, tmp_path)
    out, effects = tmp_path / "gebv.tsv", tmp_path / "effects.tsv"
    assert main(["gblup", *inputs, "--predictions", str(out), "--fixed", "sex",
                 "--marker-effects", str(effects)]) == 0  # fmt: skip
    gebv = pd.read_csv(out, sep="\t")
    table = pd.read_csv(effects, sep="\t")
    assert set(table["block"]) == {0, 1} and (table["fold"] == "all").all()
    z, _ = centred_dosages(g)
    for block, part in table.groupby("block"):
        expected = gebv[gebv["block"] == block].set_index("name").loc[g.names, "gebv"]
        assert np.allclose(z @ effect_matrix(part, g), expected, atol=1e-4)


def test_evaluate__writes_marker_effects_of_each_gblup_fit(simulated, tmp_path):
    g = simulated.genotypes
    inputs = write_inputs(simulated, tmp_path)
    out = tmp_path / "cv"
    assert main(["evaluate", *inputs, "--methods", "gblup,rkhs", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    table = pd.read_csv(out / "marker_effects.tsv", sep="\t", dtype={"fold": str})
    assert set(table["method"]) == {"gblup"}
    assert len(table.groupby(["block", "fold"])) == 2 * 5
    # fold 0, block 0: Z effects + intercept are the validation predictions
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    rows = predictions[
        (predictions["method"] == "gblup") & (predictions["cv"] == 0)
        & (predictions["block"] == 0)
    ]  # fmt: skip
    part = table[(table["block"] == 0) & (table["fold"] == "0")]
    z, _ = centred_dosages(g)
    genetic = (z @ effect_matrix(part, g))[g.index_of(rows["name"])]
    assert np.allclose(genetic, rows["prediction"] - rows["fixed"], atol=1e-4)


def test_gblup_marker_effects__raises_on_rkhs(simulated, tmp_path, capsys):
    inputs = write_inputs(simulated, tmp_path)
    code = main(["gblup", *inputs, "--predictions", str(tmp_path / "p.tsv"),
                 "--method", "rkhs", "--marker-effects", str(tmp_path / "e.tsv")])  # fmt: skip
    assert code == 1 and "--marker-effects" in capsys.readouterr().err
    assert not (tmp_path / "p.tsv").exists() and not (tmp_path / "e.tsv").exists()
