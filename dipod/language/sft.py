"""Supervised pre-training of a base policy with the masked-diffusion loss (the per-token -ELBO).

For each (prompt, target completion) pair: draw masks of the completion (``draw_masks``, prompt never
masked), score the masked tokens in one forward pass (``masked_token_logprobs``) and minimise
-ELBO / L (``elbo_from_logprobs`` with the per-token scale). Targets are padded with EOS to the
sampler's ``gen_length`` and every position is trained, as LLaDA's SFT does, so the model learns
where to stop. The result is a base policy that RL then improves.

Reproduce the shipped tiny Sudoku base (``dipod/assets/checkpoints/sudoku_tiny``)::

    python -m dipod.language.sft configs/language/sudoku_sft.yaml --out dipod/assets/checkpoints/sudoku_tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dipod.bounds.masked import draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.config import RunConfig, load_config
from dipod.language.models import build_model, build_tokenizer
from dipod.language.rollout import ExampleSource, encode_prompts, encode_targets, evaluate_policy, resolve_path
from dipod.language.tasks import Task, get_task
from dipod.optim import clip_and_step, loss_is_finite


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
) -> torch.Tensor:
    """Scalar -mean_b ELBO_b / L: the masked-diffusion SFT loss over every completion position.

    Args:
        prompt_ids, prompt_attn: (B, P). completion_ids: (B, L).
    """
    valid = torch.ones_like(completion_ids, dtype=torch.bool)  # (B, L): EOS padding is trained too
    draws = draw_masks(valid, num_draws, generator=generator, scheme="count")
    attention = torch.cat([prompt_attn, valid], dim=1)  # (B, P + L)
    token_logp = masked_token_logprobs(
        model, prompt_ids, completion_ids, draws, mask_id=model.mask_token_id, attention_mask=attention
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
    """Linear warmup to the configured learning rate, then constant."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def train_sft(
    cfg: RunConfig,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[Any, Any, list[dict[str, float]]]:
    """Train a base policy on the task's reference completions; returns (model, tokenizer, history).

    History rows have ``step``, ``loss`` (-ELBO per token), ``grad_norm`` and, at evaluation steps,
    ``eval/*`` greedy-decoding metrics. With ``out_dir`` the model and tokenizer are saved there.
    LoRA adapters (``finetune: lora``) are merged into the base weights at the end
    (``merge_adapters``), so the returned and saved model is a plain model that loads by path.

    Dropout draws from torch's global RNG; training runs inside ``torch.random.fork_rng`` seeded with
    ``cfg.seed``, so a run is reproducible from its config and the caller's RNG state is untouched.
    """
    lang = cfg.language
    if lang is None:
        raise ValueError("SFT needs a language config (domain: language)")
    device = device or cfg.train.device
    task = get_task(lang.task)
    fmt = lang.data.prompt_format
    source = ExampleSource(task, lang.data)
    model_cfg = lang.model.model_copy(update={"path": resolve_path(lang.model.path)})
    tokenizer = build_tokenizer(model_cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(model_cfg, tokenizer=tokenizer, generator=generator).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lang.sft.lr, betas=cfg.optim.betas, weight_decay=lang.sft.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    mask_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    rng_devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(cfg.seed)  # dropout's stream: seeded, and local to this run
        for step in range(lang.sft.steps):
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lang.sft.lr * _lr_factor(step, lang.sft.warmup_steps)
            batch = sft_tensors(
                tokenizer,
                task,
                source.draw(lang.sft.batch_size, rng),
                fmt,
                lang.sampler.gen_length,
                device,
                chat=lang.data.chat_template,
            )
            loss = masked_diffusion_loss(model, *batch, num_draws=lang.sft.elbo_draws, generator=mask_gen)
            row: dict[str, float] = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "time_s": time.perf_counter() - start,
            }
            if loss_is_finite(loss):
                loss.backward()
                _, row["grad_norm"] = clip_and_step(optimizer, params, cfg.optim.max_grad_norm)
            else:
                optimizer.zero_grad(set_to_none=True)
            last = step + 1 == lang.sft.steps
            if last or (lang.sft.eval_every and (step + 1) % lang.sft.eval_every == 0):
                model.eval()
                row.update(
                    evaluate_policy(
                        model, tokenizer, task, source.eval_examples, lang.sampler, fmt,
                        batch_size=lang.eval_batch_size, device=device, chat=lang.data.chat_template,
                    )
                )  # fmt: skip
            history.append(row)
            if log is not None:
                log(row)
    model.eval()
    merge_adapters(model)
    if out_dir is not None:
        out = Path(out_dir)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "sft_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return model, tokenizer, history


def main(argv: list[str] | None = None) -> None:
    """``python -m dipod.language.sft CONFIG.yaml --out DIR [--set key=value ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    def log(row: dict[str, float]) -> None:
        if row["step"] % 50 == 0 or any(k.startswith("eval/") for k in row):
            print(
                json.dumps(
                    {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}
                )
            )

    train_sft(cfg, out_dir=args.out, log=log)


if __name__ == "__main__":
    main()
