"""Finetune a phenotype model (from scratch or from a pretrained encoder) and predict.

The pipeline (:func:`finetune`), one module per step:

1. :mod:`.settings`: resolve the settings, every refusal and automatic choice;
2. :mod:`.inputs`: prepare the data (records, splits, scaling, covariates, marker
   inputs);
3. :mod:`.model`: build each model; :mod:`.additive` fits its additive path
   (GBLUP/RKHS through the baselines package);
4. :mod:`.training`: train every member;
5. :mod:`.save`: save through :func:`~gperceiver.checkpoint.save_model`.

:mod:`.predictor` loads a finetune output directory back to predict.

No leakage: response scaling and early stopping use training individuals only,
unless ``cv`` names a validation fold, which then steers early stopping (the user's
explicit choice; ``evaluate`` never does this, it splits the training folds).
"""

from .additive import AdditivePath, additive_offsets, fit_additive, fit_additive_path
from .model import encoder_features
from .pipeline import finetune
from .predictor import (
    Predictor,
    load_predictor,
    model_environments,
    prediction_table,
    record_predictions,
)
from .settings import FINETUNE_DEFAULTS, TASK_NAME, FinetuneSettings

__all__ = [
    "FINETUNE_DEFAULTS",
    "TASK_NAME",
    "AdditivePath",
    "FinetuneSettings",
    "Predictor",
    "additive_offsets",
    "encoder_features",
    "finetune",
    "fit_additive",
    "fit_additive_path",
    "load_predictor",
    "model_environments",
    "prediction_table",
    "record_predictions",
]
