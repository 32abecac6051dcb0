"""Rollout helpers shared by SFT, the RL trainer and evaluation: examples, encoding, decoding and scoring.

Shape legend: B completions (prompts x G), P prompt length, L completion length (gen_length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dipod.bounds.masked import completion_valid_mask
from dipod.language.config import DataConfig, SamplerConfig
from dipod.language.continuous import generate_continuous
from dipod.language.models import MaskedDiffusionLM
from dipod.language.sampler import SampleOut, generate
from dipod.language.tasks import Task, get_task

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | None) -> str | None:
    """``path`` as given if it exists, else relative to the installed package for ``dipod/...`` paths.

    Configs name shipped files as ``dipod/assets/...``; this finds them from any working directory.
    """
    if path is None or Path(path).exists():
        return path
    parts = Path(path).parts
    if parts and parts[0] == "dipod":
        candidate = PACKAGE_ROOT.joinpath(*parts[1:])
        if candidate.exists():
            return str(candidate)
    return path


class ExampleSource:
    """Training prompts (fresh generated examples, or uniform draws from a file) and the fixed eval set.

    Every example it hands out carries the grading choices of the data config (``Task.with_data_options``).
    """

    def __init__(self, task: Task, data: DataConfig) -> None:
        self.task = task
        self.data = data
        self.train_pool = self._graded(task.load(resolve_path(data.train_path))) if data.train_path else None
        if data.eval_path:
            self.eval_examples = self._graded(task.load(resolve_path(data.eval_path))[: data.eval_size])
        else:
            self.eval_examples = self.generate(data.eval_size, np.random.default_rng(data.eval_seed))

    def _graded(self, examples: list[Any]) -> list[Any]:
        options = self.task.with_data_options
        return examples if options is None else [options(ex, self.data) for ex in examples]

    def generate(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` fresh examples from the task's generator with the configured difficulty."""
        if self.task.generate is None:
            raise ValueError(f"task {self.task.name!r} has no generator; set language.data.train_path/eval_path")
        return self._graded(self.task.generate(n, rng, **self.task.generate_options(self.data)))

    def draw(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` training examples: generated, or drawn uniformly with replacement from the file."""
        if self.train_pool is None:
            return self.generate(n, rng)
        idx = rng.integers(len(self.train_pool), size=n)
        return [self.train_pool[i] for i in idx]


def sample(
    model: MaskedDiffusionLM,
    prompt_ids: torch.Tensor,
    cfg: SamplerConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None,
) -> SampleOut:
    """Decode ``prompt_ids`` (B, P) with the settings of a ``SamplerConfig`` and the special ids of ``model``.

    ``generate`` (the whole batch at once), or ``generate_continuous`` over the batch as a queue when
    ``cfg.slots`` is set: pass every prompt of an RL step at once, and ``cfg.slots`` rows are decoded at a time.
    """
    common = dict(
        attention_mask=attention_mask,
        mask_id=model.mask_token_id,
        eos_id=model.eos_token_id,
        gen_length=cfg.gen_length,
        block_length=cfg.block_length,
        steps=cfg.steps,
        remasking=cfg.remasking,
        temperature=cfg.temperature,
        threshold=cfg.threshold,
        stop_at_eos=cfg.stop_at_eos,
        kv_cache=cfg.kv_cache,
        generator=generator,
    )
    if cfg.slots is None:
        return generate(model, prompt_ids, **common)
    return generate_continuous(model, prompt_ids, slots=cfg.slots, **common)


def encode_prompts(
    tokenizer: Any, texts: list[str], device: torch.device | str, *, chat: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids (B, P) and attention mask (B, P) bool, so completions start at one column.

    With ``chat`` each text becomes a user message under the tokenizer's chat template, followed by the
    assistant's turn header (``add_generation_prompt``).
    """
    if chat:
        hf = getattr(tokenizer, "hf", None)
        if hf is None or getattr(hf, "chat_template", None) is None:
            raise ValueError("language.data.chat_template is set but the tokenizer has no chat template")
        texts = [
            hf.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
            for t in texts
        ]
    ids, attn = tokenizer.batch_encode(texts, padding_side="left")
    return ids.to(device), attn.to(device)


def encode_targets(tokenizer: Any, texts: list[str], length: int, device: torch.device | str) -> torch.Tensor:
    """(B, L) completion ids: each target, then EOS filling the rest (LLaDA's SFT padding); cut at L."""
    rows = [(tokenizer.encode(t) + [tokenizer.eos_token_id] * length)[:length] for t in texts]
    return torch.tensor(rows, dtype=torch.long, device=device)


@dataclass
class Decoded:
    """Completions of one batch of prompts, decoded and scored."""

    completion_ids: torch.Tensor
    """(B, L) long."""
    valid: torch.Tensor
    """(B, L) bool: tokens up to and including the first EOS."""
    texts: list[str]
    rewards: np.ndarray
    """(B,) float64."""
    accuracy: np.ndarray
    """(B,) float64."""
    nfe: int
    row_nfe: torch.Tensor | None = None
    """(B,) long: the forward passes each row needed (``SampleOut.row_nfe``)."""


def common_padding(prompt_attn: torch.Tensor) -> int:
    """How many leading prompt columns are padding in every row (left padding shared by the whole batch).

    Dropping them changes nothing for a model that honours the attention mask and removes padding that a
    model which ignores it (stock LLaDA) would attend to; a batch of one prompt's group has none left.

    Args:
        prompt_attn: (B, P) bool, False on left padding.
    """
    real = prompt_attn.any(0)  # (P,)
    return int(real.long().argmax()) if bool(real.any()) else 0


def concat_decoded(parts: list[Decoded]) -> Decoded:
    """The rows of several ``Decoded`` in order; NFE adds up (the parts were decoded one after another)."""
    return Decoded(
        completion_ids=torch.cat([p.completion_ids for p in parts]),
        valid=torch.cat([p.valid for p in parts]),
        texts=[text for p in parts for text in p.texts],
        rewards=np.concatenate([p.rewards for p in parts]),
        accuracy=np.concatenate([p.accuracy for p in parts]),
        nfe=sum(p.nfe for p in parts),
        row_nfe=None if any(p.row_nfe is None for p in parts) else torch.cat([p.row_nfe for p in parts]),
    )


def decode_and_score(
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: list[Any],
    prompt_ids: torch.Tensor,
    prompt_attn: torch.Tensor,
    sampler: SamplerConfig,
    fmt: str,
    generator: torch.Generator | None,
    *,
    score_eos: bool = True,
) -> Decoded:
    """Sample a completion for every prompt row (rows of ``examples`` in order) and score it.

    ``score_eos``: whether ``valid`` includes the first EOS (``LanguageConfig.score_eos``).
    """
    pad = common_padding(prompt_attn)
    prompt_ids, prompt_attn = prompt_ids[:, pad:], prompt_attn[:, pad:]
    with torch.inference_mode():
        out = sample(model, prompt_ids, sampler, attention_mask=prompt_attn, generator=generator)
    completion_ids = out.completion.clone()  # a normal tensor: inference tensors cannot enter autograd later
    before_eos = completion_valid_mask(completion_ids, tokenizer.eos_token_id, include_eos=False)
    valid = completion_valid_mask(completion_ids, tokenizer.eos_token_id) if score_eos else before_eos
    # The text ends at the first EOS: what follows is filler, and must not shift positional answers.
    texts = tokenizer.batch_decode(completion_ids.masked_fill(~before_eos, tokenizer.eos_token_id))
    rewards, accuracy = task.score(texts, examples, fmt)
    return Decoded(completion_ids, valid, texts, rewards, accuracy, out.nfe, out.row_nfe)


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    task: Task | str,
    examples: list[Any],
    sampler: SamplerConfig,
    fmt: str,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    chat: bool = False,
) -> dict[str, float]:
    """Greedy decoding (temperature 0) on a fixed example set: eval/accuracy, eval/reward,
    eval/effective_tokens (valid completion tokens, EOS included) and eval/nfe (forward passes per batch)."""
    task = get_task(task) if isinstance(task, str) else task
    greedy = sampler.model_copy(update={"temperature": 0.0, "remasking": _greedy_remasking(sampler)})
    rewards, accuracy, tokens, nfes = [], [], [], []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompt_ids, prompt_attn = encode_prompts(tokenizer, [task.prompt(ex, fmt) for ex in batch], device, chat=chat)
        out = decode_and_score(model, tokenizer, task, batch, prompt_ids, prompt_attn, greedy, fmt, None)
        rewards.append(out.rewards)
        accuracy.append(out.accuracy)
        tokens.append(out.valid.sum(-1).float().cpu().numpy())
        nfes.append(out.nfe)
    return {
        "eval/accuracy": float(np.concatenate(accuracy).mean()),
        "eval/reward": float(np.concatenate(rewards).mean()),
        "eval/effective_tokens": float(np.concatenate(tokens).mean()),
        "eval/nfe": float(np.mean(nfes)),
    }


def _greedy_remasking(sampler: SamplerConfig) -> str:
    """``sampler.eval_remasking`` if set; else ``remasking``, but random remasking needs randomness, so greedy
    evaluation uses low-confidence remasking instead."""
    if sampler.eval_remasking is not None:
        return sampler.eval_remasking
    return "low_confidence" if sampler.remasking == "random" else sampler.remasking
