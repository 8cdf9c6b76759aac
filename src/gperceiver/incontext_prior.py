"""The prior-fitted route of in-context prediction (issue 22): episodes of
context and query individuals, drawn from simulated breeding populations of
random architecture, train one :class:`~gperceiver.nn.relatives_prior.PriorRelativesNet`
that is then applied to a real data set as it is (``relatives-prior``).

Shape letters: W windows, N genotyped individuals, C context, Q queries.

An episode is a population's trait split into a context (responses known) and
queries (responses to predict). Only context responses reach the model: its
REML RKHS start and its features are computed from them, and the loss is the
squared error of the queries' responses, standardised with the context's mean
and sd. Weights ship in the package as safetensors + JSON (``format_version``),
written by ``benchmarks/train_relatives_prior.py``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .baselines import Kernel
from .data import Genotypes, MarkerMap
from .incontext import _start, _tensor, environment_contexts, window_distances
from .nn.relatives import RelativesStart
from .nn.relatives_prior import PriorRelativesNet, episode_features

FORMAT_VERSION = 1
WEIGHTS = "relatives_prior"  # <name>.safetensors and <name>.json in gperceiver/weights


@dataclass
class Episode:
    """One context/query split of one trait, ready for the network."""

    d2_cc: torch.Tensor  # (W, C, C) window distances among the context
    d2_qc: torch.Tensor  # (W, Q, C) from each query to the context
    y: torch.Tensor  # (C,) standardised context responses
    target: torch.Tensor  # (Q,) standardised query responses (loss only)
    start: RelativesStart  # REML RKHS on the context
    features: tuple[torch.Tensor, torch.Tensor]


def make_episode(d2, median, relationship: Kernel, context, queries, y, target=None):
    """An :class:`Episode`: ``context`` and ``queries`` rows of ``d2``
    ``(W, N, N)``, ``y`` ``(C,)`` context responses (raw; standardised here with
    their own mean and sd, as is ``target`` ``(Q,)`` when given). Returns the
    episode and the (mean, sd) used."""
    context, queries = np.asarray(context), np.asarray(queries)
    y = np.asarray(y, dtype=np.float64)
    centre, sd = float(y.mean()), float(y.std()) or 1.0
    z = (y - centre) / sd
    start = _start(relationship, relationship.names[context], z, median)
    d2_cc = _tensor(d2[:, context][:, :, context])
    y_t = _tensor(z)
    features = episode_features(d2_cc, y_t, start)
    goal = torch.zeros(len(queries), dtype=torch.float64)
    if target is not None:
        goal = _tensor((np.asarray(target, dtype=np.float64) - centre) / sd)
    d2_qc = _tensor(d2[:, queries][:, :, context])
    return Episode(d2_cc, d2_qc, y_t, goal, start, features), (centre, sd)


def predict(net: PriorRelativesNet, episode: Episode) -> torch.Tensor:
    """Standardised predictions ``(Q,)`` of the episode's queries."""
    return net(episode.d2_cc, episode.y, episode.d2_qc, episode.start, episode.features)


def random_config(rng: np.random.Generator):
    """A breeding population of random size and trait architecture: polygenic
    to a few QTL, with or without dominance and epistasis, inbred (ploidy 1) or
    outbred diploid, one to three environments with random G x E: a
    :class:`~gperceiver.simulate.SimulationConfig`."""
    from .simulate import SimulationConfig  # msprime: only when simulating

    n_markers = int(rng.integers(600, 1500))
    n_chromosomes = int(rng.integers(1, 11))
    population_size = int(np.exp(rng.uniform(np.log(50), np.log(600))))
    length = int(rng.uniform(3e7, 1e8))
    # theta = 4 N mu L of 3 per marker wanted: ample segregating sites, cheaply
    mutation_rate = 3 * n_markers / n_chromosomes / (4 * population_size * length)
    dominance = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.3)
    epistasis = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.7)
    return SimulationConfig(
        n_individuals=int(rng.integers(200, 600)),
        n_markers=n_markers,
        n_chromosomes=n_chromosomes,
        ploidy=int(rng.choice([1, 2])),
        population_size=population_size,
        chromosome_length_bp=length,
        mutation_rate=mutation_rate,
        n_environments=int(rng.integers(1, 4)),
        gxe_correlation=rng.uniform(0.3, 1.0),
        heritability=rng.uniform(0.15, 0.85),
        n_qtl=int(np.exp(rng.uniform(np.log(5), np.log(300)))),
        dominance_variance=dominance,
        epistasis_variance=min(epistasis, 1.0 - dominance),
        n_folds=10,
        seed=int(rng.integers(2**31)),
    )


def unmapped(genotypes: Genotypes, rng: np.random.Generator) -> Genotypes:
    """The markers in a random order on one unplaced chromosome (windows then
    are random marker sets, as for an unmapped panel such as wheat's)."""
    order = rng.permutation(genotypes.n_markers)
    m = genotypes.n_markers
    names = genotypes.markers.names[order]
    markers, _ = MarkerMap.from_columns(["unplaced"] * m, names, np.arange(m))
    alleles = genotypes.alleles[:, order]
    return Genotypes(alleles, genotypes.names, markers, genotypes.n_alleles)


