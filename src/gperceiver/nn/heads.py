"""Phenotype model: the Perceiver encoder plus a head giving every block at once.

Shape letters: B batch, M' markers, P ploidy, L latents, E blocks (environments),
D width, K outputs per block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gperceiver.device import full_precision
from gperceiver.nn.attention import init_weights
from gperceiver.nn.encoder import PerceiverEncoder
from gperceiver.nn.norm import RankSyncedBatchNorm1d
from gperceiver.nn.panel import PanelConfig
from gperceiver.nn.panel_reference import PanelReference, n_genotypes
from gperceiver.nn.perceiver import PerceiverConfig, marker_embedding

HEADS = ("latent", "pool")


@dataclass
class HeadConfig:
    n_environments: int  # E, from the data (max block + 1)
    n_outputs: int = 1  # K per block: 1 for regression/binary/ranking/ordinal scores
    n_classes: int = 0  # ordinal only: classes, giving K - 1 thresholds per block
    # "pool": mean latent + block embedding -> MLP (the seed found it more accurate);
    # "latent": a query per block joins the latents and reads through self-attention
    head: str = "pool"
    head_hidden: int = 64  # hidden width of the pool head's MLP
    head_dropout: float = 0.1
    # regression only: an exact additive marker model (GBLUP by REML on the
    # training individuals, as allele effects) beside the network, which starts at
    # zero and learns what the additive model misses
    additive: bool = True
    # the additive path's kernel: "linear" (GBLUP as allele effects) or "gaussian"
    # (RKHS over the training individuals, which captures some epistasis; it keeps
    # their genotypes, (kernel_rows, kernel_features) floats). None (auto): finetune
    # picks gaussian while those genotypes take <= 50M floats, else linear (a model
    # built directly gets linear); on wheat the gaussian path had the lower
    # inner-validation loss (BENCHMARKS.md)
    additive_kernel: str | None = None
    kernel_rows: int = 0  # gaussian: training individuals kept (set by finetune)
    kernel_features: int = 0  # gaussian: polymorphic allele columns kept
    # panel attention (issue 16): each individual's genotypes copied at every
    # marker from the training individuals (itself excluded) enter its tokens
    # through a learned (G, D) projection, so the latents read enriched tokens;
    # the model keeps the panel (panel_rows individuals, set by finetune) and the
    # copy's windows (panel_window markers) and passes (panel_layers)
    panel: bool = False
    panel_rows: int = 0
    panel_window: int = 32
    panel_layers: int = 2

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.additive_kernel not in (None, "linear", "gaussian"):
            raise ValueError(
                "additive_kernel must be linear, gaussian or None (auto), "
                f"got {self.additive_kernel!r}"
            )
        if self.n_environments < 1 or self.n_outputs < 1:
            raise ValueError("n_blocks and n_outputs must be positive")
        if min(self.panel_window, self.panel_layers) < 1:
            raise ValueError("panel_window and panel_layers must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


class MarkerEffects(nn.Module):
    """A fixed additive marker model per block: ``(B, M', P)`` allele ids -> ``(B, E)``.

    ``table[m, a, e]`` is the effect of one copy of allele id ``a`` at marker ``m``
    in block ``e``; id 0 (missing) holds the frequency-weighted mean effect (mean
    imputation). Output: ``offset[e] + sum over markers and copies of the table``.
    Buffers, not parameters: set from a REML fit, saved with the model.
    """

    def __init__(self, n_markers: int, n_ids: int, n_environments: int):
        super().__init__()
        self.register_buffer("table", torch.zeros(n_markers, n_ids, n_environments))
        self.register_buffer("offset", torch.zeros(n_environments))

    @torch.no_grad()
    def set_environment(
        self, environment: int, intercept, effects, frequencies, ploidy
    ) -> None:
        """Block ``block`` predicts ``intercept + sum (dosage - P p) * effects``
        (``effects``, ``frequencies``: ``(M, A)`` arrays)."""
        effects = torch.as_tensor(effects, dtype=torch.float64)
        mean = (torch.as_tensor(frequencies, dtype=torch.float64) * effects).sum(1)
        self.table[:, 0, environment] = mean.float()
        self.table[:, 1 : effects.shape[1] + 1, environment] = effects.float()
        self.offset[environment] = float(intercept - ploidy * mean.sum())

    def per_marker(self, alleles: Tensor, marker_idx: Tensor) -> Tensor:
        """Each marker's term ``(B, M', E)`` of the output (without the offset)."""
        return self.table[marker_idx[None, :, None], alleles].sum(2)

    def forward(self, alleles: Tensor, marker_idx: Tensor, chunk: int = 65536):
        out = self.offset.expand(alleles.shape[0], -1).clone()
        for start in range(0, alleles.shape[1], chunk):
            ids = alleles[:, start : start + chunk]
            rows = marker_idx[start : start + chunk][None, :, None]
            out += self.table[rows, ids].sum((1, 2))
        return out


class GaussianEffects(nn.Module):
    """A fixed RKHS model per block: ``(B, M, P)`` allele ids -> ``(B, E)``.

    ``offset[e] + sum_r weights[r, e] exp(-|z - z_r|^2 scale[e])`` over the kept
    training individuals ``r``, with ``z`` the centred dosages (missing copies
    mean-imputed) of the ``keep`` allele columns times ``column_scale`` (which
    holds any marker weights), as :class:`~gperceiver.baselines.KernelFit`.
    Buffers, set from REML fits.
    """

    def __init__(self, n_markers, n_alleles, n_environments, n_rows, n_features):
        super().__init__()
        self.register_buffer("frequencies", torch.zeros(n_markers, n_alleles))
        self.register_buffer("keep", torch.zeros(n_features, dtype=torch.long))
        self.register_buffer("column_scale", torch.zeros(n_features))
        self.register_buffer("features", torch.zeros(n_rows, n_features))
        self.register_buffer("weights", torch.zeros(n_rows, n_environments))
        self.register_buffer("scale", torch.zeros(n_environments))
        self.register_buffer("offset", torch.zeros(n_environments))

    @torch.no_grad()
    def set_data(self, features, keep, frequencies, column_scale) -> None:
        """The kept individuals' features (R, F) and how any genotype gets them."""
        self.features.copy_(torch.as_tensor(features))
        self.keep.copy_(torch.as_tensor(np.flatnonzero(keep)))
        self.frequencies.copy_(torch.as_tensor(frequencies))
        self.column_scale.copy_(torch.as_tensor(column_scale))

    @torch.no_grad()
    def set_environment(self, environment: int, rows, fit) -> None:
        """Block ``block`` from a :class:`~gperceiver.baselines.KernelFit` fitted on
        the kept individuals ``rows`` (indices into ``features``)."""
        self.weights[:, environment] = 0.0
        self.weights[torch.as_tensor(rows), environment] = torch.as_tensor(
            fit.weights, dtype=self.weights.dtype
        )
        self.scale[environment] = fit.scale
        self.offset[environment] = fit.intercept

    def centred(self, alleles: Tensor, marker_idx: Tensor) -> Tensor:
        """Centred dosages ``(B, M, A)`` of allele ids ``(B, M, P)`` (missing copies
        at the frequency), the input of :meth:`from_centred`."""
        if marker_idx.dim() != 1 or len(marker_idx) != len(self.frequencies):
            raise ValueError("the Gaussian additive path needs every marker, in order")
        with full_precision(alleles.device):  # d2 cancels: never in bfloat16
            return self._kernel_sum(alleles)

    def _kernel_sum(self, alleles: Tensor) -> Tensor:
        a = self.frequencies.shape[1]
        counts = torch.stack([(alleles == k + 1).sum(-1) for k in range(a)], -1)
        missing = (alleles == 0).sum(-1, keepdim=True)
        ploidy = alleles.shape[-1]
        return counts + (missing - ploidy) * self.frequencies

    def forward(self, alleles: Tensor, marker_idx: Tensor) -> Tensor:
        return self.from_centred(self.centred(alleles, marker_idx))

    def from_centred(self, z: Tensor) -> Tensor:
        """Outputs ``(B, E)`` from centred dosages ``z`` ``(B, M, A)``."""
        z = z.flatten(1)[:, self.keep] * self.column_scale
        d2 = (
            (z**2).sum(1, keepdim=True)
            + (self.features**2).sum(1)[None]
            - 2.0 * z @ self.features.T
        ).clamp_min(0.0)  # (B, R)
        kernel = torch.exp(-d2[..., None] * self.scale)  # (B, R, E)
        return self.offset + (kernel * self.weights).sum(1)


