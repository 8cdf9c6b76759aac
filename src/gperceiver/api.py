"""The Python API for notebooks: ``import gperceiver as gp``.

Readers (:func:`read_genotypes`, :func:`read_phenotypes`,
:meth:`Genotypes.from_dosages <gperceiver.data.Genotypes.from_dosages>`),
estimators with scikit-learn's conventions (:class:`GBLUP`, :class:`RKHS`,
:class:`Perceiver`: the constructor stores parameters only, ``fit`` sets the
attributes ending in ``_``, ``get_params`` / ``set_params``) and
:func:`cross_validate`. Each is a thin layer over the functions the ``gperceiver``
command runs: the baselines fit through :func:`~gperceiver.baseline_model.fit_baseline`
(``gperceiver fit``) and save in its format; the Perceiver through
:func:`~gperceiver.finetuning.finetune` (``gperceiver finetune``), saved as that
command saves.

A small session on simulated data (the README shows one on the wheat set):

>>> import gperceiver as gp
>>> from gperceiver.simulate import SimulationConfig, simulate
>>> data = simulate(SimulationConfig(n_individuals=60, n_markers=80, n_qtl=8,
...                                  n_environments=1, n_folds=3, seed=1))
>>> model = gp.GBLUP().fit(data.genotypes, data.phenotypes)
>>> model.predict(data.genotypes).shape, bool(0 < model.heritability_.iloc[0] < 1)
((60,), True)
>>> gp.cross_validate(data.genotypes, data.phenotypes, ["gblup"]).columns.tolist()
['method', 'block', 'fold', 'pearson_r', 'pearson_r_genetic', 'n']
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import io
from .baseline_model import fit_baseline
from .baseline_storage import load_baseline, save_baseline
from .baselines import DEFAULT_BANDWIDTHS, FixedEffects, column_list
from .data import Genotypes, Phenotypes
from .io.records import environment_codes


def read_genotypes(
    path, chroms=None, ploidy: int = 2, n_alleles: int = 2, dosage: bool = False
) -> Genotypes:
    """Genotypes ``(N, M, P)`` from a VCF/BCF, PLINK 1/2 fileset, VCF Zarr store,
    or a markers table (allele-set codes, or copies of allele 2 with ``dosage``)
    with its ``chroms`` table (``chr, marker, pos``), as the commands read them.

    ``ploidy`` and ``n_alleles`` describe a table's codes; files carry their own.
    """
    if io.genotype_format(path) != "table":
        return io.read_genotype_file(path)
    if chroms is None:
        raise io.InputError(
            path, None, "a markers table needs its chroms table", "pass chroms=..."
        )
    return io.read_table_genotypes(path, chroms, ploidy, n_alleles, dosage)


def read_phenotypes(
    path,
    genotypes: Genotypes | None = None,
    trait: str = "response",
    environment: str = "block",
    name: str = "name",
) -> Phenotypes:
    """The records of one ``trait`` (columns named as ``--trait``,
    ``--environment``, ``--name``); with ``genotypes``, only the records of
    genotyped names (the others dropped with a warning)."""
    phenotypes = io.read_phenotypes(path, trait, environment, name)
    if genotypes is None:
        return phenotypes
    return io.match_phenotypes(phenotypes, genotypes)


def model_records(records: pd.DataFrame, environments: dict) -> pd.DataFrame:
    """``records`` with ``block`` as the model's codes (``environments``: the
    environment names or codes the model shows -> its codes; ``block`` may be
    left out when there is one)."""
    if "block" not in records:
        if len(environments) != 1:
            raise ValueError(
                f"records need a block column: the model has {len(environments)} "
                f"environments, {list(environments)}"
            )
        return records.assign(block=next(iter(environments.values())))
    lookup = {str(label): code for label, code in environments.items()}
    codes = environment_codes(records["block"], lookup, "records", "block")
    return records.assign(block=codes)


def as_phenotypes(genotypes: Genotypes, phenotypes_or_y) -> Phenotypes:
    """Records from a :class:`Phenotypes`, a DataFrame (``name``, ``response``,
    optional ``block`` codes, default 0) or responses ``(N,)`` in the order of
    ``genotypes`` (one environment; NaN: no record), matched to the genotypes."""
    if isinstance(phenotypes_or_y, Phenotypes):
        return io.match_phenotypes(phenotypes_or_y, genotypes)
    if isinstance(phenotypes_or_y, pd.DataFrame):
        table = phenotypes_or_y
        if "block" not in table:
            table = table.assign(block=0)
        return io.match_phenotypes(Phenotypes(table.reset_index(drop=True)), genotypes)
    y = np.asarray(phenotypes_or_y, dtype=np.float64)
    if y.shape != (genotypes.n_individuals,):
        raise ValueError(
            f"y has shape {y.shape}; give one response per individual, "
            f"({genotypes.n_individuals},), NaN where there is none"
        )
    known = ~np.isnan(y)
    table = pd.DataFrame({"name": genotypes.names[known], "response": y[known]})
    return Phenotypes(table.assign(block=0), "y")


class Estimator:
    """scikit-learn's parameter protocol: every constructor argument is stored
    under its own name, unchanged, and nothing else happens before ``fit``."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments by name (``deep`` is accepted for
        scikit-learn and has nothing to descend into)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set constructor arguments by name; returns ``self``."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no parameter(s) {unknown}; "
                f"use some of {self._param_names()}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class GBLUP(Estimator):
    """Genomic BLUP per environment, REML variance components, optional fixed
    effects: ``gperceiver fit --method gblup`` as an estimator.

    Parameters
    ----------
    fixed : str or sequence of str
        Record columns fitted as factors (comma-separated text or a list).
    fixed_numeric : str or sequence of str
        Record columns fitted as linear covariates.

    Attributes
    ----------
    model_ : BaselineModel
        The fit (:mod:`gperceiver.baseline_model`), what ``save_pretrained`` writes.
    environments_ : list
        The environments predicted, in column order (names, or block codes).
    heritability_ : Series
        ``h2 = s2g / (s2g + s2e)`` per environment (on the kernel's scale).
    variance_components_ : DataFrame
        ``method, block, fold, component, value, se``: ``s2g``, ``s2e``, ``h2``
        and the fixed effects with their standard errors.
    fixed_effects_ : DataFrame
        ``block, effect, value, se``: the intercept, one row per factor level
        beyond the first, one slope per covariate.
    """

    method = "gblup"

    def __init__(self, fixed=(), fixed_numeric=()):
        self.fixed = fixed
        self.fixed_numeric = fixed_numeric

    def _fit_options(self) -> dict:
        return {}

    def fit(self, genotypes: Genotypes, phenotypes_or_y) -> GBLUP:
        """Fit every environment on its records (:func:`as_phenotypes`); the
        dosages are centred with the frequencies of all ``genotypes``, whose
        relationship is the kernel. Returns ``self``."""
        spec = FixedEffects(column_list(self.fixed), column_list(self.fixed_numeric))
        phenotypes = as_phenotypes(genotypes, phenotypes_or_y)
        self.model_ = fit_baseline(
            phenotypes, genotypes, self.method, spec, **self._fit_options()
        )
        return self._fitted()

    def _fitted(self) -> GBLUP:
        components = self.model_.components()
        self.environments_ = [env.label for env in self.model_.environments]
        self.variance_components_ = components
        h2 = components[components["component"] == "h2"]
        self.heritability_ = pd.Series(
            h2["value"].to_numpy(), index=h2["block"].to_numpy(), name="h2"
        )
        effects = components[~components["component"].isin(["s2g", "s2e", "h2"])]
        effects = effects[~effects["component"].isin(["bandwidth", "mix"])]
        self.fixed_effects_ = effects.rename(columns={"component": "effect"})[
            ["block", "effect", "value", "se"]
        ].reset_index(drop=True)
        return self

    def predict(self, genotypes: Genotypes, records=None) -> np.ndarray:
        """Predictions ``(N,)`` (one environment) or ``(N, E)`` (columns
        :attr:`environments_`) of every individual of ``genotypes``, new ones
        included (markers matched by name): the fixed part at the mean training
        levels and covariates plus the BLUP. With ``records`` (a DataFrame:
        ``name``, ``block`` as in :attr:`environments_`, optional with one
        environment, and the fixed-effect columns), the ``(k,)`` predictions of
        those records: BLUP plus the fixed part of each record's levels (a level
        unseen in training at the mean effect, with a warning)."""
        if records is not None:
            blocks = {env.label: env.block for env in self.model_.environments}
            records = model_records(records, blocks)
            fixed, genetic = self.model_.predict_records(genotypes, records)
            return fixed + genetic
        table = self.model_.predict_table(genotypes)
        values = table["prediction"].to_numpy().reshape(genotypes.n_individuals, -1)
        return values[:, 0] if values.shape[1] == 1 else values

    def predict_table(self, genotypes: Genotypes) -> pd.DataFrame:
        """``name, block, prediction, gebv`` for every individual x environment,
        as ``gperceiver predict --model`` writes it."""
        return self.model_.predict_table(genotypes)

    def save_pretrained(self, directory) -> None:
        """Write the fit as ``gperceiver fit`` does (safetensors + JSON)."""
        save_baseline(self.model_, directory)

    @classmethod
    def from_pretrained(cls, directory):
        """An estimator fitted as saved in ``directory`` (by ``save_pretrained`` or
        ``gperceiver fit`` with this method)."""
        model = load_baseline(directory)
        if model.method != cls.method:
            raise io.InputError(
                directory, None, f"holds a {model.method} model",
                f"load it with the estimator for {model.method}",
            )  # fmt: skip
        spec = model.environments[0].design.spec
        estimator = cls(fixed=list(spec.factors), fixed_numeric=list(spec.covariates))
        estimator.model_ = model
        return estimator._fitted()


