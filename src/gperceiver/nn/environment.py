"""Environment encoder and the phenotype model that predicts any environment with
covariates, including environments absent from training.

Shape letters: B batch, E blocks (environments), T time points, C covariates,
S environment tokens, L latents, D width, K outputs per block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gperceiver.nn.attention import init_weights
from gperceiver.nn.encoder import PerceiverEncoder
from gperceiver.nn.heads import HeadConfig
from gperceiver.nn.norm import RankSyncedBatchNorm1d
from gperceiver.nn.perceiver import PerceiverConfig, marker_embedding


@dataclass
class EnvironmentConfig:
    """Sizes of :class:`EnvironmentEncoder`; the first two come from the data."""

    n_covariates: int  # C
    n_times: int  # T; 1 for static covariates (one row per block)
    # S: a season summarised in windows of ~2-3 weeks; stress at flowering and
    # mid-season water are window-scale signals, daily noise is not.
    env_tokens: int = 8
    # heads of the environment tokens' attention over the genotype latents
    env_heads: int = 4
    # R: genotype-specific slopes on R learned environment gradients (a reaction
    # norm); a handful of gradients explain most GxE in multi-environment trials.
    reaction_rank: int = 8
    # few environments train the encoder (tens): strong dropout on its tokens
    env_dropout: float = 0.2

    def __post_init__(self):
        for name in ("n_covariates", "n_times", "env_tokens", "env_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.reaction_rank < 0:
            raise ValueError(f"reaction_rank must be >= 0, got {self.reaction_rank}")
        if not 0.0 <= self.env_dropout < 1.0:
            raise ValueError(f"env_dropout must be in [0, 1), got {self.env_dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class EnvironmentEncoder(nn.Module):
    """Window summaries (E, S, C) -> environment tokens (E, S, D).

    Static covariates (S = 1) go through an MLP to one token. For a series, a
    small temporal convolution (kernel 3 over windows) mixes neighbouring
    windows; a learned position embedding marks each window.
    """

    def __init__(self, config: EnvironmentConfig, width: int):
        super().__init__()
        c, d = config.n_covariates, width
        self.n_tokens = min(config.env_tokens, config.n_times)
        if config.n_times == 1:
            self.mix = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
        else:
            self.mix = nn.Sequential(
                nn.Conv1d(c, d, 3, padding=1), nn.GELU(), nn.Conv1d(d, d, 1)
            )
        self.position = nn.Parameter(torch.zeros(self.n_tokens, d))
        self.dropout = nn.Dropout(config.env_dropout)
        self.norm = nn.LayerNorm(d)
        self.apply(init_weights)
        for module in self.mix:
            if isinstance(module, nn.Conv1d):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(module.bias)

    def forward(self, windows: Tensor) -> Tensor:
        if windows.shape[1] == 1:
            tokens = self.mix(windows[:, 0])[:, None]  # (E, 1, D)
        else:
            tokens = self.mix(windows.transpose(1, 2)).transpose(1, 2)  # (E, S, D)
        return self.norm(self.dropout(tokens + self.position))


class EnvironmentPhenotypeModel(nn.Module):
    """Genotypes (B, M', P) -> outputs (B, E, K) for every block with covariates.

    ``embed`` and ``encoder`` are laid out as in
    :class:`~gperceiver.nn.heads.PhenotypeModel` (pretrained weights load by
    name). The genotype side gives L latents plus the mean marker token (an
    additive, ridge-like path), batch-normalised across individuals. Three terms
    add up per block:

    - main effect: an MLP of the pooled genotype features, shared by all blocks;
    - cross-attention: the block's environment tokens (queries) read the
      genotype latents; the mean over tokens goes through a linear readout;
    - reaction norm: ``R`` genotype slopes times ``R`` environment gradients,
      linear maps of the pooled features and of the standardised window means
      of the covariates (as the kernel of reaction-norm GBLUP sees them).

    The covariates (``covariates`` buffer (E, T, C)) are part of
    the model, so the forward pass takes genotypes only. A block without
    covariates (``has_covariates`` False) gets learned tokens instead, which
    train only where it has records, as a block embedding would.
    """

    def __init__(
        self,
        config: PerceiverConfig,
        head: HeadConfig,
        environment: EnvironmentConfig,
        relative_pos,
        marker_chrom,
        covariates: Tensor,
        has_covariates: Tensor,
    ):
        super().__init__()
        self.config, self.head_config, self.environment_config = (
            config,
            head,
            environment,
        )
        e, d, k, r = (
            head.n_environments,
            config.width,
            head.n_outputs,
            environment.reaction_rank,
        )
        l1 = config.n_latents + 1
        if covariates.shape != (e, environment.n_times, environment.n_covariates):
            raise ValueError(
                f"covariates {tuple(covariates.shape)} do not match "
                f"(blocks, times, covariates) = ({e}, {environment.n_times}, "
                f"{environment.n_covariates})"
            )
        self.embed = marker_embedding(config, relative_pos, marker_chrom)
        self.encoder = PerceiverEncoder(config)
        self.register_buffer("covariates", covariates.float())
        self.register_buffer("has_covariates", has_covariates.bool())
        self.env_encoder = EnvironmentEncoder(environment, d)
        s = self.env_encoder.n_tokens
        # centre and scale of each window mean over the blocks with covariates (as
        # for a reaction-norm kernel); fixed at construction, saved with the model
        known = self._windows()[has_covariates.bool()]  # (E', S, C)
        zeros = torch.zeros(s, environment.n_covariates)
        self.register_buffer("window_mean", known.mean(0) if len(known) else zeros)
        self.register_buffer(
            "window_sd", known.std(0) if len(known) > 1 else zeros + 1.0
        )
        self.block_tokens = nn.Parameter(torch.zeros(e, s, d))  # blocks w/o covariates
        self.norm = RankSyncedBatchNorm1d(l1 * d)  # whole-batch stats under torchrun
        self.main = nn.Sequential(
            nn.Linear(2 * d, head.head_hidden),
            nn.GELU(),
            nn.Dropout(head.head_dropout),
            nn.Linear(head.head_hidden, k),
        )
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.attention_readout = nn.Sequential(
            nn.Dropout(head.head_dropout), nn.Linear(d, k)
        )
        # the two factors of the reaction norm keep PyTorch's default init: each
        # one's gradient is scaled by the other's weights, so two factors at std
        # 0.02 would start near a saddle point
        self.genotype_slopes = nn.Linear(2 * d, r * k, bias=False)
        n_summary = environment.n_covariates * s
        self.environment_gradients = nn.Linear(n_summary, r, bias=False)
        self.intercept = nn.Parameter(torch.zeros(e, k))
        for module in (
            self.main,
            self.query,
            self.key_value,
            self.attention_readout,
        ):
            module.apply(init_weights)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that pretraining does not provide (trained first when frozen)."""
        return [
            p
            for n, p in self.named_parameters()
            if not n.startswith(("embed.", "encoder."))
        ]

    @torch.no_grad()
    def set_covariates(self, environments: Tensor, values: Tensor) -> None:
        """Give ``blocks`` (E',) the standardised covariates ``values`` (E', T, C).

        Blocks beyond the model's grow the per-block tables with what a block
        without records has after training: zero intercept and zero tokens.
        """
        n_environments = max(
            self.head_config.n_environments, int(environments.max()) + 1
        )
        grow = n_environments - self.head_config.n_environments
        if grow:
            self.covariates = torch.cat(
                [self.covariates, self.covariates.new_zeros(grow, *values.shape[1:])]
            )
            self.has_covariates = torch.cat(
                [self.has_covariates, self.has_covariates.new_zeros(grow)]
            )
            tokens, intercept = self.block_tokens, self.intercept
            self.block_tokens = nn.Parameter(
                torch.cat([tokens, tokens.new_zeros(grow, *tokens.shape[1:])])
            )
            self.intercept = nn.Parameter(
                torch.cat([intercept, intercept.new_zeros(grow, intercept.shape[1])])
            )
            self.head_config = replace(self.head_config, n_environments=n_environments)
        self.covariates[environments] = values.to(self.covariates.dtype)
        self.has_covariates[environments] = True

    def features(self, alleles: Tensor, marker_idx: Tensor, copy=None) -> Tensor:
        """Latents next to the mean marker token, (B, L + 1, D); ``copy`` must
        be None (no panel with covariates)."""
        if copy is not None:
            raise ValueError("environment models read no panel copies")
        tokens = self.embed(alleles, marker_idx)
        return torch.cat([self.encoder(tokens), tokens.mean(1, keepdim=True)], 1)

    def environment_tokens(self) -> Tensor:
        """Tokens (E, S, D) of every block: encoded covariates or learned ones."""
        encoded = self.env_encoder(self.windows())
        return torch.where(
            self.has_covariates[:, None, None], encoded, self.block_tokens
        )

    def _windows(self) -> Tensor:
        """Means of the covariates over S equal time windows, (E, S, C)."""
        return F.adaptive_avg_pool1d(
            self.covariates.transpose(1, 2), self.env_encoder.n_tokens
        ).transpose(1, 2)

    def windows(self) -> Tensor:
        """Window means standardised over environments (E, S, C); zeros (the
        average environment) for blocks without covariates."""
        windows = (self._windows() - self.window_mean) / self.window_sd.clamp(min=1e-6)
        return windows * self.has_covariates[:, None, None]

    def head(self, features: Tensor) -> Tensor:
        """Outputs (B, E, K) from :meth:`features` (B, L + 1, D)."""
        b, l1, d = features.shape
        k, h = self.head_config.n_outputs, self.environment_config.env_heads
        normed = self.norm(features.reshape(b, -1)).view_as(features)
        pooled = torch.cat([normed[:, :-1].mean(1), normed[:, -1]], -1)  # (B, 2D)
        env = self.environment_tokens()  # (E, S, D)
        e, s, _ = env.shape

        q = self.query(env).view(e, s, h, d // h)
        key, value = self.key_value(normed).view(b, l1, 2, h, d // h).unbind(2)
        scores = torch.einsum("eshc,blhc->bhesl", q, key) / (d // h) ** 0.5
        read = torch.einsum("bhesl,blhc->beshc", scores.softmax(-1), value)
        read = read.reshape(b, e, s, d).mean(2)  # (B, E, D)

        slopes = self.genotype_slopes(pooled).view(b, -1, k)  # (B, R, K)
        gradients = self.environment_gradients(self.windows().flatten(1))  # (E, R)
        reaction = torch.einsum("brk,er->bek", slopes, gradients)
        main = self.main(pooled)[:, None]  # (B, 1, K)
        return main + self.attention_readout(read) + reaction + self.intercept

    @torch.no_grad()
    def calibrate(self, features: Tensor) -> None:
        """Normalisation statistics from the features (N, L + 1, D) of the training
        individuals (see :meth:`PhenotypeModel.calibrate`)."""
        flat = features.reshape(len(features), -1)
        self.norm.running_mean.copy_(flat.mean(0))
        self.norm.running_var.copy_(flat.var(0, unbiased=True))

    def forward(self, alleles: Tensor, marker_idx: Tensor, copy=None) -> Tensor:
        return self.head(self.features(alleles, marker_idx, copy))
