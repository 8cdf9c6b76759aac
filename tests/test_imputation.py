"""Imputation by panel attention: leakage rules of the masked fit, `impute` one-shot
and with `--reference` (VCF with GT/DS/GP/DR2, tables), refused outputs."""

import cyvcf2
import numpy as np
import pytest
import torch

from gperceiver import io
from gperceiver.cli import main
from gperceiver.data import Genotypes
from gperceiver.imputation import (
    PanelImputeSettings,
    impute_with_panel,
    panel_settings,
)
from gperceiver.io.imputed_vcf import dose_r2, vcf_genotype_order
from gperceiver.io.vcf import write_vcf
from gperceiver.nn.panel import PanelAttention, PanelConfig, PanelGenotypes
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.tasks.panel import PanelFitConfig, PanelMaskedTask


@pytest.fixture(scope="module")
def population() -> Genotypes:
    """150 diploids x 600 SNPs on 2 chromosomes of 20 cM, Ne = 100: long shared
    haplotypes."""
    config = SimulationConfig(
        n_individuals=150,
        n_markers=600,
        n_chromosomes=2,
        chromosome_length_bp=20_000_000,
        population_size=100,
        mutation_rate=5e-8,
        missing_rate=0.0,
        seed=5,
    )
    return simulate(config).genotypes


def hide(g: Genotypes, share: float, seed: int = 0):
    hidden = np.random.default_rng(seed).random(g.alleles.shape[:2]) < share
    alleles = g.alleles.copy()
    alleles[hidden] = 0
    return Genotypes(alleles, g.names, g.markers, g.n_alleles), hidden


def mode_concordance(truth: Genotypes, hidden: np.ndarray, columns=None) -> float:
    """Share of hidden genotypes equal to their marker's most frequent genotype."""
    codes = truth.codes()
    modes = np.array([np.bincount(c).argmax() for c in codes.T])
    hit = codes == modes[None]
    return float(hit[hidden].mean())


FAST = PanelImputeSettings(fit=PanelFitConfig(steps=8, queries=16, windows=16))


def test_panel_task__hidden_truth_is_never_read(population):
    """A query's prediction at its hidden loci ignores what is really there: changing
    its true genotypes at those loci (in the data the panel is built from too)
    changes nothing."""
    g = PanelGenotypes.from_genotypes(population)
    train, val = np.arange(130), np.arange(130, 150)
    model = PanelAttention(PanelConfig(block=8))
    outputs = []
    for flip in (False, True):
        genotype = g.genotype.clone()
        task = PanelMaskedTask(g, population.markers.chrom, train, val)
        hidden = task.hidden(np.array([3]), torch.Generator().manual_seed(1))[0]
        if flip:  # other genotypes at the hidden loci of individual 3
            genotype[3] = torch.where(hidden, (genotype[3] + 1) % 3, genotype[3])
        altered = PanelGenotypes(genotype, g.ids, g.ploidy, g.n_alleles)
        task = PanelMaskedTask(altered, population.markers.chrom, train, val)
        with torch.no_grad():
            probs, hidden_again, truth = task.predict(
                model, np.array([3]), torch.Generator().manual_seed(1)
            )
        assert torch.equal(hidden_again[0], hidden) and hidden.sum() > 20
        outputs.append((probs[0][hidden], truth[0][hidden]))
    assert not torch.equal(outputs[0][1], outputs[1][1])  # the truth did change
    torch.testing.assert_close(outputs[0][0], outputs[1][0])


