"""Neural network modules: marker embeddings, attention blocks, Perceiver models.

No file I/O, losses or training code lives here.
"""

from gperceiver.nn.attention import (
    CrossAttention,
    CrossBlock,
    FeedForward,
    KeyValues,
    SelfAttention,
    SelfBlock,
    init_weights,
)
from gperceiver.nn.embeddings import MarkerEmbedding, count_targets
from gperceiver.nn.encoder import EncoderIteration, PerceiverEncoder
from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
from gperceiver.nn.window_attention import LocalAttention

__all__ = [
    "CrossAttention",
    "CrossBlock",
    "EncoderIteration",
    "FeedForward",
    "KeyValues",
    "LocalAttention",
    "MaskedMarkerModel",
    "MarkerEmbedding",
    "PerceiverConfig",
    "PerceiverEncoder",
    "SelfAttention",
    "SelfBlock",
    "count_targets",
    "init_weights",
]
