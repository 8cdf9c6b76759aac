"""Shared settings for the pretraining tests."""

# a small encoder that still learns the simulated populations within seconds
TINY = {
    "width": 32,
    "n_latents": 8,
    "self_layers": 1,
    "encode_iters": 1,
    "progress": False,
}

# source for the scripts the kill-and-resume tests run in a subprocess:
# ``slow_steps(delay)`` makes every optimiser step sleep ``delay`` seconds, so a
# SIGKILL lands mid-run (0: full speed)
SLOW_STEPS = """
def slow_steps(delay):
    import time
    from gperceiver import train
    original = train.torch.nn.utils.clip_grad_norm_
    def slow(*a, **k):
        time.sleep(delay)
        return original(*a, **k)
    if delay:
        train.torch.nn.utils.clip_grad_norm_ = slow
"""