class RKHS(GBLUP):
    """RKHS regression with a Gaussian kernel over centred dosages, the bandwidth
    of highest REML likelihood per environment: ``gperceiver fit --method rkhs``
    as an estimator. Parameters and attributes as :class:`GBLUP`, plus

    Parameters
    ----------
    bandwidths : tuple of float
        Candidate bandwidths, in units of the median squared distance.
    """

    method = "rkhs"

    def __init__(self, fixed=(), fixed_numeric=(), bandwidths=DEFAULT_BANDWIDTHS):
        super().__init__(fixed, fixed_numeric)
        self.bandwidths = bandwidths

    def _fit_options(self) -> dict:
        return {"bandwidths": tuple(self.bandwidths)}


class Perceiver(Estimator):
    """The Perceiver phenotype model (``gperceiver finetune``) as an estimator.

    Parameters left None take the command's defaults; ``params`` holds any other
    ``--params`` key (README, *Hyper-parameters*).

    Parameters
    ----------
    width, n_latents, epochs, lr, batch_size, seed, ensemble : optional
        The settings of the same names.
    params : dict, optional
        Further settings (``{"additive": False}``, ``{"head": "latent"}``, ...).
    pretrained : path, optional
        A ``gperceiver pretrain`` directory whose encoder is finetuned.
    progress : bool
        Show progress bars.
    fixed, fixed_numeric : str or sequence of str
        Record columns fitted as factors / linear covariates, by GLS in the
        per-environment REML GBLUP of the training records before the network,
        which trains on the responses corrected for them (as ``finetune
        --fixed``).

    Attributes
    ----------
    model_dir_ : Path
        The finetune directory of the fit (a temporary one unless saved).
    predictor_ : Predictor
        The loaded ensemble (:func:`~gperceiver.finetuning.load_predictor`).
    environments_ : list
        Block codes of the prediction columns (names after :meth:`fit` on named
        environments).
    fixed_effects_ : DataFrame
        ``block, effect, value``: the fitted intercept, factor levels and slopes
        (empty without fixed effects).
    """

    def __init__(
        self,
        width=None,
        n_latents=None,
        epochs=None,
        lr=None,
        batch_size=None,
        seed=None,
        ensemble=None,
        params=None,
        pretrained=None,
        progress=False,
        fixed=(),
        fixed_numeric=(),
    ):
        self.width = width
        self.n_latents = n_latents
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.ensemble = ensemble
        self.params = params
        self.pretrained = pretrained
        self.progress = progress
        self.fixed = fixed
        self.fixed_numeric = fixed_numeric

    def _typed(self) -> dict:
        names = ["width", "n_latents", "epochs", "lr", "batch_size", "seed", "ensemble"]
        typed = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        fixed = {
            "fixed": ",".join(column_list(self.fixed)),
            "fixed_numeric": ",".join(column_list(self.fixed_numeric)),
        }
        fixed = {k: v for k, v in fixed.items() if v}
        return {**typed, **fixed, "progress": self.progress}

    def fit(self, genotypes: Genotypes, phenotypes_or_y) -> Perceiver:
        """Finetune on every record (early stopping on an inner split of the
        individuals) into a temporary directory; returns ``self``."""
        from .finetuning import finetune

        phenotypes = as_phenotypes(genotypes, phenotypes_or_y)
        self._workdir = tempfile.TemporaryDirectory(prefix="gperceiver-perceiver-")
        out = Path(self._workdir.name) / "model"
        finetune(
            phenotypes, genotypes, out, dict(self.params or {}), self._typed(),
            pretrained=self.pretrained, resume=False,
        )  # fmt: skip
        labels = phenotypes.environment_labels
        return self._loaded(out, None if labels is None else list(labels))

    def _loaded(self, directory, labels) -> Perceiver:
        from .checkpoint import load_model_config
        from .finetuning import load_predictor

        self.model_dir_ = Path(directory)
        self.predictor_ = load_predictor(directory)
        self.markers_ = load_model_config(directory)[1]
        blocks = range(self.predictor_.members[0].head_config.n_environments)
        self.environments_ = list(blocks) if labels is None else labels
        fixed = self.predictor_.fixed
        self.fixed_effects_ = (
            pd.DataFrame(columns=["block", "effect", "value"])
            if fixed is None
            else fixed.effects(self.environments_)
        )
        return self

    def predict(self, genotypes: Genotypes, records=None) -> np.ndarray:
        """Predictions ``(N,)`` (one environment) or ``(N, E)`` of every
        individual of ``genotypes`` (the marker map of the fit, else
        :class:`~gperceiver.io.InputError`), the ensemble's mean plus, with fixed
        effects, the fixed part at the mean training levels and covariates. With
        ``records`` (as for :meth:`GBLUP.predict`), the ``(k,)`` predictions of
        those records, each with the fixed part of its own levels."""
        from .checkpoint import check_markers
        from .finetuning import prediction_table, record_predictions

        check_markers(self.markers_, genotypes.markers, self.model_dir_, "genotypes")
        if records is not None:
            blocks = {label: code for code, label in enumerate(self.environments_)}
            records = model_records(records, blocks)
            fixed, genetic = record_predictions(self.predictor_, genotypes, records)
            return fixed + genetic
        table = prediction_table(self.predictor_, genotypes)
        values = table["prediction"].to_numpy().reshape(genotypes.n_individuals, -1)
        return values[:, 0] if values.shape[1] == 1 else values

    def save_pretrained(self, directory) -> None:
        """Copy the finetuned model (``gperceiver finetune``'s directory, without
        its training checkpoints) to ``directory``, with ``estimator.json`` (the
        parameters and environment names)."""
        from .checkpoint import write_json

        skip = shutil.ignore_patterns("checkpoints", "gperceiver.log")
        params = {k: _json_value(v) for k, v in self.get_params().items()}
        with io.atomic_directory(directory, last="config.json") as staging:
            shutil.copytree(self.model_dir_, staging, dirs_exist_ok=True, ignore=skip)
            estimator = {"params": params, "environments": self.environments_}
            write_json(estimator, staging / ESTIMATOR_FILE)

    @classmethod
    def from_pretrained(cls, directory) -> Perceiver:
        """A fitted estimator from a ``save_pretrained`` or ``gperceiver
        finetune`` directory (predicts as that model)."""
        from .checkpoint import read_json

        path = Path(directory) / ESTIMATOR_FILE
        saved = read_json(path) if path.exists() else {}
        estimator = cls(**saved.get("params", {}))
        return estimator._loaded(directory, saved.get("environments"))


