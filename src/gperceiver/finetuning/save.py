"""Finetuning step 5, save: each member through :func:`checkpoint.save_model`, then
the run's ``config.json`` (every setting, the scaling, the members' layout) and
its marker map."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..checkpoint import FORMAT_VERSION, save_model, write_json
from ..data import Genotypes
from ..io import write_chroms
from .settings import TASK_NAME


def save_member(directory: Path, model, genotypes: Genotypes) -> None:
    """One trained member, in eval mode, with the marker map it was trained on."""
    save_model(directory, model.eval(), {"task": TASK_NAME}, genotypes.markers)


def save_run(
    out: Path,
    plan,
    data,
    layout: list[dict],
    genotypes: Genotypes,
    cv=None,
    environments: list[str] | None = None,
    fixed=None,
) -> None:
    """``config.json`` and ``markers.tsv`` of a finetune output directory, after
    its members (``layout``) are saved; ``environments`` names the blocks (the
    phenotypes' :attr:`~gperceiver.data.Phenotypes.environment_labels`);
    ``fixed`` the fitted fixed effects
    (:class:`~gperceiver.baselines.FixedPart`, None: none)."""
    settings, environment = plan.settings, data.environment
    write_json(
        {
            "task": TASK_NAME,
            "format_version": FORMAT_VERSION,
            "model": plan.model.to_dict(),
            "head": plan.head.to_dict(),
            "train": asdict(plan.train),
            "finetune": asdict(settings),
            "graph": asdict(plan.graph),
            "scaling": {
                "mean": data.scaling.mean.tolist(),
                "sd": data.scaling.sd.tolist(),
            },
            "members": layout,
            "environment": None
            if plan.environment is None
            else plan.environment.to_dict(),
            "covariates": None if environment is None else environment["standard"],
            "pretrained": None if plan.pretrained is None else str(plan.pretrained),
            "validation": f"cv == {cv}"
            if cv is not None
            else f"inner split of {settings.val_fraction:.0%} of training individuals",
            "markers": genotypes.markers.fingerprint(),
            "environments": environments,
            "fixed_effects": None if fixed is None else fixed.to_dict(),
        },
        out / "config.json",
    )
    write_chroms(genotypes.markers, out / "markers.tsv")
