"""Figures (PNG) and a self-contained HTML report of evaluation and finetuning runs.

:mod:`.plots` draws the figures, :mod:`.html` assembles ``report.html`` (figures
embedded, so it can be mailed or archived on its own), :mod:`.outputs` writes
everything a command leaves after its run.
"""

from .html import Section, evaluation_report, finetune_report, write_report
from .outputs import (
    first_fold_curves,
    fold_importance,
    write_evaluation,
    write_finetune_outputs,
)
from .plots import (
    genome_x,
    plot_accuracy,
    plot_learning_curves,
    plot_marker_importance,
    plot_observed_vs_predicted,
    read_learning_curves,
    relative_importance,
)

__all__ = [
    "Section",
    "evaluation_report",
    "finetune_report",
    "first_fold_curves",
    "fold_importance",
    "genome_x",
    "plot_accuracy",
    "plot_learning_curves",
    "plot_marker_importance",
    "plot_observed_vs_predicted",
    "read_learning_curves",
    "relative_importance",
    "write_evaluation",
    "write_finetune_outputs",
    "write_report",
]