def population_episodes(seed: int, window: int, splits: int = 2) -> list[Episode]:
    """Episodes of one simulated population (seeded): ``splits`` random
    context/query splits of each environment's trait (10-30% queries)."""
    from .simulate import simulate

    rng = np.random.default_rng([seed, 22])
    config = random_config(rng)
    data = simulate(config)
    genotypes = data.genotypes
    if rng.random() < 0.3:
        genotypes = unmapped(genotypes, rng)
    d2, median = window_distances(genotypes, window)
    relationship = Kernel.relationship(genotypes)
    table = data.phenotypes.table
    out = []
    for block in np.unique(table["block"]):
        records = table[table["block"] == block]
        rows = genotypes.index_of(records["name"])
        response = records["response"].to_numpy(dtype=np.float64)
        for _ in range(splits):
            order = rng.permutation(len(rows))
            n_query = int(len(rows) * rng.uniform(0.1, 0.3))
            q, c = order[:n_query], order[n_query:]
            episode, _ = make_episode(
                d2, median, relationship, rows[c], rows[q], response[c], response[q]
            )
            out.append(episode)
    return out


@dataclass(frozen=True)
class PriorSettings:
    """How the prior network is fitted on simulated episodes."""

    populations: int = 400  # simulated populations streamed through training
    validation_populations: int = 12  # fixed populations for model selection
    splits: int = 2  # context/query splits per trait
    hidden: int = 32
    lr: float = 3e-3
    window: int = 64
    evaluate_every: int = 40  # populations between validations
    # one Adam step per population (its episodes' mean loss) with a cosine decay
    # of lr over `populations`; False: a step per episode at a constant lr
    per_population: bool = False
    seconds: float | None = None  # stop streaming after this long
    seed: int = 0


def _loss(net, episodes) -> float:
    with torch.no_grad():
        return float(np.mean([((predict(net, e) - e.target) ** 2).mean().item()
                              for e in episodes]))  # fmt: skip


def _train_steps(net, optimiser, episodes, together: bool) -> None:
    """Adam on the episodes' query losses: one step for all (``together``,
    the mean loss) or one step per episode."""
    groups = [episodes] if together else [[e] for e in episodes]
    for group in groups:
        optimiser.zero_grad()
        losses = [((predict(net, e) - e.target) ** 2).mean() for e in group]
        torch.stack(losses).mean().backward()
        optimiser.step()


def train_prior(settings: PriorSettings, log=print) -> tuple[PriorRelativesNet, list]:
    """Fit the network on a stream of simulated populations (seeds from
    ``settings.seed``); the state of lowest validation loss (its populations
    are never trained on) is kept. Returns the network and a history of
    ``(populations seen, validation loss)``; the loss at 0 is REML RKHS's."""
    torch.manual_seed(settings.seed)
    net = PriorRelativesNet(settings.hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    base = settings.seed * 1_000_000
    validation = [e for k in range(settings.validation_populations)
                  for e in population_episodes(base + k, settings.window)]  # fmt: skip
    history = [(0, _loss(net, validation))]
    best = (history[0][1], copy.deepcopy(net.state_dict()))
    started = time.perf_counter()
    for k in range(settings.populations):
        seed = base + settings.validation_populations + k
        episodes = population_episodes(seed, settings.window, settings.splits)
        if settings.per_population:
            for group in optimiser.param_groups:
                share = k / max(1, settings.populations)
                group["lr"] = settings.lr * 0.5 * (1.0 + np.cos(np.pi * share))
        _train_steps(net, optimiser, episodes, settings.per_population)
        elapsed = time.perf_counter() - started
        last = k + 1 == settings.populations
        timeout = settings.seconds is not None and elapsed > settings.seconds
        if (k + 1) % settings.evaluate_every == 0 or last or timeout:
            history.append((k + 1, _loss(net, validation)))
            log(f"populations {k + 1}: validation loss {history[-1][1]:.4f} "
                f"(RKHS {history[0][1]:.4f}), {elapsed:.0f} s")  # fmt: skip
            if history[-1][1] < best[0]:
                best = (history[-1][1], copy.deepcopy(net.state_dict()))
        if timeout:
            break
    net.load_state_dict(best[1])
    return net, history


def save_prior(net: PriorRelativesNet, path, meta: dict) -> None:
    """``path``.safetensors (the state) and ``path``.json (format version,
    width, ``meta``: how the weights were made), each written atomically."""
    from .checkpoint import save_tensors, write_json

    path = Path(path)
    save_tensors(net.state_dict(), path.with_suffix(".safetensors"))
    info = {"format_version": FORMAT_VERSION, "hidden": net.hidden, **meta}
    write_json(info, path.with_suffix(".json"))


def load_prior(path=None) -> PriorRelativesNet:
    """The network saved at ``path`` (no suffix) by :func:`save_prior`; default:
    the weights shipped in the package."""
    from .checkpoint import load_tensors, read_json

    if path is None:
        root = resources.files("gperceiver") / "weights"
        with resources.as_file(root / f"{WEIGHTS}.json") as info_path:
            info = read_json(info_path)
        with resources.as_file(root / f"{WEIGHTS}.safetensors") as tensor_path:
            state = load_tensors(tensor_path)
    else:
        path = Path(path)
        info = read_json(path.with_suffix(".json"))
        state = load_tensors(path.with_suffix(".safetensors"))
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"relatives-prior weights have format_version "
            f"{info.get('format_version')!r}; this gperceiver reads {FORMAT_VERSION}"
        )
    net = PriorRelativesNet(int(info["hidden"]))
    net.load_state_dict(state)
    return net


