"""Supervised pre-training of a base policy with the masked-diffusion loss (the per-token -ELBO).

For each (prompt, target completion) pair: draw masks of the completion (``draw_masks``, prompt never
masked), score the masked tokens in one forward pass (``masked_token_logprobs``) and minimise
-ELBO / L (``elbo_from_logprobs`` with the per-token scale). Targets are padded with EOS to the
sampler's ``gen_length`` and every position is trained, as LLaDA's SFT does, so the model learns
where to stop. The result is a base policy that RL then improves.

``SFTTrainer`` is a Trainer (``dipod.types.Trainer``): ``dipod sft`` runs it through the one run loop, with
checkpoints and resume. Reproduce the shipped tiny Sudoku base (``dipod/assets/checkpoints/sudoku_tiny``)::

    dipod sft configs/language/sudoku_sft.yaml --out dipod/assets/checkpoints/sudoku_tiny
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dipod.bounds.masked import draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.language.config import LanguageRunConfig
from dipod.language.models import bf16_autocast, build_model, build_tokenizer
from dipod.language.rollout import ExampleSource, encode_prompts, encode_targets, evaluate_policy, resolve_path
from dipod.language.tasks import Task, get_task
from dipod.optim import clip_and_step, loss_is_finite
from dipod.seeding import numpy_rng, torch_generator


def sft_tensors(
    tokenizer: Any,
    task: Task,
    examples: list[Any],
    fmt: str,
    gen_length: int,
    device: torch.device | str,
    *,
    chat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt ids (B, P), prompt attention mask (B, P) and EOS-padded target completions (B, L)."""
    texts = [task.prompt(ex, fmt) for ex in examples]
    prompt_ids, prompt_attn = encode_prompts(tokenizer, texts, device, chat=chat)
    targets = [task.target(ex, fmt) for ex in examples]
    return prompt_ids, prompt_attn, encode_targets(tokenizer, targets, gen_length, device)


def masked_diffusion_loss(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_attn: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    num_draws: int,
    generator: torch.Generator,
    logits_at: Literal["masked", "all"] = "all",
) -> torch.Tensor:
    """Scalar -mean_b ELBO_b / L: the masked-diffusion SFT loss over every completion position.

    Args:
        prompt_ids, prompt_attn: (B, P). completion_ids: (B, L).
        logits_at: where the output head runs (``masked_token_logprobs``): everywhere (any logits function), or
            only at the masked completion tokens the loss reads (models built by dipod; ``SFTTrainer`` follows
            ``language.score_logits``, masked by default); the loss is the same.
    """
    valid = torch.ones_like(completion_ids, dtype=torch.bool)  # (B, L): EOS padding is trained too
    draws = draw_masks(valid, num_draws, generator=generator, scheme="count")
    attention = torch.cat([prompt_attn, valid], dim=1)  # (B, P + L)
    token_logp = masked_token_logprobs(
        model,
        prompt_ids,
        completion_ids,
        draws,
        mask_id=model.mask_token_id,
        attention_mask=attention,
        logits_at=logits_at,
    )  # (B, K, L)
    return -elbo_from_logprobs(token_logp, draws, valid, scale="mean").mean()


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into their base weights and remove them, in place; returns ``model``.

    Each peft-wrapped layer (``apply_lora`` injects them) merges W + scale * B @ A into its base layer,
    which then replaces the wrapper, so the model has its original module names and no ``lora_*``
    weights: it saves and loads as a plain model and computes the adapted function (up to float
    rounding). Every weight is trainable afterwards, as in a freshly loaded model. A model without
    adapters is returned unchanged.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if not wrapped:
        return model
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, layer.get_base_layer())
    model.requires_grad_(True)
    return model


def _lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def sft_run_config(cfg: LanguageRunConfig) -> LanguageRunConfig:
    """``cfg`` with the run loop's schedule taken from its ``language.sft`` section (steps, evaluation) and no
    drift probe: what ``dipod sft`` trains."""
    sft = cfg.language.sft
    train = cfg.train.model_copy(update={"steps": sft.steps, "eval_every": sft.eval_every})
    return cfg.model_copy(update={"train": train, "drift": cfg.drift.model_copy(update={"every": 0})})


