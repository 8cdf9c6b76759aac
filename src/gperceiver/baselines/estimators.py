"""GBLUP and RKHS as ``fit`` / ``predict`` estimators on phenotype records.

Kernels are built from the genotypes of *all* individuals, without phenotypes (the
usual practice: it uses no response of a validation individual), so a caller fitting
many splits passes the relationship once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import Genotypes
from .fixed_effects import NO_FIXED, FixedDesign, FixedEffects
from .kernels import DEFAULT_BANDWIDTHS, Kernel
from .mixed_model import best_bandwidth, reml
from .precision import prediction_error_variance, reliability


def _records(records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = {"name", "response"} - set(records.columns)
    if missing:
        raise ValueError(f"training records lack column(s) {sorted(missing)}")
    y = records["response"].to_numpy(dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError("training responses must be finite")
    return records["name"].to_numpy(), y


class GBLUP:
    """Genomic BLUP: REML on VanRaden's relationship matrix with an intercept and
    optional fixed effects (GLS, their levels learnt from the training records).

    Fit once per environment (block). The relationship matrix is computed from all
    genotypes, phenotyped or not (standard practice; no response enters it), so a
    caller fitting many splits passes it once as ``relationship``.

    Parameters
    ----------
    relationship : Kernel, optional
        :meth:`Kernel.relationship` of the genotypes; computed in ``fit`` if absent.
    delta : float, optional
        Fix ``s2e / s2g`` instead of estimating it by REML.
    fixed : FixedEffects
        Record columns fitted as fixed effects beside the intercept.

    Examples
    --------
    >>> names = np.array(["a", "b", "c", "d"])
    >>> k = Kernel(np.eye(4) + 0.5, names)
    >>> records = pd.DataFrame({"name": ["a", "b", "c"], "response": [1.0, 2.0, 3.0]})
    >>> model = GBLUP(relationship=k, delta=1.0).fit(records, genotypes=None)
    >>> model.predict(["a", "d"]).round(3)
    array([1.5, 2. ])
    """

    def __init__(
        self,
        relationship: Kernel | None = None,
        delta: float | None = None,
        fixed: FixedEffects = NO_FIXED,
    ):
        self.relationship = relationship
        self.delta = delta
        self.fixed = fixed

    def _relationship(self, genotypes: Genotypes | None) -> Kernel:
        if self.relationship is not None:
            return self.relationship
        if genotypes is None:
            raise ValueError("pass genotypes or a precomputed relationship")
        return Kernel.relationship(genotypes)

    def _design(self, records: pd.DataFrame) -> np.ndarray:
        """Learn the fixed-effect design on ``records``; their ``X`` ``(n, p)``."""
        self.design_ = FixedDesign(self.fixed).fit(records)
        return self.design_.matrix(records)

    def fit(self, records: pd.DataFrame, genotypes: Genotypes | None) -> GBLUP:
        """Fit on ``records`` (columns ``name``, ``response`` and the fixed-effect
        columns); returns ``self``."""
        names, y = _records(records)
        self.kernel_ = self._relationship(genotypes)
        self.individuals_ = self.kernel_.index_of(names)
        self.covariates_ = self._design(records)
        self.fit_ = reml(
            y, self.kernel_, self.individuals_, self.covariates_, delta=self.delta
        )
        return self

    def predict_parts(self, records) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed, genetic)`` parts ``(k,)`` of the prediction of each record.

        ``records``: a DataFrame with ``name`` and the fixed-effect columns, or
        just names; then the fixed part is the mean over the training levels (the
        intercept at the mean covariates), as for selection candidates.
        """
        if isinstance(records, pd.DataFrame):
            names, x = records["name"], self.design_.matrix(records)
        else:
            names = np.asarray(records)
            x = self.design_.mean_row()[None, :].repeat(len(names), 0)
        return x @ self.fit_.beta, self.fit_.blup[self.kernel_.index_of(names)]

    def predict(self, records) -> np.ndarray:
        """Fixed part plus BLUP of each record (or name, see :meth:`predict_parts`),
        ``(k,)`` float64."""
        fixed, genetic = self.predict_parts(records)
        return fixed + genetic

    def prediction_error_variance(self) -> np.ndarray:
        """PEV of the BLUP ``(N,)`` of every individual of the kernel."""
        return prediction_error_variance(
            self.fit_, self.kernel_, self.individuals_, self.covariates_
        )

    def reliability(self) -> np.ndarray:
        """``1 - PEV / (s2g K_ii)`` ``(N,)`` of every individual of the kernel."""
        return reliability(self.fit_, self.kernel_, self.individuals_, self.covariates_)


class RKHS(GBLUP):
    """RKHS regression with a Gaussian kernel over centred dosages.

    The kernel is ``exp(-D2 / (h median(D2)))`` (:func:`gaussian_kernel`). The
    bandwidth ``h`` is the one of ``bandwidths`` whose REML fit to the training
    records has the highest restricted likelihood (same ``y`` and ``X`` for every
    candidate, so the likelihoods compare); no validation record is used.

    Parameters
    ----------
    relationship : Kernel, optional
        :meth:`Kernel.relationship` of all genotypes; computed in ``fit`` if absent.
        Its Gaussian kernels and their decompositions are memoised on it.
    bandwidths : sequence of float
        Candidate ``h`` values.
    """

    def __init__(
        self,
        relationship: Kernel | None = None,
        bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
        fixed: FixedEffects = NO_FIXED,
    ):
        super().__init__(relationship, fixed=fixed)
        self.bandwidths = tuple(bandwidths)

    def fit(self, records: pd.DataFrame, genotypes: Genotypes | None) -> RKHS:
        """Fit every bandwidth, keep the most likely; returns ``self``."""
        names, y = _records(records)
        relationship = self._relationship(genotypes)
        self.individuals_ = relationship.index_of(names)
        self.covariates_ = self._design(records)
        best = None
        for h in self.bandwidths:
            kernel = relationship.gaussian(h)
            fit = reml(y, kernel, self.individuals_, self.covariates_)
            if best is None or fit.log_likelihood > best[2].log_likelihood:
                best = (h, kernel, fit)
        self.bandwidth_, self.kernel_, self.fit_ = best
        return self