@dataclass(frozen=True)
class TuneSettings:
    """The short finetune of ``relatives-prior-tuned``."""

    steps: int = 20  # Adam steps at most
    lr: float = 1e-3  # a tenth of a training step's moves: a nudge, not a refit
    patience: int = 5  # steps without a better inner-validation loss
    episodes: int = 3  # context/query splits of the inner training records
    query_fraction: float = 0.2
    val_fraction: float = 0.1  # inner split held out for early stopping


def finetune_prior(net, d2, median, relationship, rows, y, seed=0,
                   settings: TuneSettings = TuneSettings()):  # fmt: skip
    """A copy of ``net`` finetuned on the records ``rows`` (``(n,)`` rows of
    ``d2``) with responses ``y`` ``(n,)``, and a log (``best_step``).

    ``val_fraction`` of the records (drawn by ``seed``) are held out; the rest
    give ``episodes`` random context/query splits (a query's response never in
    its context) to train on, and are the context that predicts the held-out
    records for early stopping; step 0, the untuned network, is a candidate."""
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(len(rows))
    n_val = max(1, int(round(settings.val_fraction * len(rows))))
    val, inner = order[:n_val], order[n_val:]

    def episode(context, queries):
        return make_episode(d2, median, relationship, rows[context], rows[queries],
                            y[context], y[queries])[0]  # fmt: skip

    check = [episode(inner, val)]
    splits = []
    for _ in range(settings.episodes):
        shuffled = rng.permutation(inner)
        n_query = max(1, int(settings.query_fraction * len(inner)))
        splits.append(episode(shuffled[n_query:], shuffled[:n_query]))
    tuned = copy.deepcopy(net)
    optimiser = torch.optim.Adam(tuned.parameters(), lr=settings.lr)
    best = (_loss(tuned, check), 0, copy.deepcopy(tuned.state_dict()))
    for step in range(1, settings.steps + 1):
        _train_steps(tuned, optimiser, splits, together=True)
        loss = _loss(tuned, check)
        if loss < best[0]:
            best = (loss, step, copy.deepcopy(tuned.state_dict()))
        if step - best[1] >= settings.patience:
            break
    tuned.load_state_dict(best[2])
    return tuned, {"best_step": best[1], "best_loss": best[0]}


def prior_method(relationship_of, fixed_effects_of, absorb_fixed_effects, tune=False):
    """The ``relatives-prior`` method of ``gperceiver evaluate``: per
    environment, the shipped network predicts each validation individual with
    the fold's training individuals (their means per environment) as context;
    nothing is trained. With ``tune`` (``relatives-prior-tuned``) the network
    is first finetuned on those training records (:func:`finetune_prior`,
    seeded by the run's ``seed``). Arguments as for
    :func:`~gperceiver.incontext.relatives_method`."""

    def method(train, validation, genotypes, cache):
        window = 64  # the window the shipped network was trained with
        key = ("relatives_distances", window)
        if key not in cache:
            cache[key] = window_distances(genotypes, window)
        if "relatives_prior" not in cache:
            cache["relatives_prior"] = load_prior(cache.get("relatives_prior_path"))
        d2, median = cache[key]
        net = cache["relatives_prior"]
        fixed = None
        if fixed_effects_of(cache):
            train, fixed = absorb_fixed_effects(train, validation, genotypes, cache)
        genetic = np.full(len(validation), np.nan)
        relationship = relationship_of(genotypes, cache)
        contexts = environment_contexts(train, validation, genotypes)
        for block, here, rows, y, queries in contexts:
            used = net
            if tune:
                seed = int((cache.get("params") or {}).get("seed", 0))
                used, log = finetune_prior(net, d2, median, relationship, rows, y, seed)
                cache.setdefault("relatives_log", []).append(
                    {"fold": cache.get("split"), "block": int(block), **log}
                )
            episode, (centre, sd) = make_episode(
                d2, median, relationship, rows, queries, y
            )
            with torch.no_grad():
                genetic[here] = centre + sd * predict(used, episode).numpy()
        return genetic if fixed is None else (fixed, genetic)

    method.per_block = True
    return method
