"""dipod: reinforcement-learning post-training of diffusion policies, with DiPOD's on-policy ELBO term."""

__version__ = "0.1.0"