ESTIMATOR_FILE = "estimator.json"  # a saved Perceiver's parameters


def _json_value(value):
    """``value`` as JSON holds it (a path as text, a tuple as a list)."""
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def cross_validate(
    genotypes: Genotypes,
    phenotypes: Phenotypes,
    methods=("gblup", "rkhs"),
    folds=None,
    scheme: str = "cv1",
    fixed=(),
    fixed_numeric=(),
    params: dict | None = None,
    predictions: bool = False,
):
    """Cross-validate ``methods`` (names of ``gperceiver evaluate --methods``) on
    the ``cv`` folds (``folds``: only these) as ``evaluate`` does.

    Returns the accuracy table ``method, block, fold, pearson_r,
    pearson_r_genetic, n`` with environments by name (``fold = all``: r pooled
    over the folds); with ``predictions``, also the predictions of every
    validation record, as ``(accuracy, predictions)``.
    """
    from .evaluate import cross_validate as evaluate_folds

    spec = FixedEffects(column_list(fixed), column_list(fixed_numeric))
    options = {
        "fixed": spec,
        "params": dict(params or {}),
        "typed": {"progress": False},
        "components": [],
    }
    folds = None if folds is None else [str(f) for f in folds]
    phenotypes = as_phenotypes(genotypes, phenotypes)
    table, accuracy = evaluate_folds(
        phenotypes, genotypes, list(methods), False, options, scheme, folds
    )
    accuracy = phenotypes.named_environments(accuracy)
    return (accuracy, phenotypes.named_environments(table)) if predictions else accuracy


__all__ = [
    "GBLUP",
    "RKHS",
    "Estimator",
    "Genotypes",
    "Perceiver",
    "Phenotypes",
    "as_phenotypes",
    "cross_validate",
    "read_genotypes",
    "read_phenotypes",
]
