"""Option groups shared by the commands, and how typed options reach the library.

Training options have no default (``argparse.SUPPRESS``): they override ``--params``
only when typed. :func:`typed_options` passes on every given option that names a
field of a config dataclass (:data:`CONFIG_FIELDS`, derived from the classes, so
no option can be dropped for want of a list entry; a test checks that every such
option is a field).
"""

from __future__ import annotations

import argparse

from ..finetuning import FinetuneSettings
from ..marker_graph import GraphSettings
from ..nn.environment import EnvironmentConfig
from ..nn.heads import HeadConfig
from ..nn.perceiver import PerceiverConfig
from ..params import field_names, read_params
from ..pretraining import PretrainSettings
from ..tasks.masked import MaskedConfig
from ..tasks.twinned import TwinnedConfig
from ..train import TrainConfig

# every hyper-parameter a command-line option may set: the fields of these classes
CONFIG_FIELDS = frozenset(
    field_names(
        PerceiverConfig,
        TrainConfig,
        MaskedConfig,
        TwinnedConfig,
        PretrainSettings,
        GraphSettings,
        HeadConfig,
        FinetuneSettings,
        EnvironmentConfig,
    )
)
# genotype-reading options that share a name with a size the data sets anyway
READING_OPTIONS = frozenset({"ploidy", "n_alleles"})


def add_genotype_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("genotypes")
    group.add_argument(
        "--ploidy", type=int, default=2, help="copies per locus (default 2)"
    )
    group.add_argument(
        "--n-alleles",
        type=int,
        default=2,
        help="real alleles per marker in the code table (default 2 = biallelic)",
    )
    group.add_argument(
        "--dosage",
        action="store_true",
        help="MARKERS holds dosages 0..ploidy (copies of allele 2; NA = missing) "
        "instead of allele-set codes",
    )


def add_inputs(parser: argparse.ArgumentParser, phenos: bool = True) -> None:
    """Positional PHENOS (optional), CHROMS and MARKERS, and the genotype options."""
    if phenos:
        parser.add_argument(
            "phenos", help="phenotypes TSV: name, response, block[, cv]"
        )
        add_phenotype_column_options(parser)
    parser.add_argument(
        "chroms",
        nargs="?",
        help="chroms TSV: chr, marker, pos (only with a markers table)",
    )
    parser.add_argument(
        "markers",
        help="markers TSV (name + one column per marker), or a .vcf[.gz], .bcf, "
        "PLINK .bed or .zarr store",
    )
    add_genotype_options(parser)


def add_phenotype_column_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("phenotype columns")
    group.add_argument(
        "--trait",
        metavar="COL[,COL...]",
        help="the response column (default response); evaluate runs several, one "
        "output directory each under --out",
    )
    group.add_argument(
        "--environment",
        metavar="COL",
        help="the environment column (default block): names (2019_Obregon) or "
        "non-negative integers; outputs show them by name",
    )
    group.add_argument(
        "--name",
        dest="name_column",
        metavar="COL",
        help="the individual column (default name)",
    )


