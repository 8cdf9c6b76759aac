"""The methods :func:`~gperceiver.evaluate.cross_validate` compares, by name
(:data:`METHODS`): adapters from ``(train, validation, genotypes, cache)`` to the
kernel baselines and to the finetuning pipeline.

A method is a callable ``(train, validation, genotypes, cache) -> (k,)``
predictions for the ``k`` rows of ``validation``, or a pair ``(fixed, genetic)``
of ``(k,)`` arrays whose sum is the prediction (the kernel baselines: the fitted
fixed effects, the intercept at least, and the BLUP). It is called once per fold with
every block's training rows; kernel baselines fit each block separately
(:func:`per_environment`), neural methods fit all blocks at once. ``cache`` is a dict
shared by every call on one data set, where a method keeps what does not depend on
the split (a relationship matrix, its decompositions, a pretrained encoder).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import (
    GBLUP,
    RKHS,
    FixedEffects,
    Kernel,
    ReactionNorm,
    WeightedGBLUP,
    environment_kernel,
    fit_fixed_part,
    mixed_weights,
    weighted_kernels,
)
from ..baselines.fixed_effects import column_list
from ..data import Genotypes, MarkerInputs, Phenotypes
from ..finetuning import (
    FinetuneSettings,
    finetune,
    load_predictor,
    record_predictions,
)
from ..incontext import relatives_method
from ..incontext_prior import prior_method
from ..io import InputError
from ..nn.heads import HeadConfig
from ..pretraining import pretrain_encoder
from ..selection import component_frame, marker_effects, variance_components

Method = Callable[[pd.DataFrame, pd.DataFrame, Genotypes, dict], np.ndarray | tuple]
Parts = tuple[np.ndarray, np.ndarray]  # (fixed, genetic) parts, (k,) each
EnvironmentMethod = Callable[[pd.DataFrame, Genotypes, pd.DataFrame, dict], Parts]


def fixed_effects(cache: dict) -> FixedEffects:
    """The fixed effects of a run: ``fixed`` (factor columns) and
    ``fixed_numeric`` (covariate columns), comma-separated text or lists, from
    ``cache['fixed']`` (a :class:`FixedEffects`) or the ``params`` / ``typed``
    options."""
    if isinstance(cache.get("fixed"), FixedEffects):
        return cache["fixed"]
    options = {**(cache.get("params") or {}), **(cache.get("typed") or {})}
    return FixedEffects(
        column_list(options.get("fixed")), column_list(options.get("fixed_numeric"))
    )


def _relationship(genotypes: Genotypes, cache: dict) -> Kernel:
    """VanRaden G of all genotypes, computed once per data set."""
    if "relationship" not in cache:
        cache["relationship"] = Kernel.relationship(genotypes)
    return cache["relationship"]


def _record_components(cache: dict, frame: pd.DataFrame) -> None:
    """Keep what a fit estimated in ``cache['components']`` (a list the caller
    may pass in ``options`` to read them), labelled with the running split."""
    frame = frame.assign(method=cache.get("method"), fold=cache.get("split"))
    cache.setdefault("components", []).append(frame)


def _record_effects(
    cache: dict, fit, names, genotypes, environment, weights=None
) -> None:
    """Keep the rrBLUP marker effects of a GBLUP fit in ``cache['marker_effects']``
    when the caller asked for them (passed a list in ``options``)."""
    if isinstance(cache.get("marker_effects"), list):
        labels = {"method": cache.get("method"), "fold": cache.get("split")}
        frame = marker_effects(
            fit, names, genotypes, weights, block=environment, **labels
        )
        cache["marker_effects"].append(frame)


def _gblup(train, genotypes, validation, cache) -> Parts:
    model = GBLUP(_relationship(genotypes, cache), fixed=fixed_effects(cache))
    model.fit(train, genotypes)
    environment = train["block"].iloc[0]
    _record_components(cache, variance_components(model, "", environment, ""))
    _record_effects(cache, model.fit_, train["name"], genotypes, environment)
    return model.predict_parts(validation)


def _rkhs(train, genotypes, validation, cache) -> Parts:
    model = RKHS(_relationship(genotypes, cache), fixed=fixed_effects(cache))
    model.fit(train, genotypes)
    environment = train["block"].iloc[0]
    _record_components(cache, variance_components(model, "", environment, ""))
    return model.predict_parts(validation)


def _weighted_relationships(genotypes: Genotypes, cache: dict) -> list:
    """``(mix, Kernel)`` weighted G of all genotypes for each prior mix
    (:func:`~gperceiver.baselines.relationship_mixes`), from the marker weights of
    ``cache["marker_inputs"]``, computed once per data set."""
    if "weighted_relationships" not in cache:
        inputs = cache.get("marker_inputs") or MarkerInputs()
        if inputs.weights is None:
            raise InputError(
                "--methods",
                None,
                "gblup-weighted needs a prior",
                "pass --marker-weights FILE (a TSV marker, weight)",
            )
        cache["weighted_relationships"] = weighted_kernels(genotypes, inputs.weights)
    return cache["weighted_relationships"]


def _gblup_weighted(train, validation, genotypes, cache) -> Parts:
    """:class:`~gperceiver.baselines.WeightedGBLUP`: one mix for every block of
    ``train`` (the additive path's rule), GBLUP per block under it."""
    relationships = _weighted_relationships(genotypes, cache)
    model = WeightedGBLUP(relationships, fixed=fixed_effects(cache)).fit(train)
    prior = (cache.get("marker_inputs") or MarkerInputs()).weights
    for environment, fit in model.environment_fits_.items():
        names = model.designs_[environment].names_
        frame = component_frame(
            fit, names, extra=[("mix", model.mix_)], block=environment
        )
        _record_components(cache, frame)
        records = train.loc[train["block"] == environment, "name"]
        weights = mixed_weights(prior, model.mix_)
        _record_effects(cache, fit, records, genotypes, environment, weights)
    return model.predict_parts(validation)


_gblup_weighted.per_environment = True  # fits each block: cannot predict a new one


def _across_environments(train, validation, genotypes, cache, interaction):
    if interaction and cache.get("covariates") is None:
        raise ValueError("gblup-rn needs environment covariates (--covariates)")
    environments = np.union1d(
        np.union1d(train["block"].unique(), validation["block"].unique()),
        [] if not interaction else cache["covariates"].environments,
    ).astype(np.int64)
    environment = (
        environment_kernel(cache["covariates"], environments) if interaction else None
    )
    model = ReactionNorm(
        _relationship(genotypes, cache),
        environment,
        environments,
        interaction,
        fixed_effects(cache),
        **_reml_options(cache),
    )
    model.fit(train, genotypes)
    return model.predict_parts(validation)


def _reml_options(cache: dict) -> dict:
    """``reml_group_records`` of :class:`ReactionNorm` from the ``params`` /
    ``typed`` options, when given (null or 0: exact REML on every record)."""
    options = {**(cache.get("params") or {}), **(cache.get("typed") or {})}
    if "reml_group_records" not in options:
        return {}
    value = options["reml_group_records"]
    if value is not None and (not isinstance(value, int) or value < 0):
        raise InputError(
            "--params",
            None,
            f"reml_group_records must be a whole number >= 0 or null, got {value!r}",
            'write e.g. {"reml_group_records": 1000} in it (null or 0: exact REML)',
        )
    return {"reml_group_records": value}


def _gblup_main(train, validation, genotypes, cache) -> np.ndarray:
    return _across_environments(train, validation, genotypes, cache, False)


def _gblup_rn(train, validation, genotypes, cache) -> np.ndarray:
    return _across_environments(train, validation, genotypes, cache, True)


def per_environment(fit_predict: EnvironmentMethod) -> Method:
    """A method fitted on each block's training rows, predicting its validation rows."""

    def method(train, validation, genotypes, cache) -> Parts:
        fixed = np.full(len(validation), np.nan)
        genetic = np.full(len(validation), np.nan)
        for environment in np.unique(validation["block"]):
            train_environment = train[train["block"] == environment]
            in_environment = (validation["block"] == environment).to_numpy()
            if len(train_environment):
                rows = validation[in_environment]
                parts = fit_predict(train_environment, genotypes, rows, cache)
                fixed[in_environment], genetic[in_environment] = parts
        return fixed, genetic

    method.per_environment = True  # cannot predict a block absent from training
    return method


def _workdir(cache: dict) -> Path:
    if "workdir" not in cache:
        cache["_tmp"] = tempfile.TemporaryDirectory(prefix="gperceiver-")
        cache["workdir"] = cache["_tmp"].name
    return Path(cache["workdir"])


FIXED_KEYS = ("fixed", "fixed_numeric")


def absorb_fixed_effects(train, validation, genotypes, cache) -> tuple:
    """Per block, the fixed effects of the REML GBLUP fitted on ``train`` (GLS,
    :func:`fixed_effects`, :func:`~gperceiver.baselines.fit_fixed_part`): ``(train
    with responses corrected for them, their fixed part (k,) of the validation
    rows)``; NaN for a block without training records."""
    relationship = _relationship(genotypes, cache)
    part = fit_fixed_part(train, relationship, fixed_effects(cache))
    return part.corrected(train), part.values(validation)


def _neural_options(cache: dict) -> tuple[dict, dict]:
    """``params`` and ``typed`` options for the finetuning pipeline, without the
    fixed effects (absorbed before it, :func:`absorb_fixed_effects`)."""
    params, typed = dict(cache.get("params") or {}), dict(cache.get("typed") or {})
    for key in FIXED_KEYS:
        params.pop(key, None)
        typed.pop(key, None)
    return params, typed


def _fold_predictions(train, validation, genotypes, cache, pretrained):
    """Finetune on ``train`` (inner split stops early), predict ``validation``.

    With covariates in ``cache`` the model uses them; when the scheme holds out
    environments (cv0, cv00) the inner split then holds out training blocks. With
    fixed effects the network trains on the responses corrected for those of the
    per-block REML GBLUP (:func:`absorb_fixed_effects`) and returns ``(fixed,
    genetic)`` parts.
    """
    fold = "-".join(sorted(map(str, validation["cv"].unique())))
    scheme = cache.get("scheme", "cv1")
    if scheme != "cv1":
        environments = "-".join(map(str, sorted(validation["block"].unique())))
        fold = f"block-{environments}" + ("" if scheme == "cv0" else f"-cv-{fold}")
    kind = "perceiver-pretrained" if pretrained else "perceiver"
    out = _workdir(cache) / kind / f"fold-{fold}"
    covariates = cache.get("covariates")
    params, typed = _neural_options(cache)
    chosen = {**params, **typed}
    if covariates is not None and scheme != "cv1" and "val_split" not in chosen:
        typed["val_split"] = "environments"
    fixed = None
    if fixed_effects(cache):
        train, fixed = absorb_fixed_effects(train, validation, genotypes, cache)
    finetune(
        Phenotypes(train, "training folds"),
        genotypes,
        out,
        params,
        typed,
        pretrained=pretrained,
        covariates=covariates,
        marker_inputs=cache.get("marker_inputs"),
        resume=cache.get("resume", True),
        feature_cache=cache.setdefault("encoder_features", {}),
        device=cache.get("device"),
    )
    predictor = load_predictor(out, device=cache.get("device"))
    _, genetic = record_predictions(predictor, genotypes, validation)
    return genetic if fixed is None else (fixed, genetic)


def _perceiver(train, validation, genotypes, cache) -> np.ndarray:
    """Evaluate method ``perceiver``: a model trained from scratch per fold."""
    return _fold_predictions(train, validation, genotypes, cache, None)


# what perceiver-pretrained's pretraining sets before --params and the typed
# options (which still win): fewer epochs than `gperceiver pretrain`'s 30. The
# encoder stays frozen under a head beside the additive path; on wheat 6 epochs
# finetuned as well as 30 (3 seeds) in a fifth of the time (BENCHMARKS.md,
# *Wheat: the Perceiver in the demo*)
PRETRAINED_METHOD = {"epochs": 6}


def _perceiver_pretrained(train, validation, genotypes, cache) -> np.ndarray:
    """Evaluate method ``perceiver-pretrained``: one masked pretraining on every
    genotype (transductive: genotypes only, never phenotypes; settings
    :data:`PRETRAINED_METHOD` under the run's), finetuned per fold."""
    if "pretrained" not in cache:
        directory = _workdir(cache) / "pretrained"
        params, typed = _neural_options(cache)
        pretrain_encoder(
            genotypes,
            directory,
            {**PRETRAINED_METHOD, **params},
            typed,
            resume=cache.get("resume", True),
            also_known=(HeadConfig, FinetuneSettings),
            marker_inputs=cache.get("marker_inputs"),
            device=cache.get("device"),
        )
        cache["pretrained"] = directory
    return _fold_predictions(train, validation, genotypes, cache, cache["pretrained"])


METHODS: dict[str, Method] = {
    "gblup": per_environment(_gblup),
    "rkhs": per_environment(_rkhs),
    "gblup-weighted": _gblup_weighted,
    "gblup-main": _gblup_main,
    "gblup-rn": _gblup_rn,
    "perceiver": _perceiver,
    "perceiver-pretrained": _perceiver_pretrained,
    "relatives": relatives_method(_relationship, fixed_effects, absorb_fixed_effects),
    "relatives-prior": prior_method(_relationship, fixed_effects, absorb_fixed_effects),
    "relatives-prior-tuned": prior_method(
        _relationship, fixed_effects, absorb_fixed_effects, tune=True
    ),
}

# the methods that read the marker weights of ``options["marker_inputs"]``
WEIGHT_USERS = {"gblup-weighted", "perceiver", "perceiver-pretrained"}


NOTES = {
    "gblup-weighted": "GBLUP with the --marker-weights prior, how much it counts "
    "chosen by REML on the training records, summed over blocks (the perceiver's "
    "additive path's rule)",
    "gblup-main": "main-effect GBLUP on every environment at once "
    "(environment means fixed)",
    "gblup-rn": "reaction-norm GBLUP: G, G o Omega kernels, Omega from the "
    "environment covariates (Jarquin et al. 2014)",
    "perceiver-pretrained": "pretrained once on the genotypes of every individual "
    f"(no phenotypes; {PRETRAINED_METHOD['epochs']} epochs unless --epochs says "
    "otherwise), then finetuned on the "
    "training folds of each split (a head on the frozen encoder beside the "
    "additive GBLUP/RKHS path; with panel copies also their projection, "
    "trained through the frozen encoder)",
    "relatives-prior": "in-context, prior-fitted: a network pretrained on simulated "
    "populations sets the window weights, bandwidth and noise ratio of a kernel "
    "regression on the training individuals of each environment (no training here)",
    "relatives-prior-tuned": "relatives-prior finetuned for at most 20 steps on "
    "context/query splits of the training records of each environment (early "
    "stopping on a 10% inner split of them)",
    "relatives": "in-context: each individual attends over the phenotyped training "
    "individuals by per-window similarity (RKHS at the start; window weights, "
    "bandwidth and an attention correction learnt by leave-one-out per environment)",
}
