"""Imputation by panel attention: one-shot (the input is its own panel) or from a
reference panel (Beagle's ``ref=``), including markers the targets were never
typed at.

The model (:mod:`gperceiver.nn.panel`) is first fitted for a few dozen masked
steps on the panel (:mod:`gperceiver.tasks.panel`): panel individuals are the
queries, with the markers the targets lack hidden as well, and the other panel
individuals are their candidates. It then copies every target's genotypes from
the whole panel (the target itself excluded by name).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import io
from .data import MISSING, Genotypes
from .io import InputError, InputWarning
from .io.imputed_vcf import IMPUTED_SUFFIXES, write_imputed_vcf
from .nn.panel import (
    PanelAttention,
    PanelConfig,
    PanelGenotypes,
    chromosome_spans,
    complete_table,
)
from .pretraining import Imputation, split_individuals
from .tasks.panel import PanelFitConfig, PanelMaskedTask, fit_panel


@dataclass(frozen=True)
class PanelImputeSettings:
    model: PanelConfig = field(default_factory=PanelConfig)
    fit: PanelFitConfig = field(default_factory=PanelFitConfig)
    val_fraction: float = 0.1  # panel individuals held out to report the fit
    # a target marker counts as typed when called in at least this share of targets
    typed_call_rate: float = 0.5
    chunk: int = 256  # targets imputed at a time (bounds the (Q, M, G) output)
    # copy passes with a reference panel (None: ``model.layers``). Targets typed at
    # 10 %: a second pass matches mostly on its own filled-in loci and lost, on
    # 800 + 200 msprime individuals (benchmarks/reference_imputation.py): seed 7
    # 0.9637 concordance with one pass, 0.9594 with two; seed 1 0.9674 vs 0.9635
    reference_layers: int | None = 1
    # window sizes tried, as multiples of ``model.block`` (scaled to the typed
    # markers): one fit each, and the window with the lowest held-out
    # cross-entropy (every size scored on the same stretches) is kept. Chosen on
    # msprime seed 7 (keeps 32: 0.9906 either way) and the EUR panel with hiding
    # seed 2 (keeps 8: 0.9036 against 0.8760 with 32); checked on fresh data in
    # BENCHMARKS.md (*Window size chosen by the fit*)
    block_scales: tuple[float, ...] = (1.0, 0.5, 0.25)

    def __post_init__(self):
        if not self.block_scales or not all(0 < f <= 1 for f in self.block_scales):
            raise ValueError(f"block_scales {self.block_scales}: give shares in (0, 1]")


@dataclass
class PanelImputation(Imputation):
    """:class:`Imputation` plus per-marker estimated r^2 (``r2``, (M, A - 1), as
    Beagle's DR2, of each ALT allele's dose) and a summary of the run."""

    r2: np.ndarray = None
    typed: np.ndarray = None  # (M,) bool: markers typed in the targets
    summary: dict = None


def align_targets(targets: Genotypes, reference: Genotypes, path) -> Genotypes:
    """``targets`` on the markers of ``reference`` (missing where untyped).

    Markers are matched by name; target markers the panel lacks are dropped with a
    warning, as Beagle drops them.
    """
    if (targets.ploidy, targets.n_alleles) != (reference.ploidy, reference.n_alleles):
        raise InputError(
            path,
            None,
            f"ploidy {reference.ploidy} with {reference.n_alleles} alleles, the "
            f"targets have ploidy {targets.ploidy} with {targets.n_alleles}",
            "give the reference and the targets the same ploidy and --n-alleles",
        )
    lookup = {n: j for j, n in enumerate(reference.markers.names.tolist())}
    index = np.array([lookup.get(n, -1) for n in targets.markers.names.tolist()])
    if (index < 0).all():
        raise InputError(
            path,
            None,
            "shares no marker name with the targets",
            "name the markers alike in both files",
        )
    if (index < 0).any():
        warnings.warn(
            f"{path}: {int((index < 0).sum())} target markers are not in the "
            "reference panel and are dropped",
            InputWarning,
            stacklevel=2,
        )
    keep = index >= 0
    alleles = np.zeros(
        (targets.n_individuals, reference.n_markers, targets.ploidy), np.uint8
    )
    alleles[:, index[keep]] = targets.alleles[:, keep]
    return Genotypes(alleles, targets.names, reference.markers, reference.n_alleles)


def impute_with_panel(
    targets: Genotypes,
    reference: Genotypes | None = None,
    settings: PanelImputeSettings | None = None,
    reference_path=None,
    log=sys.stderr,
) -> PanelImputation:
    """Fill every locus of ``targets`` with a missing copy (and, with a
    ``reference``, every reference marker the targets lack)."""
    settings = settings or PanelImputeSettings()
    start = time.perf_counter()
    if reference is not None:
        targets = align_targets(targets, reference, reference_path)
        if settings.reference_layers is not None:
            layers = settings.reference_layers
            settings = replace(settings, model=replace(settings.model, layers=layers))
    panel_g = reference if reference is not None else targets
    panel = PanelGenotypes.from_genotypes(panel_g)
    query = panel if reference is None else PanelGenotypes.from_genotypes(targets)
    called = (query.genotype >= 0).float().mean(0).numpy()  # (M,) call rate
    typed = called >= settings.typed_call_rate
    block = max(1, round(settings.model.block * len(typed) / max(1, typed.sum())))
    model, block, history, val = fit_best_block(
        panel, panel_g, typed, settings, block, reference, log
    )
    print(
        f"panel attention: windows of {block} markers, fitted in {len(history)} "
        f"steps, validation cross-entropy {val[0]:.4f} -> {val[1]:.4f}",
        file=log,
    )
    result = _impute(model, query, panel, targets, block, settings.chunk, typed)
    result.typed = typed
    result.summary = {
        "block": block,
        "layers": settings.model.layers,
        "fit_steps": len(history),
        "val_loss": val,
        "seconds": time.perf_counter() - start,
    }
    return result


def fit_best_block(panel, panel_g, typed, settings, base, reference, log=sys.stderr):
    """One model fitted per window size ``base`` x ``settings.block_scales``; the
    one with the lowest held-out cross-entropy after fitting, scored on the same
    stretches (those of the largest window), is returned as ``(model, block,
    history, (loss before, loss after))``."""
    scales = settings.block_scales
    blocks = sorted({max(1, round(base * f)) for f in scales}, reverse=True)
    spans = _eval_spans(panel_g.markers.chrom, settings.fit.windows * blocks[0])
    best = None
    for block in blocks:
        torch.manual_seed(settings.fit.seed)
        model = PanelAttention(settings.model)
        history, val = _fit(
            model, panel, panel_g, typed, settings, block, reference, spans
        )
        if len(blocks) > 1:
            print(f"  windows of {block}: validation {val[1]:.4f}", file=log)
        if best is None or val[1] < best[3][1]:
            best = (model, block, history, val)
    return best


def _fit(model, panel, panel_g, typed, settings, block, reference, spans=None):
    """Masked fit on the panel; returns the history and validation loss
    before / after (on held-out panel individuals, the rest as their panel) on
    ``spans`` (default: a stretch of ``fit.windows`` windows per chromosome)."""
    train, val = split_individuals(
        panel_g.n_individuals, settings.val_fraction, settings.fit.seed
    )
    untyped = None if reference is None else ~typed
    task = PanelMaskedTask(
        panel, panel_g.markers.chrom, train, val, settings.fit.hide_fraction, untyped
    )
    spans = spans or _eval_spans(panel_g.markers.chrom, settings.fit.windows * block)
    generator = torch.Generator().manual_seed(settings.fit.seed + 1)
    before = task.evaluate(model, generator, block, spans)
    history = fit_panel(model, task, settings.fit, block) if len(train) > 1 else []
    generator = torch.Generator().manual_seed(settings.fit.seed + 1)
    after = task.evaluate(model, generator, block, spans)
    return history, (before, after)


def _eval_spans(chrom: np.ndarray, length: int) -> list[tuple[int, int]]:
    """One stretch of ``length`` markers at the start of each chromosome."""
    return [(lo, min(hi, lo + length)) for lo, hi in chromosome_spans(chrom)]


@torch.no_grad()
def _impute(model, query, panel, targets, block, chunk, typed) -> PanelImputation:
    """Copy, then pick the most probable genotype holding the observed copies;
    ``typed`` (M,) bool: the markers a shortlist's hash keys may use. The panel is
    laid out (and a shortlist's candidate index built) once per chromosome and
    read by every chunk of ``chunk`` targets."""
    table = complete_table(targets.ploidy, targets.n_alleles)  # (G, P) allele ids
    counts = query.counts_table()  # (G, A)
    filled = targets.alleles.copy()
    r2 = _DoseR2(targets.n_markers, counts)
    parts = []
    for lo, hi in chromosome_spans(targets.markers.chrom):
        side = model.prepare(panel, lo, hi, block, typed)
        for start in range(0, targets.n_individuals, chunk):
            rows = np.arange(start, min(start + chunk, targets.n_individuals))
            probs = model.copy_span(query.subset(rows), side, lo, hi, block)
            alleles = targets.alleles[rows, lo:hi]
            probs = hold_observed(probs, alleles, query.genotype[rows, lo:hi], counts)
            r2.add(probs, lo)
            q_i, m_i, best = best_calls(probs, alleles)
            filled[rows[q_i], lo + m_i] = table[best]
            parts.append((rows[q_i], lo + m_i, probs[q_i, m_i].numpy()))
    rows, loci, probs = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((loci, rows))  # by individual, then marker
    return PanelImputation(
        Genotypes(filled, targets.names, targets.markers, targets.n_alleles),
        rows[order],
        loci[order],
        probs[order],
        counts.long().numpy(),
        r2=r2.value(),
    )


def hold_observed(probs, alleles, genotype, counts) -> torch.Tensor:
    """Copied probabilities ``(Q, m, G)`` restricted to the genotypes holding the
    observed copies of ``alleles`` (Q, m, P), one-hot where ``genotype`` (Q, m)
    is called; ``counts`` (G, A) copy counts of the complete genotypes."""
    observed = _allele_counts(alleles, counts.shape[1])  # (Q, m, A)
    fits = (counts[None, None] >= observed[:, :, None]).all(-1)  # (Q, m, G)
    probs = probs.masked_fill(~fits, 0)
    probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-12)
    g = genotype.long()
    onehot = torch.nn.functional.one_hot(g.clamp(min=0), counts.shape[0]).float()
    return torch.where((g >= 0)[..., None], onehot, probs)


def best_calls(probs, alleles):
    """The loci with a missing copy in ``alleles`` (Q, m, P), as (rows, markers),
    and the index of their most probable genotype under ``probs`` (Q, m, G)."""
    q_i, m_i = np.nonzero((alleles == MISSING).any(-1))
    return q_i, m_i, probs[q_i, m_i].argmax(-1).numpy()


def _allele_counts(alleles: np.ndarray, n_alleles: int) -> torch.Tensor:
    """Called copies of each real allele ``(Q, M, A)`` from ids (Q, M, P)."""
    ids = torch.from_numpy(alleles.astype(np.int64))
    return torch.stack([(ids == k + 1).sum(-1) for k in range(n_alleles)], -1)


class _DoseR2:
    """Beagle-style DR2 per marker and ALT allele from genotype probabilities:
    ``(sum d^2 - (sum d)^2 / n) / (sum E[x^2] - (sum d)^2 / n)`` with ``d`` the
    expected dose and ``x`` the true dose of each individual."""

    def __init__(self, n_markers: int, counts: torch.Tensor):
        self.alt = counts[:, 1:].double()  # (G, A - 1)
        k = self.alt.shape[1]
        self.n = torch.zeros(n_markers, 1, dtype=torch.float64)
        self.sum_d = torch.zeros(n_markers, k, dtype=torch.float64)
        self.sum_d2 = torch.zeros_like(self.sum_d)
        self.sum_x2 = torch.zeros_like(self.sum_d)

    def add(self, probs: torch.Tensor, lo: int = 0) -> None:
        """Individuals' probabilities ``(Q, m, G)`` on markers ``lo:lo + m``."""
        p = probs.double()
        dose = p @ self.alt  # (Q, m, A - 1)
        where = slice(lo, lo + p.shape[1])
        self.n[where] += p.shape[0]
        self.sum_d[where] += dose.sum(0)
        self.sum_d2[where] += (dose**2).sum(0)
        self.sum_x2[where] += (p @ self.alt**2).sum(0)

    def value(self) -> np.ndarray:
        mean_term = self.sum_d**2 / self.n.clamp(min=1)
        num, den = self.sum_d2 - mean_term, self.sum_x2 - mean_term
        out = torch.where(den > 1e-12, num / den.clamp(min=1e-12), 0.0)
        return out.clamp(0, 1).numpy()


# -- options and outputs ---------------------------------------------------------------
def output_kind(out, output_format: str = "codes") -> str:
    """``vcf`` (.vcf, .vcf.gz, .bcf) or ``tsv`` from the name of ``--out``."""
    name = str(out).lower()
    if name.endswith(IMPUTED_SUFFIXES):
        if output_format != "codes":
            raise InputError(
                "--output-format",
                None,
                f"{output_format} applies to a .tsv --out; a VCF holds GT, DS and GP",
                "drop --output-format or end --out in .tsv",
            )
        return "vcf"
    if name.endswith(".tsv"):
        return "tsv"
    raise InputError(
        "--out",
        None,
        f"{out}: the suffix picks the output and this one is none of them",
        "end it in .vcf.gz or .bcf (GT, DS, GP) or .tsv (a table)",
    )


def check_output_format(genotypes, output_format: str) -> None:
    """Refuse, before any work, an ``--output-format`` these genotypes cannot
    fill: dosage tables hold biallelic markers only."""
    if output_format == "dosage" and genotypes.n_alleles != 2:
        raise InputError(
            "--output-format", None,
            f"dosage tables hold biallelic markers only, these have "
            f"{genotypes.n_alleles} alleles",
            "use --output-format codes or probabilities",
        )  # fmt: skip


def panel_settings(options: dict) -> PanelImputeSettings:
    """Settings from command-line options (``window``, ``shortlist``,
    ``panel_layers``, ``fit_steps``, ``time_budget_s``, ``seed``; absent ones keep
    their defaults; ``panel_layers`` also sets the passes with a reference, and a
    ``window`` is used as given, not chosen among sizes)."""
    model, fit, top = {}, {}, {}
    if options.get("window") is not None:
        model["block"] = options["window"]
        top["block_scales"] = (1.0,)  # a window given is the one used
    if options.get("shortlist") is not None:
        model["shortlist"] = options["shortlist"]
    if options.get("panel_layers") is not None:
        model["layers"] = options["panel_layers"]
        top["reference_layers"] = None
    if options.get("fit_steps") is not None:
        fit["steps"] = options["fit_steps"]
    if "time_budget_s" in options:
        fit["time_budget_s"] = options["time_budget_s"]
    if options.get("seed") is not None:
        fit["seed"] = options["seed"]
    return PanelImputeSettings(
        model=replace(PanelConfig(), **model),
        fit=replace(PanelFitConfig(), **fit),
        **top,
    )


def write_result(result: Imputation, out, kind: str, output_format: str) -> None:
    """Write to ``out``: a VCF/BCF, or the ``output_format`` table (codes, dosage,
    or long-format probabilities of the imputed loci)."""
    if kind == "vcf":
        write_imputed_vcf(result, out, getattr(result, "typed", None))
        return
    io.write_imputation(result, out, output_format)
