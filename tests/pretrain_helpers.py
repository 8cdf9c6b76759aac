"""Shared settings for the pretraining tests."""

# a small encoder that still learns the simulated populations within seconds
TINY = {
    "width": 32,
    "n_latents": 8,
    "self_layers": 1,
    "encode_iters": 1,
    "progress": False,
}
