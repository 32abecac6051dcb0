"""Masked diffusion language models: models, tokenizers, samplers, tasks, SFT and the RL trainer."""