class SFTTrainer:
    """Supervised pre-training as a Trainer: one ``train_step`` is one gradient step on a fresh batch.

    Dropout draws from torch's global RNG, which the run loop seeds from ``cfg.seed`` and keeps in every
    checkpoint, so a run is reproducible from its config and resumes bit for bit.
    """

    def __init__(self, cfg: LanguageRunConfig, *, device: str | None = None) -> None:
        lang = cfg.language
        self.cfg = cfg
        self.device = torch.device(device or cfg.train.device)
        self.task = get_task(lang.task)
        self.source = ExampleSource(self.task, lang.data)
        model_cfg = lang.model.model_copy(update={"path": resolve_path(lang.model.path)})
        self.tokenizer = build_tokenizer(model_cfg)
        self.model = build_model(model_cfg, tokenizer=self.tokenizer, generator=torch_generator(cfg.seed, "init"))
        self.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lang.sft.lr, betas=cfg.optim.betas, weight_decay=lang.sft.weight_decay
        )
        self.rng = numpy_rng(cfg.seed, "prompts")
        self.mask_generator = torch_generator(cfg.seed, "rollout", device=self.device)
        self.step = 0
        self.samples = 0

    def train_step(self) -> dict[str, float]:
        """One step of -ELBO per token on ``sft.batch_size`` fresh (prompt, target) pairs."""
        lang = self.cfg.language
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lang.sft.lr * _lr_factor(self.step, lang.sft.warmup_steps)
        batch = sft_tensors(
            self.tokenizer, self.task, self.source.draw(lang.sft.batch_size, self.rng), lang.data.prompt_format,
            lang.sampler.gen_length, self.device, chat=lang.data.chat_template,
        )  # fmt: skip
        with bf16_autocast(self.cfg.train.bf16, self.device):
            loss = masked_diffusion_loss(
                self.model, *batch, num_draws=lang.sft.elbo_draws, generator=self.mask_generator,
                logits_at=lang.score_logits,
            )  # fmt: skip
        metrics = {"loss": float(loss.detach()), "updates": 1.0, "skipped_updates": 1.0}
        if loss_is_finite(loss):
            loss.backward()
            applied, metrics["grad_norm"] = clip_and_step(self.optimizer, self.params, self.cfg.optim.max_grad_norm)
            metrics["skipped_updates"] = float(not applied)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.step += 1
        self.samples += lang.sft.batch_size
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the fixed evaluation set: eval/accuracy, eval/reward, eval/effective_tokens, eval/nfe."""
        lang = self.cfg.language
        with bf16_autocast(self.cfg.train.bf16, self.device):
            return evaluate_policy(
                self.model, self.tokenizer, self.task, self.source.eval_examples, lang.sampler,
                lang.data.prompt_format, batch_size=lang.eval_batch_size, device=self.device,
                chat=lang.data.chat_template,
            )  # fmt: skip

    def drift_probe(self) -> dict[str, float]:
        """SFT fits reference completions, not its own samples: there is no policy gradient to probe."""
        raise ValueError("supervised pre-training has no drift probe (drift.every must be 0)")

    def set_dipod_beta(self, beta: float) -> None:
        """SFT has no DiPOD term."""
        raise ValueError("supervised pre-training has no DiPOD term (adaptive_beta must be unset)")

    def export(self, out_dir: str | Path) -> nn.Module:
        """Merge LoRA adapters into the weights (in place: call it once training is over) and save the plain model
        and its tokenizer where ``dipod train`` loads them."""
        model = merge_adapters(self.model)
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return model

    def state_dict(self) -> dict:
        """Weights, optimiser, random streams and counters."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "mask_generator": self.mask_generator.get_state(),
            "step": self.step,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict, *, restore_envs: bool = True) -> None:
        """Restore ``state_dict()`` (``restore_envs`` is the Trainer protocol's; SFT has no environments)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.mask_generator.set_state(state["mask_generator"])
        self.step, self.samples = state["step"], state["samples"]

    def close(self) -> None:
        """Nothing held open."""
