"""Classical baselines: GBLUP, RKHS and reaction-norm GBLUP with REML variance
components, one module per idea.

- :mod:`.relationship`: VanRaden's genomic relationship matrix, marker weights and
  the weight mixes of a prior;
- :mod:`.kernels`: the Gaussian kernel and :class:`Kernel`, a kernel over named
  individuals that remembers its decompositions;
- :mod:`.fixed_effects`: the fixed-effect design ``X`` (factors, covariates)
  learnt on training records;
- :mod:`.precision`: prediction error variances, reliabilities and the
  fixed effects' covariance of a fit;
- :mod:`.mixed_model`: REML of ``y = X b + Z g + e`` (:func:`reml`) and the RKHS
  bandwidth of highest likelihood;
- :mod:`.estimators`: :class:`GBLUP`, :class:`RKHS` and :class:`WeightedGBLUP`
  (the one place that chooses how much a marker-weight prior counts) as
  ``fit`` / ``predict`` estimators;
- :mod:`.fixed_part`: fixed effects fitted by the REML GBLUP for a model whose
  genetic part is fitted elsewhere (the Perceiver), and the fixed part of records;
- :mod:`.effects`: the same fits written to predict any genotype (allele effects,
  kernel features), as the phenotype model's additive path uses them;
- :mod:`.reaction_norm`: the environment kernel and :class:`ReactionNorm`.

Every fit is ``y = X b + Z g + e`` with ``g ~ N(0, s2g K)`` over genotyped
individuals and ``e ~ N(0, s2e I)`` over records. Kernels are built from the
genotypes of *all* individuals, without phenotypes (no response of a validation
individual enters them), and BLUPs are returned for all of them.
"""

from .effects import (
    MARKER_EFFECT_COLUMNS,
    AdditiveFit,
    KernelFit,
    additive_effects,
    allele_effect_predictions,
    blup_allele_effects,
    feature_distances,
    kernel_columns,
    kernel_effects,
    kernel_features,
    marker_effect_frame,
)
from .estimators import GBLUP, RKHS, WeightedGBLUP
from .fixed_effects import (
    NO_FIXED,
    FixedDesign,
    FixedEffects,
    check_fixed_columns,
    column_list,
)
from .fixed_part import FixedPart, fit_fixed_part
from .kernels import DEFAULT_BANDWIDTHS, Kernel, gaussian_kernel, weighted_kernels
from .mixed_model import LOG_DELTA_BOUNDS, N_GRID, MixedModelFit, best_bandwidth, reml
from .precision import fixed_effect_covariance, prediction_error_variance, reliability
from .reaction_norm import ReactionNorm, environment_kernel
from .relationship import (
    KERNEL_WEIGHT_MIXES,
    genomic_relationship,
    mixed_weights,
    relationship_mixes,
)

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "GBLUP",
    "KERNEL_WEIGHT_MIXES",
    "LOG_DELTA_BOUNDS",
    "MARKER_EFFECT_COLUMNS",
    "NO_FIXED",
    "N_GRID",
    "RKHS",
    "AdditiveFit",
    "FixedDesign",
    "FixedEffects",
    "FixedPart",
    "Kernel",
    "KernelFit",
    "MixedModelFit",
    "ReactionNorm",
    "WeightedGBLUP",
    "additive_effects",
    "allele_effect_predictions",
    "blup_allele_effects",
    "feature_distances",
    "best_bandwidth",
    "check_fixed_columns",
    "column_list",
    "environment_kernel",
    "fixed_effect_covariance",
    "fit_fixed_part",
    "gaussian_kernel",
    "genomic_relationship",
    "kernel_columns",
    "kernel_effects",
    "kernel_features",
    "marker_effect_frame",
    "mixed_weights",
    "prediction_error_variance",
    "reml",
    "relationship_mixes",
    "weighted_kernels",
    "reliability",
]