def test_panel_task__validation_individuals_are_never_candidates(population):
    g = PanelGenotypes.from_genotypes(population)
    train, val = np.arange(0, 150, 2), np.arange(1, 150, 2)
    task = PanelMaskedTask(g, population.markers.chrom, train, val)
    assert not np.isin(task.panel.ids.numpy(), g.ids[val].numpy()).any()
    model = PanelAttention(PanelConfig(block=8))
    rows = train[:10]
    with torch.no_grad():
        loss = task.loss(model, rows, torch.Generator().manual_seed(2))
    scrambled = g.genotype.clone()
    scrambled[val] = scrambled[val].flip(1)  # other genotypes for the validation rows
    g2 = PanelGenotypes(scrambled, g.ids, g.ploidy, g.n_alleles)
    task2 = PanelMaskedTask(g2, population.markers.chrom, train, val)
    with torch.no_grad():
        loss2 = task2.loss(model, rows, torch.Generator().manual_seed(2))
    assert float(loss) == float(loss2)
    with pytest.raises(ValueError, match="overlap"):
        PanelMaskedTask(g, population.markers.chrom, train, train[:3])


def test_impute_with_panel__one_shot_beats_the_mode(population):
    masked, hidden = hide(population, 0.1)
    result = impute_with_panel(masked, settings=FAST)
    hit = (result.genotypes.alleles == population.alleles).all(-1)
    assert (result.genotypes.alleles[~hidden] == population.alleles[~hidden]).all()
    concordance = hit[hidden].mean()
    assert concordance > mode_concordance(population, hidden) + 0.1
    assert concordance > 0.9
    # the fit lowered the held-out cross-entropy
    before, after = result.summary["val_loss"]
    assert after < before


def test_impute_with_panel__a_reference_is_copied_in_one_pass_unless_told(
    population,
):
    """With a reference the default is one copy pass (a second matched mostly on
    its own filled-in loci and lost, BENCHMARKS.md); one-shot keeps the model's
    two; an explicit ``--panel-layers`` holds for both."""
    panel = population.subset(individuals=np.arange(120))
    typed = np.sort(np.random.default_rng(4).choice(600, 120, replace=False))
    targets = population.subset(individuals=np.arange(120, 150), markers=typed)
    default = impute_with_panel(targets, panel, settings=FAST)
    assert default.summary["layers"] == 1
    one = PanelImputeSettings(
        model=PanelConfig(layers=1), fit=FAST.fit, reference_layers=None
    )
    same = impute_with_panel(targets, panel, settings=one)
    assert (same.genotypes.alleles == default.genotypes.alleles).all()
    np.testing.assert_array_equal(same.probabilities, default.probabilities)
    told = panel_settings({"panel_layers": 2, "fit_steps": 8})
    assert told.model.layers == 2 and told.reference_layers is None
    assert impute_with_panel(targets, panel, settings=told).summary["layers"] == 2
    assert (
        impute_with_panel(hide(population, 0.1)[0], settings=FAST).summary["layers"]
        == 2
    )


def test_impute_with_panel__keeps_the_window_with_the_lowest_held_out_loss(
    population,
):
    """With two window sizes to try, the kept one has the lower held-out
    cross-entropy of the two printed, and its calls are those of a run given
    that window alone (the fit does not depend on what else was tried)."""
    import io as text_io
    from dataclasses import replace

    masked, _ = hide(population, 0.1)
    settings = replace(FAST, model=PanelConfig(block=16), block_scales=(1.0, 0.5))
    log = text_io.StringIO()
    both = impute_with_panel(masked, settings=settings, log=log)
    losses = {
        int(line.split()[2].rstrip(":")): float(line.split()[-1])
        for line in log.getvalue().splitlines()
        if line.strip().startswith("windows of")
    }
    assert sorted(losses) == [8, 16]
    assert both.summary["block"] == min(losses, key=losses.get)
    alone = replace(FAST, model=PanelConfig(block=both.summary["block"]))
    single = impute_with_panel(masked, settings=alone)
    assert (single.genotypes.alleles == both.genotypes.alleles).all()
    with pytest.raises(ValueError, match="block_scales"):
        PanelImputeSettings(block_scales=(1.0, 2.0))


def test_dose_r2__running_sums_equal_the_full_probabilities(population):
    masked, _ = hide(population, 0.1)
    result = impute_with_panel(masked, settings=FAST)
    stored = result.r2
    result.r2 = None  # recomputed from the written probabilities
    np.testing.assert_allclose(dose_r2(result), stored, atol=1e-5)