def add_covariate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--covariates",
        help="environment covariates TSV: block[, time], covariates... (one row per "
        "block, or per block and day); lets models predict unseen environments",
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options that override ``--params`` only when typed (argparse.SUPPRESS)."""
    s = argparse.SUPPRESS
    group = parser.add_argument_group("training (override --params only when given)")
    group.add_argument("--params", help="JSON object of hyper-parameters (see README)")
    group.add_argument("--lr", type=float, default=s, help="peak learning rate")
    group.add_argument("--warmup-steps", type=int, default=s)
    group.add_argument(
        "--schedule", choices=["cosine", "cyclic", "constant"], default=s
    )
    group.add_argument("--batch-size", type=int, default=s)
    group.add_argument("--epochs", "--nepochs", dest="epochs", type=int, default=s)
    group.add_argument("--max-steps", type=int, default=s)
    group.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        default=s,
        help="wall-clock seconds for training: stop at the first step past it, the "
        "LR annealed on the clock (0: none; impute without --model: 1800)",
    )
    group.add_argument(
        "--patience",
        "--early-stopping-patience",
        dest="patience",
        type=int,
        default=s,
        help="evaluations without improvement before stopping",
    )
    group.add_argument("--seed", type=int, default=s)
    group.add_argument("--width", type=int, default=s, help="model width D")
    group.add_argument("--latents", dest="n_latents", type=int, default=s)
    group.add_argument("--encode-iters", type=int, default=s)
    group.add_argument(
        "--chunk-size", type=int, default=s, help="markers per attention chunk"
    )
    group.add_argument(
        "--marker-graph",
        default=s,
        metavar="ld|FILE",
        help="refine the marker embeddings over a marker graph: 'ld' (r² among the "
        "training individuals) or a TSV marker_a, marker_b, weight",
    )
    group.add_argument(
        "--graph-layers",
        type=int,
        default=s,
        help="graph-attention layers with --marker-graph (default 2)",
    )
    group.add_argument(
        "--annotations",
        default=s,
        metavar="FILE",
        help="TSV marker, <numeric or text columns> added to each marker token",
    )
    group.add_argument(
        "--no-progress", dest="progress", action="store_false", default=s
    )


def add_masked_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("masked-marker task")
    group.add_argument(
        "--prop-x",
        dest="input_fraction",
        type=float,
        default=s,
        help="share of loci fed to the encoder per batch (default 1)",
    )
    group.add_argument(
        "--prop-y",
        dest="target_fraction",
        type=float,
        default=s,
        help="share of input loci hidden and predicted (default 0.1)",
    )
    group.add_argument(
        "--frequency-scaler",
        type=float,
        default=s,
        help="exponent s of the (1 - p)^s target weights (default 0.5)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=s,
        help="individuals held out for early stopping (default 0.1)",
    )


def add_pretrain_task_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("pretraining task")
    group.add_argument(
        "--task",
        choices=["masked", "contrastive", "both"],
        default=s,
        help="masked markers, twinned shared-copy prediction for random pairs, "
        "or both losses (default masked)",
    )
    group.add_argument(
        "--masked-weight",
        type=float,
        default=s,
        help="weight of the masked loss next to the shared-copy loss in --task both "
        "(default 1)",
    )


def add_finetune_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("finetuning")
    group.add_argument(
        "--head",
        choices=["latent", "pool"],
        default=s,
        help="per-block latent queries or pooled latents + MLP (default pool)",
    )
    group.add_argument(
        "--objective",
        "--loss",
        dest="objective",
        default=s,
        choices=["mse", "huber", "binary", "multiclass", "ordinal", "ranking"],
        help="shared by every block (default mse)",
    )
    group.add_argument(
        "--ensemble", type=int, default=s, help="models averaged (seeds)"
    )
    group.add_argument(
        "--head-epochs",
        type=int,
        default=s,
        help="epochs training only the head on a frozen pretrained encoder",
    )
    group.add_argument(
        "--unfreeze",
        default=s,
        help="parts trained after the head phase: '', encoder, embed,encoder",
    )
    group.add_argument(
        "--marker-weights",
        default=s,
        metavar="FILE",
        help="TSV marker, weight: non-negative prior weights of markers (a QTL "
        "indicator, GWAS scores from other data) in the additive GBLUP/RKHS path; "
        "REML on the training records chooses how much they count (0: not at all)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=s,
        help="inner validation share of training individuals (without --cv)",
    )


def add_fixed_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("fixed effects")
    group.add_argument(
        "--fixed",
        default=default,
        metavar="COL[,COL...]",
        help="phenotype columns fitted as factors (sex, litter, replicate): GLS in "
        "the REML mixed model, levels learnt on the training records only",
    )
    group.add_argument(
        "--fixed-numeric",
        default=default,
        metavar="COL[,COL...]",
        help="phenotype columns fitted as linear covariates (age, start weight)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a command's models train and predict (resolved, and a
    missing CUDA refused, by :func:`gperceiver.device.resolve_device` before the
    command runs)."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|cuda[:N]",
        help="where models train and predict: auto (default) = the CUDA GPU when "
        "there is one, else the CPU; under torchrun each process takes the GPU of "
        "its LOCAL_RANK",
    )


def typed_options(args) -> dict:
    """The hyper-parameters typed on the command line (config fields only; an
    option left at a default of None, such as ``impute --panel-layers``, was not
    typed)."""
    return {
        k: v
        for k, v in vars(args).items()
        if k in CONFIG_FIELDS and k not in READING_OPTIONS and v is not None
    }


def file_params(args) -> dict:
    """The ``--params`` JSON, or ``{}``."""
    return read_params(args.params) if getattr(args, "params", None) else {}
