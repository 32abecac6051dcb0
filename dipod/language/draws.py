"""The one noise-draw dispatch of the language domain: the masks an objective scores with.

Training (stored with each rollout, reused by every inner update) and the drift probe (fresh draws on
its probe batch) both call ``draw_noise``, so the probe always measures the estimator training uses.

Shape legend: B completions, K draws, P prompt length, L completion length.
"""

from __future__ import annotations

import torch

from dipod.bounds.masked import MaskDraws, draw_block_random_masks, draw_masks, draw_one_step_masks
from dipod.language.config import LanguageConfig


def draw_noise(
    kind: str,
    valid: torch.Tensor,
    prompt_attn: torch.Tensor,
    lang: LanguageConfig,
    *,
    generator: torch.Generator,
    num_draws: int | None = None,
) -> MaskDraws:
    """K masking draws of ``kind`` (``Objective.draws``) for completions ``valid`` (B, L) behind prompts (B, P).

    elbo: the configured ELBO scheme (``language.elbo_scheme``), prompt never masked; block_random: SPG's
    blocks of ``language.spg_block_length``; one_step: diffu-GRPO's fully masked completion. The last two
    mask prompt tokens with probability ``language.prompt_mask_prob``. K defaults to ``language.elbo_draws``.
    """
    k = num_draws or lang.elbo_draws
    if kind == "elbo":
        return draw_masks(valid, k, generator=generator, scheme=lang.elbo_scheme)
    if kind == "block_random":
        return draw_block_random_masks(
            valid, k, generator=generator, block_length=lang.spg_block_length,
            prompt_valid=prompt_attn, prompt_mask_prob=lang.prompt_mask_prob,
        )  # fmt: skip
    if kind == "one_step":
        return draw_one_step_masks(
            valid, k, generator=generator, prompt_valid=prompt_attn, prompt_mask_prob=lang.prompt_mask_prob
        )
    raise ValueError(f"no language noise draws of kind {kind!r} (expected elbo, block_random or one_step)")
