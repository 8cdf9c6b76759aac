"""Which markers a phenotype model's predictions depend on (gradient x input).

Shape letters: N individuals, B batch, M markers, P ploidy, D width, E blocks,
K outputs per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .data import Genotypes, genotype_batches
from .nn.heads import MarkerEffects, PhenotypeModel

PARTS = ("total", "network", "additive")  # the columns of importance_parts


def marker_importance(
    model: PhenotypeModel | Sequence[PhenotypeModel],
    genotypes: Genotypes,
    rows=None,
    batch_size: int = 32,
) -> np.ndarray:
    """Mean absolute gradient x input attribution of every marker, ``(M,)``
    float64: the ``total`` of :func:`importance_parts` (network and additive path)."""
    return importance_parts(model, genotypes, rows, batch_size)["total"]


def importance_parts(
    model: PhenotypeModel | Sequence[PhenotypeModel],
    genotypes: Genotypes,
    rows=None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Mean absolute gradient x input attribution of every marker, ``(M,)``
    float64 each, by part: ``network``, ``additive`` (the GBLUP/RKHS path; 0
    without one) and ``total`` (of their summed credits).

    Gradient x input is a standard first-order attribution. The output ``y`` (N,)
    is the sum over blocks of the first output, ``model(...)[:, :, 0].sum(1)``
    from (N, E, K), in the model's units (the standardised response of each
    block). The network's input is the marker tokens ``t`` (N, M, D) that the
    model's embedding makes of the alleles (N, M, P): individual ``i`` credits
    marker ``m`` with ``a[i, m] = sum_d dy_i/dt[i, m, d] * (t[i, m, d] - tbar[m,
    d])``, where ``tbar`` (M, D) is the mean token over ``rows``. The additive
    path's input is the allele dosages ``x`` (N, M, A) (missing copies at the
    allele frequency): ``b[i, m] = sum_a dy_i/dx[i, m, a] (x[i, m, a] - xbar[m,
    a])``; for the linear path (allele effects ``e``) that is exactly ``sum_a e[m,
    a] (x[i, m, a] - xbar[m, a])``, so a biallelic marker scores ``|e_2 - e_1|``
    times the mean absolute deviation of its dosage. Centring makes the credit
    about how the individual's alleles differ from the population's, so a marker
    where everyone carries the same alleles scores 0. Each part is the mean of
    ``|a|``, ``|b|`` and ``|a + b|`` over ``rows``, averaged over the members when
    ``model`` is an ensemble (a sequence, e.g. ``Predictor.members``).

    The model runs in eval mode (no dropout, batch-norm running statistics, so
    individuals do not interact); gradients are taken for the inputs only, one
    batch of ``batch_size`` individuals at a time, and no parameter's ``.grad`` is
    touched.

    Parameters
    ----------
    model : PhenotypeModel or sequence of PhenotypeModel
        Trained on ``genotypes``' marker map.
    genotypes : Genotypes
        Alleles (N, M, P).
    rows : array of int, optional
        Individuals to average over (default: all).
    batch_size : int
        Individuals per forward/backward pass.
    """
    members = [model] if isinstance(model, PhenotypeModel) else list(model)
    rows = np.arange(genotypes.n_individuals) if rows is None else np.asarray(rows)
    if not len(rows):
        raise ValueError("marker_importance needs at least one individual")
    each = [_member_importance(m, genotypes, rows, batch_size) for m in members]
    return {part: np.mean([e[part] for e in each], axis=0) for part in PARTS}


def importance_frame(parts: dict[str, np.ndarray], markers) -> pd.DataFrame:
    """:func:`importance_parts` as a table: ``marker, chrom, pos`` and one column
    per part, in map order."""
    frame = pd.DataFrame(
        {"marker": markers.names, "chrom": markers.chrom_labels(), "pos": markers.pos}
    )
    return frame.assign(**{part: parts[part] for part in PARTS})


def _additive_credit(additive, alleles, marker_idx, mean) -> torch.Tensor:
    """Credits ``(B, M)`` of the additive path: its per-marker terms minus their
    mean (linear, exact), or gradient x centred dosage (Gaussian)."""
    if isinstance(additive, MarkerEffects):
        return additive.per_marker(alleles, marker_idx).sum(-1).double() - mean
    with torch.enable_grad():
        z = additive.centred(alleles, marker_idx).detach().requires_grad_()
        (grad,) = torch.autograd.grad(additive.from_centred(z).sum(), z)
    return ((z.detach() - mean) * grad).sum(-1).double()


def _additive_mean(additive, batches, marker_idx, n) -> torch.Tensor | None:
    """The reference ``(M,)`` (linear: mean per-marker term) or ``(M, A)``
    (Gaussian: mean centred dosage) of :func:`_additive_credit`, over rows."""
    if additive is None:
        return None
    if isinstance(additive, MarkerEffects):
        parts = (additive.per_marker(a, marker_idx).sum(-1) for a in batches())
    else:
        parts = (additive.centred(a, marker_idx) for a in batches())
    return sum(part.double().sum(0) for part in parts) / n


def _member_importance(
    model: PhenotypeModel, genotypes: Genotypes, rows: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """Mean |credit| (M,) of one model over ``rows`` per part, in batches."""
    device = next(model.parameters()).device
    marker_idx = torch.arange(genotypes.n_markers, device=device)

    def batches():  # (B, M, P) alleles on the model's device
        for _, alleles in genotype_batches(genotypes, rows, batch_size, device):
            yield alleles

    n = len(rows)
    captured: list[torch.Tensor] = []

    def as_leaf(module, args, tokens):  # forward hook on model.embed
        if not torch.is_grad_enabled():  # the pass computing the mean token
            return None
        captured.append(tokens.detach().requires_grad_())
        return captured[-1]

    was_training = model.training
    model.eval()
    handle = model.embed.register_forward_hook(as_leaf)
    additive = getattr(model, "additive", None)  # environment models have none
    try:
        with torch.no_grad():
            # float64 sum: the mean of identical tokens is exactly that token, so
            # a marker without variation scores exactly 0
            total = sum(
                model.embed(alleles, marker_idx).double().sum(0)
                for alleles in batches()
            )
            reference = _additive_mean(additive, batches, marker_idx, n)
        mean = (total / n).float()  # (M, D)
        sums = {part: torch.zeros_like(total[:, 0]) for part in PARTS}  # (M,) f64
        for part, alleles in genotype_batches(genotypes, rows, batch_size, device):
            # a model with a panel reads its copies (not credited: the allele
            # tokens are, through the same gradient)
            copy = None
            if getattr(model, "panel", None) is not None:
                copy = model.panel_copy(genotypes, part)
            with torch.enable_grad():
                captured.clear()
                # the additive path's output does not depend on the tokens
                output = model(alleles, marker_idx, copy)[..., 0]
                tokens = captured[-1]  # (B, M, D)
                (grad,) = torch.autograd.grad(output.sum(), tokens)
            network = ((tokens.detach() - mean) * grad).sum(-1).double()  # (B, M)
            credit = network
            if additive is not None:
                with torch.no_grad():
                    added = _additive_credit(
                        additive, alleles, marker_idx, reference.to(alleles.device)
                    )
                credit = network + added
                sums["additive"] += added.abs().sum(0)
            sums["network"] += network.abs().sum(0)
            sums["total"] += credit.abs().sum(0)
    finally:
        handle.remove()
        model.train(was_training)
    return {part: (value / n).cpu().numpy() for part, value in sums.items()}
