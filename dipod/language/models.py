"""The masked diffusion LM interface and the factory that builds a model and its tokenizer from config.

Everything downstream (samplers, ELBO scoring, trainers) sees only ``MaskedDiffusionLM``: a module
called as ``model(input_ids, attention_mask)`` that returns logits for every position, or, with
``positions``, for those alone: ``slice(lo, hi)`` for the sampler's current block, an (N, T) bool mask for
the masked completion tokens that ELBO scoring reads (``masked_token_logprobs(logits_at="masked")``), so the
full-vocabulary logits of the prompt and of the unmasked tokens are never made. Plus the special ids of its
tokenizer and a gradient-checkpointing switch. The built-in tiny transformer and the HF adapter implement it.
A model may also implement ``KVCacheLM`` (the built-in one does): the sampler then reuses keys and values
between decoding steps (the prefix KV cache of block-wise decoding) when asked to.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dipod.language.config import ModelConfig
from dipod.language.lora import apply_lora, default_lora_targets
from dipod.language.model_hf import HFMaskedLM
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM
from dipod.language.tokenizer import CharTokenizer, HFTokenizer, Tokenizer


@runtime_checkable
class MaskedDiffusionLM(Protocol):
    """A bidirectional model that predicts every (masked) token of a sequence in one forward pass."""

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    vocab_size: int

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (N, T) long, attention_mask (N, T) bool (False on padding) or None -> logits (N, T, V);
        at ``positions`` only: a slice gives (N, Tp, V), an (N, T) bool tensor (M, V) at its True positions in
        row-major order (``logits[positions]``). Equal to the full logits there; cheaper where the model can."""
        ...

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: slice | torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass instead of keeping them, whenever gradients are recorded
        (eval mode included)."""
        ...


class KVCache(Protocol):
    """A model's cached keys and values for a batch of rows (opaque to the sampler)."""

    def select(self, rows: torch.Tensor) -> Any:
        """The cache of ``rows`` ((n,) long indices into the batch) only, in that order."""
        ...

    def replace(self, rows: torch.Tensor, other: Any) -> None:
        """Overwrite, in place, the cache of ``rows`` ((n,) long) with the n rows of ``other``."""
        ...


@runtime_checkable
class KVCacheLM(Protocol):
    """A masked diffusion LM that can reuse keys/values between decoding steps (optional; the sampler checks).

    An HF adapter implements it with the wrapped model's ``past_key_values`` where its architecture lets
    the keys/values of chosen positions be replaced (as Fast-dLLM's LLaDA does).
    """

    def cached_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: Any,
        fresh_lo: torch.Tensor | None = None,
        fresh_hi: torch.Tensor | None = None,
        positions: slice | torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits at ``positions`` (N, Tp, V) and the keys/values attended (the cache for the next step).

        cache None: the exact forward pass. Otherwise row n recomputes the keys/values of positions
        fresh_lo[n] <= i < fresh_hi[n] ((N,) long each) in every layer and takes the others from ``cache``.
        ``positions``: a slice, or (N, Tp) long, each row's own; inside the rows' recomputed windows.
        """
        ...


def build_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The tokenizer a ``build_model(cfg)`` model speaks."""
    if cfg.kind == "hf":
        return HFTokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code, mask_token=cfg.mask_token)
    if cfg.path is not None:
        return CharTokenizer.from_pretrained(cfg.path)
    return CharTokenizer(cfg.charset)


def build_model(
    cfg: ModelConfig, *, tokenizer: Tokenizer | None = None, generator: torch.Generator | None = None
) -> MaskedDiffusionLM:
    """Build the model ``cfg`` describes, with LoRA adapters when ``cfg.finetune == "lora"``.

    Args:
        tokenizer: the model's tokenizer (built from ``cfg`` when None); its ids become the model's.
        generator: (CPU) initial weights of a fresh tiny model and of LoRA adapters; None: a fixed seed-0
            generator for the tiny model and peft's own init for adapters.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    if cfg.kind == "hf":
        if not isinstance(tokenizer, HFTokenizer):
            raise TypeError(f"an hf model needs an HFTokenizer, got {type(tokenizer).__name__}")
        model = HFMaskedLM.from_pretrained(
            cfg.path,
            tokenizer=tokenizer,
            trust_remote_code=cfg.trust_remote_code,
            dtype=cfg.dtype,
            logits_shift=cfg.logits_shift,
        )
    elif cfg.path is not None:
        model = TinyMaskedLM.from_pretrained(cfg.path)
        _check_ids(model, tokenizer, Path(cfg.path))
    else:
        tiny = TinyConfig(
            vocab_size=tokenizer.vocab_size,
            mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_seq_len=cfg.max_seq_len,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            dropout=cfg.dropout,
        )
        model = TinyMaskedLM(tiny, generator=generator)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.finetune == "lora":
        targets = cfg.lora_target_modules
        if targets is None:  # the architecture's defaults
            model_type = str(getattr(model.net.config, "model_type", "")) if cfg.kind == "hf" else None
            targets = default_lora_targets(model, model_type)
        apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=targets,
            generator=generator,
        )
    return model


def _check_ids(model: MaskedDiffusionLM, tokenizer: Tokenizer, where: Path) -> None:
    for name in ("mask_token_id", "pad_token_id", "eos_token_id", "vocab_size"):
        if getattr(model, name) != getattr(tokenizer, name):
            raise ValueError(
                f"{where}: model {name} = {getattr(model, name)} but tokenizer {name} = {getattr(tokenizer, name)}"
            )


def max_positions(model: nn.Module) -> int | None:
    """How many positions (prompt + completion) ``model`` can take, where its config says; None if unknown.

    The tiny model's ``max_seq_len``; an HF model's ``max_position_embeddings`` (models with rotary
    positions may run past it with degraded quality; dipod treats it as the limit). LoRA wrappers are seen through.
    """
    for holder in (model, getattr(model, "net", None)):  # the tiny model, or the HF adapter's transformers model
        config = getattr(holder, "config", None)
        for name in ("max_seq_len", "max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def bf16_autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA where ``train.bf16`` asks for it (matrix products in bf16, weights as loaded);
    nothing on a CPU, where bf16 autocast is slower than float32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