class WeightedGBLUP:
    """GBLUP on a marker-weight prior, how much the prior counts chosen by REML.

    The candidates are the weighted relationships of
    :func:`~gperceiver.baselines.relationship_mixes`, one per mix. The rule, the
    only one in the package: fit every group of records (one group per
    environment) under every candidate, and keep the mix whose restricted
    log-likelihoods, summed over the groups, are highest (the first on a tie). The
    groups' responses are the same under every candidate, so the likelihoods
    compare. A mix of 0 is plain GBLUP, so a useless prior comes back as 0.

    Parameters
    ----------
    relationships : list of (float, Kernel or ndarray)
        ``(mix, (N, N) relationship)`` candidates, in the order ties go to.
    gaussian : bool
        Compare RKHS fits (the bandwidth of highest likelihood per group, median
        distance among the group's individuals, :func:`best_bandwidth`) instead of
        GBLUP fits.

    Examples
    --------
    >>> names = np.array(["a", "b", "c", "d"])
    >>> flat, close = Kernel(np.eye(4), names), Kernel(np.eye(4) + 0.9, names)
    >>> records = pd.DataFrame({"name": ["a", "b", "c"], "response": [1.0, 1.1, 0.9],
    ...                         "block": 0})
    >>> model = WeightedGBLUP([(0.0, flat), (1.0, close)]).fit(records)
    >>> model.mix_, model.predict(pd.DataFrame({"name": ["d"], "block": [0]})).round(3)
    (1.0, array([1.]))
    """

    def __init__(
        self, relationships, gaussian: bool = False, fixed: FixedEffects = NO_FIXED
    ):
        if not relationships:
            raise ValueError("weighted GBLUP needs at least one relationship")
        self.relationships = [
            (float(mix), k if isinstance(k, Kernel) else Kernel(k, memory=0))
            for mix, k in relationships
        ]
        self.gaussian = gaussian
        self.fixed = fixed

    def _fit_group(self, kernel: Kernel, individuals, y, covariates=None):
        if self.gaussian:
            part = kernel.matrix[np.ix_(individuals, individuals)]
            return best_bandwidth(part, y, covariates=covariates)[2]
        return reml(y, kernel, individuals, covariates)

    def select(self, groups) -> WeightedGBLUP:
        """Choose the mix for ``groups``, a list of ``(individuals (n,) int rows of
        the relationships, responses (n,)[, fixed-effect design (n, p)])``; sets
        ``mix_``, ``relationship_`` (the chosen :class:`Kernel`) and ``fits_``
        (each group's fit under it, or None when there was a single candidate, so
        nothing was fitted); returns ``self``."""
        best = None
        if len(self.relationships) == 1:
            best = (*self.relationships[0], None)
        else:
            for mix, kernel in self.relationships:
                fits = [self._fit_group(kernel, *group) for group in groups]
                total = sum(fit.log_likelihood for fit in fits)
                if best is None or total > best[3]:
                    best = (mix, kernel, fits, total)
        self.mix_, self.relationship_, self.fits_ = best[:3]
        return self

    def fit(self, records: pd.DataFrame) -> WeightedGBLUP:
        """Choose the mix on ``records`` (``name``, ``response``, ``block`` and the
        fixed-effect columns; one group per block, each with its own fixed-effect
        design), then GBLUP per block under it; returns ``self``."""
        names, y = _records(records)
        environments = records["block"].to_numpy()
        self.environments_ = np.unique(environments)
        index = self.relationships[0][1].index_of(names)
        self.designs_, groups = {}, []
        for b in self.environments_:
            here = environments == b
            design = FixedDesign(self.fixed).fit(records[here])
            self.designs_[b.item()] = design
            groups.append((index[here], y[here], design.matrix(records[here])))
        self.select(groups)
        fits = self.fits_ or [reml(y, self.relationship_, *group) for group in groups]
        self.environment_fits_ = dict(
            zip(self.environments_.tolist(), fits, strict=True)
        )
        return self

    def predict_parts(self, records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed, genetic)`` parts ``(k,)`` for ``records`` (``name``, ``block``
        and the fixed-effect columns); NaN for a block without training records."""
        rows = self.relationship_.index_of(records["name"])
        environments = records["block"].to_numpy()
        fixed, genetic = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        for environment, fit in self.environment_fits_.items():
            here = environments == environment
            x = self.designs_[environment].matrix(records[here])
            fixed[here] = x @ fit.beta
            genetic[here] = fit.blup[rows[here]]
        return fixed, genetic

    def predict(self, records: pd.DataFrame) -> np.ndarray:
        """Fixed part plus BLUP of each record (``name``, ``block``, fixed-effect
        columns), ``(k,)`` float64; NaN for a block without training records."""
        fixed, genetic = self.predict_parts(records)
        return fixed + genetic