class PhenotypeModel(nn.Module):
    """Genotypes (B, M', P) -> outputs (B, E, K) for every block in one pass.

    ``embed`` and ``encoder`` have the same layout as in
    :class:`~gperceiver.nn.perceiver.MaskedMarkerModel`, so pretrained weights load
    by name. In eval mode rows never mix (each output depends on its own genotype
    only); in training mode the head's batch normalisation uses batch statistics.
    """

    def __init__(
        self, config: PerceiverConfig, head: HeadConfig, relative_pos, marker_chrom
    ):
        super().__init__()
        c, self.config, self.head_config = config, config, head
        self.embed = marker_embedding(config, relative_pos, marker_chrom)
        self.encoder = PerceiverEncoder(config)
        e, d, k = head.n_environments, c.width, head.n_outputs
        # Attention averages over many markers, so the part of the latents that
        # differs between individuals is small next to the shared part; batch
        # normalisation across individuals (running statistics at inference) brings
        # that signal to unit scale before the readout.
        if head.head == "latent":
            self.block_queries = nn.Parameter(torch.randn(e, d) * 0.02)  # (E, D)
            self.norm = RankSyncedBatchNorm1d(e * d)
            self.readout = nn.Sequential(nn.Dropout(head.head_dropout), nn.Linear(d, k))
        else:
            self.block_embed = nn.Embedding(e, d)
            self.norm = RankSyncedBatchNorm1d(2 * d)
            self.readout = nn.Sequential(
                nn.Linear(3 * d, head.head_hidden),
                nn.GELU(),
                nn.Dropout(head.head_dropout),
                nn.Linear(head.head_hidden, k),
            )
        self.intercept = nn.Parameter(torch.zeros(e, k))  # per-block offset
        if head.n_classes > 1:
            # ordered thresholds per block: first, then softplus-positive gaps
            self.threshold_start = nn.Parameter(torch.full((e, 1), -1.0))
            self.threshold_gaps = nn.Parameter(torch.zeros(e, head.n_classes - 2))
        self.readout.apply(init_weights)
        if head.head == "pool":
            init_weights(self.block_embed)
        self.panel = self.panel_embed = None
        if head.panel:
            self.panel = PanelReference(
                PanelConfig(block=head.panel_window, layers=head.panel_layers),
                head.panel_rows,
                marker_chrom,
                c.ploidy,
                c.n_alleles,
            )
            # zero at first: the model starts as one without the panel (and a
            # pretrained encoder's cached features stay exact while the head trains)
            self.panel_embed = nn.Linear(n_genotypes(c.ploidy, c.n_alleles), d, False)
            nn.init.zeros_(self.panel_embed.weight)
        self.additive = None
        if head.additive and head.additive_kernel == "gaussian":
            self.additive = GaussianEffects(
                c.n_markers, c.n_alleles, e, head.kernel_rows, head.kernel_features
            )
        elif head.additive:
            self.additive = MarkerEffects(c.n_markers, c.n_alleles + 1, e)
        if head.additive:
            final = self.readout[-1]  # the network starts as "no correction"
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that pretraining does not provide (trained first when frozen);
        the panel's fitted attention is never trained here."""
        return [
            p
            for n, p in self.named_parameters()
            if not n.startswith(("embed.", "encoder.", "panel."))
        ]

    def panel_copy(self, genotypes, rows) -> Tensor | None:
        """The panel copies ``(B, M, G)`` of genotype ``rows`` on the model's
        device (:meth:`PanelReference.copy_rows`), None without a panel."""
        if self.panel is None:
            return None
        return self.panel.copy_rows(genotypes, rows).to(self.intercept.device)

    def tokens(self, alleles: Tensor, marker_idx: Tensor, copy=None) -> Tensor:
        """Marker tokens (B, M', D); with a panel, plus the projection of the
        copies ``copy`` (B, M', G) of the same markers (required then)."""
        tokens = self.embed(alleles, marker_idx)
        if self.panel_embed is None:
            return tokens
        if copy is None:
            raise ValueError(
                "this model reads panel copies: pass copy=model.panel_copy(...)"
            )
        return tokens + self.panel_embed(copy.to(tokens.dtype))

    def features(self, alleles: Tensor, marker_idx: Tensor, copy=None) -> Tensor:
        """What the head reads: block latents (B, E, D) for the latent head; for the
        pool head, pooled latents next to pooled tokens (B, 2D). ``copy``: the
        panel copies (B, M', G) of a model with a panel (see :meth:`tokens`).

        The pooled tokens are a skip path around the encoder: with per-marker allele
        vectors their mean is an additive (ridge-like) marker model, which the
        latents then refine.
        """
        tokens = self.tokens(alleles, marker_idx, copy)
        if self.head_config.head == "latent":
            latents = self.encoder(tokens, extra_latents=self.block_queries[None])
            return latents[:, -self.head_config.n_environments :]  # (B, E, D)
        return torch.cat([self.encoder(tokens).mean(1), tokens.mean(1)], -1)  # (B, 2D)

    def head(self, features: Tensor) -> Tensor:
        """Outputs (B, E, K) from :meth:`features`."""
        b, e = features.shape[0], self.head_config.n_environments
        normed = self.norm(features.reshape(b, -1)).view_as(features)
        if self.head_config.head == "latent":
            out = self.readout(normed)
        else:
            environments = self.block_embed.weight.expand(b, -1, -1)  # (B, E, D)
            out = self.readout(
                torch.cat([normed[:, None].expand(-1, e, -1), environments], -1)
            )
        return out + self.intercept

    @torch.no_grad()
    def calibrate(self, features: Tensor) -> None:
        """Set the normalisation statistics exactly from features (N, ...) of the
        training individuals ("precise batch norm"): running averages lag behind
        features that change quickly during training."""
        flat = features.reshape(len(features), -1).float()
        self.norm.running_mean.copy_(flat.mean(0))
        self.norm.running_var.copy_(flat.var(0, unbiased=True))

    def forward(self, alleles: Tensor, marker_idx: Tensor, copy=None) -> Tensor:
        out = self.head(self.features(alleles, marker_idx, copy))
        if self.additive is not None:
            out = out + self.additive(alleles, marker_idx)[..., None]
        return out

    def thresholds(self) -> Tensor:
        """Ordinal cut points (E, C - 1), increasing along the last axis."""
        gaps = F.softplus(self.threshold_gaps)
        return torch.cat(
            [self.threshold_start, self.threshold_start + gaps.cumsum(-1)], -1
        )
