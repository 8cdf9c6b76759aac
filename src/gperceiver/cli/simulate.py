"""``gperceiver simulate``: genotypes and traits with known truth."""

from __future__ import annotations

from pathlib import Path

from ..simulate import SimulationConfig, simulate, write_simulation


def cmd_simulate(args) -> None:
    config = SimulationConfig(
        n_individuals=args.individuals,
        n_chromosomes=args.chromosomes,
        n_markers=args.markers,
        ploidy=args.ploidy,
        n_alleles=args.n_alleles,
        missing_rate=args.missing_rate,
        heritability=args.heritability,
        n_environments=args.environments,
        n_qtl=args.qtl,
        dominance_variance=args.dominance,
        epistasis_variance=args.epistasis,
        gxe_correlation=args.gxe_correlation,
        weather_days=args.weather_days,
        fixed_variance=args.fixed_variance,
        n_folds=args.folds,
        seed=args.seed,
    )
    data = simulate(config)
    out = Path(args.out)
    written = ",".join(write_simulation(data, out))
    g = data.genotypes
    print(
        f"simulated {g.n_individuals} individuals x {g.n_markers} markers "
        f"(ploidy {g.ploidy}, {g.n_alleles} alleles, "
        f"{g.missing_rate():.1%} missing copies), "
        f"{len(data.phenotypes.table)} phenotype records in {config.n_environments} "
        f"environments -> {out}/{{{written}}}.tsv"
    )


def add_simulate_command(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate genotypes (msprime) and traits with known truth"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--individuals", type=int, default=500)
    p.add_argument("--markers", type=int, default=3000, help="total markers")
    p.add_argument("--chromosomes", type=int, default=3)
    p.add_argument("--ploidy", type=int, default=2)
    p.add_argument(
        "--n-alleles", type=int, default=2, help=">2 gives multi-allelic sites"
    )
    p.add_argument("--missing-rate", type=float, default=0.01)
    p.add_argument("--heritability", type=float, default=0.5)
    p.add_argument("--environments", type=int, default=4)
    p.add_argument("--qtl", type=int, default=200)
    p.add_argument(
        "--dominance", type=float, default=0.1, help="share of genetic variance"
    )
    p.add_argument(
        "--epistasis", type=float, default=0.1, help="share of genetic variance"
    )
    p.add_argument("--gxe-correlation", type=float, default=0.7)
    p.add_argument(
        "--weather-days",
        type=int,
        default=0,
        help="daily weather per environment driving GxE (writes covariates.tsv)",
    )
    p.add_argument(
        "--fixed-variance",
        type=float,
        default=0.0,
        help="share of phenotypic variance from fixed effects: a factor 'sex' and "
        "a covariate 'age' (columns of phenotypes.tsv; truth in fixed_effects.tsv)",
    )
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)
