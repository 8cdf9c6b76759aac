"""Which markers a phenotype model's predictions depend on (gradient x input).

Shape letters: N individuals, B batch, M markers, P ploidy, D width, E blocks,
K outputs per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import Genotypes, genotype_batches
from .nn.heads import PhenotypeModel


def marker_importance(
    model: PhenotypeModel | Sequence[PhenotypeModel],
    genotypes: Genotypes,
    rows=None,
    batch_size: int = 32,
) -> np.ndarray:
    """Mean absolute gradient x input attribution of every marker, ``(M,)`` float64.

    Gradient x input is a standard first-order attribution. Here the input is the
    marker tokens ``t`` (N, M, D) that the model's embedding makes of the alleles
    (N, M, P), and the output ``y`` (N,) is the sum over blocks of the first output,
    ``model(...)[:, :, 0].sum(1)`` from (N, E, K). Individual ``i`` credits marker
    ``m`` with ``a[i, m] = sum_d dy_i/dt[i, m, d] * (t[i, m, d] - tbar[m, d])``,
    where ``tbar`` (M, D) is the mean token over ``rows``: centring makes the credit
    about how the individual's alleles differ from the population's, so a marker
    where everyone carries the same alleles scores 0. The result is the mean of
    ``|a[i, m]|`` over ``rows``, averaged over the members when ``model`` is an
    ensemble (a sequence, e.g. ``Predictor.members``).

    The model runs in eval mode (no dropout, batch-norm running statistics, so
    individuals do not interact); gradients are taken for the tokens only, one
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
    per_member = [_member_importance(m, genotypes, rows, batch_size) for m in members]
    return np.mean(per_member, axis=0)


def _member_importance(
    model: PhenotypeModel, genotypes: Genotypes, rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """Mean |gradient x centred token| (M,) of one model over ``rows``, in batches."""
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
    try:
        with torch.no_grad():
            # float64 sum: the mean of identical tokens is exactly that token, so
            # a marker without variation scores exactly 0
            total = sum(
                model.embed(alleles, marker_idx).double().sum(0)
                for alleles in batches()
            )
        mean = (total / n).float()  # (M, D)
        importance = torch.zeros_like(total[:, 0])  # (M,) float64
        with torch.enable_grad():
            for alleles in batches():
                captured.clear()
                output = model(alleles, marker_idx)[..., 0].sum()
                tokens = captured[-1]  # (B, M, D)
                (grad,) = torch.autograd.grad(output, tokens)
                credit = ((tokens.detach() - mean) * grad).sum(-1)  # (B, M)
                importance += credit.abs().double().sum(0)
    finally:
        handle.remove()
        model.train(was_training)
    return (importance / n).cpu().numpy()