def test_vcf_genotype_order__is_the_vcf_spec_order():
    # triallelic diploid: ours 1/1 1/2 1/3 2/2 2/3 3/3; VCF 0/0 0/1 1/1 0/2 1/2 2/2
    complete = np.array(
        [[2, 0, 0], [1, 1, 0], [1, 0, 1], [0, 2, 0], [0, 1, 1], [0, 0, 2]]
    )
    assert vcf_genotype_order(complete).tolist() == [0, 1, 3, 2, 4, 5]


def write_inputs(g: Genotypes, tmp_path, name):
    chroms, markers = tmp_path / f"{name}.chroms.tsv", tmp_path / f"{name}.tsv"
    io.write_chroms(g.markers, chroms)
    io.write_markers(g, markers)
    return chroms, markers


def test_impute_cli__one_shot_vcf_holds_gt_ds_gp_dr2(population, tmp_path):
    masked, hidden = hide(population, 0.1, seed=3)
    chroms, markers = write_inputs(masked, tmp_path, "masked")
    out = tmp_path / "imputed.vcf.gz"
    main(["impute", str(chroms), str(markers), "--out", str(out), "--fit-steps", "5"])
    vcf = cyvcf2.VCF(str(out))
    assert vcf.samples == population.names.tolist()
    gts, ds, gp, dr2 = [], [], [], []
    for record in vcf:
        gts.append(record.genotype.array()[:, :2].sum(1))
        ds.append(record.format("DS")[:, 0])
        gp.append(record.format("GP"))
        dr2.append(record.INFO["DR2"])
    dose = np.array(gts).T  # (N, M) ALT copies
    truth = (population.alleles == 2).sum(-1)
    assert (dose[~hidden] == truth[~hidden]).all()
    assert (dose[hidden] == truth[hidden]).mean() > 0.9
    gp = np.stack(gp, 1)  # (N, M, 3)
    np.testing.assert_allclose(gp.sum(-1), 1, atol=0.02)
    np.testing.assert_allclose(np.array(ds).T, gp[..., 1] + 2 * gp[..., 2], atol=0.011)
    assert 0 <= min(dr2) and max(dr2) <= 1


def test_impute_cli__reference_fills_markers_never_typed(population, tmp_path):
    """200-individual style split: a panel with every marker, targets typed at 20 %
    of them; every panel marker comes back, the untyped ones well above the mode."""
    panel = population.subset(individuals=np.arange(120))
    typed = np.sort(np.random.default_rng(4).choice(600, 120, replace=False))
    targets = population.subset(individuals=np.arange(120, 150), markers=typed)
    write_vcf(panel, tmp_path / "panel.vcf.gz")
    write_vcf(targets, tmp_path / "chip.vcf.gz")
    out = tmp_path / "imputed.tsv"
    main(
        ["impute", str(tmp_path / "chip.vcf.gz"), "--reference",
         str(tmp_path / "panel.vcf.gz"), "--out", str(out), "--fit-steps", "5"]
    )  # fmt: skip
    got = io.read_markers(out, population.markers)
    assert got.names.tolist() == targets.names.tolist()
    truth = population.subset(individuals=np.arange(120, 150))
    untyped = np.setdiff1d(np.arange(600), typed)
    hit = (got.alleles == truth.alleles).all(-1)
    assert hit[:, typed].all()
    mask = np.zeros((30, 600), bool)
    mask[:, untyped] = True
    assert hit[:, untyped].mean() > mode_concordance(truth, mask) + 0.05


@pytest.mark.parametrize("out", ["imputed.txt", "imputed.csv", "imputed"])
def test_impute_cli__refuses_an_unknown_output_suffix(
    population, tmp_path, capsys, out
):
    chroms, markers = write_inputs(population, tmp_path, "g")
    code = main(["impute", str(chroms), str(markers), "--out", str(tmp_path / out)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and ".vcf.gz" in err[0]
    assert not (tmp_path / out).exists()
