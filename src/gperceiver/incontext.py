"""In-context prediction from phenotyped relatives: window distances, fitting a
:class:`~gperceiver.nn.relatives.RelativesHead` per environment by
leave-one-out, and predicting new individuals from the training records.

Shape letters: W windows, N genotyped individuals, n records of one environment.

Leakage rules, by construction: the context of every prediction holds training
records only (validation individuals are queries, never context); a training
individual is predicted by leave-one-out, never from its own response; early
stopping watches an inner split of the training records, predicted from the
other training records. Transductive use: genotypes only — the allele
frequencies that fill missing copies and the median distance come from every
genotyped individual, as for the ``rkhs`` baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .baselines import RKHS, Kernel
from .data import Genotypes
from .io.errors import InputError
from .nn.relatives import RelativesHead, RelativesStart


@dataclass(frozen=True)
class RelativesSettings:
    """How a relatives head is fitted."""

    # markers per window within a chromosome: 20 windows on wheat's 1,279 markers,
    # few enough weights to learn from ~500 records
    window: int = 64
    steps: int = 60  # Adam steps at most; early stopping usually ends sooner
    lr: float = 0.05  # the parameters are log-scales and an intercept: O(1) moves
    patience: int = 10  # steps without a better inner-validation loss
    # context individuals drawn afresh for each training step (leave-one-out
    # among them); None: every inner training record. 256 makes a step ~6x
    # cheaper than wheat's ~480 (the cost is the C x C inverse)
    context_size: int | None = 256
    val_fraction: float = 0.1  # inner split of the training records
    attention: bool = True  # the softmax attention correction beside the kernel
    seed: int = 0  # the inner split


def marker_windows(genotypes: Genotypes, window: int) -> list[np.ndarray]:
    """Marker indices of each window: runs of about ``window`` consecutive
    markers within a chromosome (a chromosome of ``m`` markers gives
    ``ceil(m / window)`` nearly equal runs)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    chroms = genotypes.markers.chrom
    out = []
    for chrom in np.unique(chroms):
        index = np.flatnonzero(chroms == chrom)
        out.extend(np.array_split(index, -(-len(index) // window)))
    return out


def window_distances(genotypes: Genotypes, window: int) -> tuple[np.ndarray, float]:
    """Squared distances per window ``(W, N, N)`` float64 and their median sum.

    ``d2[w, i, j] = |z_i - z_j|^2 / sum_{m,a} P p_ma (1 - p_ma)`` over the
    window's allele columns, ``z`` the dosages (missing copies mean-imputed with
    the frequencies of all genotypes, monomorphic columns dropped); summed over
    windows it is ``G_ii + G_jj - 2 G_ij`` of VanRaden's G
    (:func:`~gperceiver.baselines.genomic_relationship`), so the median returned
    (over pairs ``i < j``) is the RKHS kernel's.
    """
    frequencies = genotypes.allele_frequencies()
    variance = genotypes.ploidy * frequencies * (1.0 - frequencies)  # (M, A)
    denominator = float(variance[variance > 0].sum())
    if not denominator > 0:
        raise ValueError("no polymorphic marker: distances are undefined")
    windows = marker_windows(genotypes, window)
    n = genotypes.n_individuals
    d2 = np.empty((len(windows), n, n))
    for w, index in enumerate(windows):
        z = genotypes.subset(markers=index).dosages(frequencies[index])
        keep = variance[index] > 0  # (S, A)
        z = z[:, keep].astype(np.float64)  # (N, kept columns)
        gram = z @ z.T
        diag = np.diag(gram)
        d2[w] = np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    d2 /= denominator
    total = d2.sum(0)
    median = float(np.median(total[np.triu_indices(n, k=1)]))
    return d2, median


def _start(relationship: Kernel, names, y: np.ndarray, median: float):
    """REML RKHS on these records, as the head's starting point."""
    model = RKHS(relationship).fit(pd.DataFrame({"name": names, "response": y}), None)
    fit = model.fit_
    return RelativesStart(model.bandwidth_, fit.delta, float(fit.beta[0]), median)


def _tensor(x) -> torch.Tensor:
    """A C-contiguous float64 copy (numpy's fancy indexing may return strided
    arrays, and the head's window sum reshapes them)."""
    return torch.from_numpy(np.array(x, dtype=np.float64, order="C"))


def head_predict(head, d2: np.ndarray, context, y, queries) -> torch.Tensor:
    """Predictions ``(k,)`` of ``queries`` (rows of ``d2``) from ``context`` rows
    and their responses ``y``; a query in the context is left out of its own."""
    context, queries = np.asarray(context), np.asarray(queries)
    position = {int(r): i for i, r in enumerate(context)}
    self_index = torch.tensor([position.get(int(q), -1) for q in queries])
    d2_cc = _tensor(d2[:, context][:, :, context])
    d2_qc = _tensor(d2[:, queries][:, :, context])
    return head(d2_cc, _tensor(y), d2_qc, self_index)


def fit_relatives(
    d2: np.ndarray,
    median: float,
    relationship: Kernel,
    rows: np.ndarray,
    y: np.ndarray,
    settings: RelativesSettings = RelativesSettings(),
) -> tuple[RelativesHead, dict]:
    """Fit a head on the records ``rows`` (``(n,)`` rows of ``d2``, one per
    individual) with responses ``y`` ``(n,)``.

    An inner split holds out ``val_fraction`` of the records; the head starts
    at REML RKHS on the others and trains on their leave-one-out squared error;
    each training step draws ``context_size`` of them and predicts each from the
    others. The step of lowest inner-validation error (predicted from the inner
    training records; step 0 is RKHS) is kept; when that is step 0 the head is
    REML RKHS on all ``rows``, exactly the ``rkhs`` baseline. Returns the head and
    a log (``best_step``, ``start_loss``, ``best_loss``, ``steps``).
    """
    rows, y = np.asarray(rows), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(settings.seed)
    n_val = max(1, int(round(settings.val_fraction * len(rows))))
    order = rng.permutation(len(rows))
    inner, val = order[n_val:], order[:n_val]
    names = relationship.names[rows[inner]]
    start = _start(relationship, names, y[inner], median)
    head = RelativesHead(len(d2), start, settings.attention)
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    d2_cc = _tensor(d2[:, rows[inner]][:, :, rows[inner]])
    d2_vc = _tensor(d2[:, rows[val]][:, :, rows[inner]])
    y_in, y_val = _tensor(y[inner]), _tensor(y[val])
    loo_index = torch.arange(len(inner))
    outside = torch.full((len(val),), -1)
    best = (np.inf, 0, None)
    log = {}
    for step in range(settings.steps + 1):
        with torch.no_grad():
            val_loss = ((head(d2_cc, y_in, d2_vc, outside) - y_val) ** 2).mean().item()
        if step == 0:
            log["start_loss"] = val_loss
        if val_loss < best[0]:
            best = (val_loss, step, copy.deepcopy(head.state_dict()))
        if step - best[1] >= settings.patience or step == settings.steps:
            break
        optimiser.zero_grad()
        pick = loo_index
        if settings.context_size and settings.context_size < len(inner):
            pick = torch.as_tensor(rng.choice(len(inner), settings.context_size, False))
        d2_pick = d2_cc[:, pick][:, :, pick]
        context = torch.arange(len(pick))
        loss = ((head(d2_pick, y_in[pick], d2_pick, context) - y_in[pick]) ** 2).mean()
        loss.backward()
        optimiser.step()
    head.load_state_dict(best[2])
    log.update(best_loss=best[0], best_step=best[1], steps=step)
    if best[1] == 0:  # training never helped: RKHS on every training record
        start = _start(relationship, relationship.names[rows], y, median)
        head = RelativesHead(len(d2), start, settings.attention)
    return head, log


def _settings(cache: dict) -> RelativesSettings:
    """Settings from the ``relatives`` entry of the ``--params`` JSON (an object
    of :class:`RelativesSettings` fields), seeded by the run's ``seed``."""
    options = {**(cache.get("params") or {}), **(cache.get("typed") or {})}
    chosen = options.get("relatives") or {}
    known = set(RelativesSettings.__dataclass_fields__)
    if not isinstance(chosen, dict) or set(chosen) - known:
        raise InputError(
            "--params",
            "relatives",
            f"expected an object with some of {sorted(known)}, got {chosen!r}",
            'write e.g. {"relatives": {"window": 64}}',
        )
    return RelativesSettings(**{"seed": int(options.get("seed", 0)), **chosen})


def environment_contexts(train, validation, genotypes):
    """Per environment with validation and training records: ``(block, here,
    rows, y, queries)``, the validation rows' mask ``(k,)``, the context (the
    training individuals' genotype rows ``(n,)`` and their mean responses ``(n,)``
    in the environment: leaving an individual out leaves all its records out)
    and the queries' genotype rows. No validation response is read."""
    for block in np.unique(validation["block"]):
        records = train[train["block"] == block]
        if records.empty:
            continue
        here = (validation["block"] == block).to_numpy()
        means = records.groupby("name", sort=False)["response"].mean()
        rows = genotypes.index_of(means.index)
        queries = genotypes.index_of(validation.loc[here, "name"])
        yield block, here, rows, means.to_numpy(dtype=np.float64), queries


def relatives_method(relationship_of, fixed_effects_of, absorb_fixed_effects):
    """The ``relatives`` method of ``gperceiver evaluate``: per environment, a
    head fitted on the fold's training records predicts its validation records
    from those training records (never from validation phenotypes).

    ``relationship_of(genotypes, cache)`` gives the VanRaden :class:`Kernel` (for
    the RKHS start); when ``fixed_effects_of(cache)`` names fixed effects,
    ``absorb_fixed_effects`` removes them first (as for the neural methods) and
    the method returns ``(fixed, genetic)`` parts. Records of one individual in
    one environment are averaged, so that leaving an individual out leaves all
    of its records out.
    """

    def method(train, validation, genotypes, cache):
        settings = _settings(cache)
        key = ("relatives_distances", settings.window)
        if key not in cache:
            cache[key] = window_distances(genotypes, settings.window)
        d2, median = cache[key]
        fixed = None
        if fixed_effects_of(cache):
            train, fixed = absorb_fixed_effects(train, validation, genotypes, cache)
        genetic = np.full(len(validation), np.nan)
        contexts = environment_contexts(train, validation, genotypes)
        for block, here, rows, y, queries in contexts:
            head, log = fit_relatives(
                d2, median, relationship_of(genotypes, cache), rows, y, settings
            )
            cache.setdefault("relatives_log", []).append(
                {"fold": cache.get("split"), "block": int(block), **log}
            )
            with torch.no_grad():
                genetic[here] = head_predict(head, d2, rows, y, queries).numpy()
        return genetic if fixed is None else (fixed, genetic)

    method.per_block = True  # one head per environment: cannot predict a new one
    return method
