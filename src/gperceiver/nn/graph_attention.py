"""Graph attention over the marker table: each marker reads itself and the markers
that link to it (LD neighbours, genes, pathways).

Shape letters: M markers, E edges, H heads, D width (D / H per head), C markers
whose incoming edges are processed together.

The graph is an edge list (``src`` -> ``dst``, sorted by ``dst``) with a weight
per edge; attention is a softmax over each marker's incoming edges plus itself,
computed with ``index_add`` (no dense M x M matrix, no graph library). An edge's
score gets ``slope_h * log(weight)`` added (the marker itself has weight 1), so
with ``slope`` 1 the attention prior is proportional to the weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gperceiver.nn.attention import FeedForward, init_weights, recompute
from gperceiver.nn.dropout import Dropout


class GraphAttention(nn.Module):
    """``x + W_o GAT(LN(x))`` then a feed-forward block, on a table (M, D).

    Destinations are processed ``chunk`` markers at a time (recomputed in backward
    with ``checkpoint``), so memory beyond the table is O(edges of one chunk * D).
    Relabelling the markers (and the edges with them) relabels the output rows:
    nothing depends on a marker's index.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        ff_mult: int = 2,
        dropout: float = 0.0,
        chunk: int = 65536,
        checkpoint: bool | None = True,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.chunk, self.checkpoint = heads, chunk, checkpoint
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = Dropout(dropout)
        self.ff = FeedForward(width, ff_mult, dropout)
        self.apply(init_weights)
        self.slope = nn.Parameter(torch.ones(heads))  # per head, on log(weight)

    def _attend(
        self,
        q: Tensor,
        kv: Tensor,
        src: Tensor,
        dst: Tensor,
        bias: Tensor,
        lo: int,
    ) -> Tensor:
        """Attention output (C, H, D / H) of markers ``lo..lo+C-1`` (queries ``q``
        (C, H, D / H)), whose incoming edges are ``src -> dst`` (``dst`` counted
        from ``lo``); ``kv`` (M, 2, H, D / H) holds every marker's key and value."""
        n = q.shape[0]
        scale = q.shape[-1] ** -0.5
        own_k, own_v = kv[lo : lo + n].unbind(1)
        k, v = kv.index_select(0, src).unbind(1)  # (E, H, D / H) each
        own = (q * own_k).sum(-1) * scale  # (C, H): a marker reading itself
        edge = (q.index_select(0, dst) * k).sum(-1) * scale + bias  # (E, H)
        with torch.no_grad():  # the softmax shift cancels; no gradient needed
            top = own.scatter_reduce(
                0, dst[:, None].expand_as(edge), edge, "amax", include_self=True
            )
        own_e, edge_e = (own - top).exp(), (edge - top[dst]).exp()
        total = own_e.index_add(0, dst, edge_e)  # (C, H)
        out = (own_e[..., None] * own_v).index_add(
            0, dst, edge_e[..., None] * v
        )  # (C, H, D / H)
        return out / total[..., None]

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
        """Refined table (M, D) of ``x`` (M, D); edges (E,) sorted by ``dst``."""
        m, d = x.shape
        qkv = self.qkv(self.norm(x)).view(m, 3, self.heads, -1)
        q, kv = qkv[:, 0], qkv[:, 1:]  # (M, H, D / H), (M, 2, H, D / H)
        bias = weight.log()[:, None] * self.slope  # (E, H)
        bounds = torch.searchsorted(
            dst, torch.arange(0, m + self.chunk, self.chunk, device=dst.device)
        ).tolist()
        parts = []
        for i, lo in enumerate(range(0, m, self.chunk)):
            hi = min(lo + self.chunk, m)
            a, b = bounds[i], bounds[i + 1]
            # keys and values of every marker: edges come from anywhere in the map
            args = (q[lo:hi], kv, src[a:b], dst[a:b] - lo, bias[a:b], lo)
            if recompute(self.checkpoint, x):
                parts.append(checkpoint(self._attend, *args, use_reentrant=False))
            else:
                parts.append(self._attend(*args))
        attended = torch.cat(parts).reshape(m, d)
        return self.ff(x + self.dropout(self.out(attended)))
