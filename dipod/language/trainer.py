"""The RL trainer for masked diffusion LMs: rollouts, group advantages, stored noise, inner updates.

One ``train_step`` reads top to bottom:

1. draw prompts (the same global draw on every process; each takes its shard), G completions per
   prompt with the sampler (inference mode), rewards from the task, A = r - mean_group(r)
   (divided by the group std with ``language.normalize_advantages``);
2. draw and store the noise the objective needs (``Objective.draws``): ELBO masks, SPG's
   block_random masks, or diffu-GRPO's one-step masks; the same draws score the old, new and
   reference policies (common random numbers, so rho == 1 exactly at the first inner update) and
   are kept for all mu inner updates. SPG has no ratio (``Objective.uses_old`` is False): as in its
   release it draws fresh masks for every inner update and needs no old scores;
3. old (and reference) token log-probabilities once, without gradient;
4. mu inner updates: one forward pass per micro-batch gives the new ``MaskedScores``; the loss is the
   registered objective + ``dipod_term(out.elbo, beta)`` + the reference term, gradients are
   accumulated over micro-batches and applied by ``clip_and_step``.

The trainer holds no formulas: bounds, objectives and advantages come from ``dipod.bounds``,
``dipod.objectives`` and ``dipod.advantages``. For diffu-GRPO, whose one-step scores carry no ELBO,
DiPOD needs an ELBO: it is computed from K separate stored ELBO draws, which costs one extra forward
pass per micro-batch (documented in configs/language/sudoku_diffu_grpo.yaml).

Multi-process training goes through accelerate (DDP): ``torchrun --nproc_per_node 2 -m dipod.cli
train CONFIG`` on CPUs (``accelerate launch --cpu`` starts one process unless MPI is set up),
``accelerate launch --num_processes N -m dipod.cli train CONFIG`` on GPUs, with FSDP or DeepSpeed from
an accelerate config. Only rank 0 writes the run directory; a checkpoint keeps every process's random
streams and is resumed with the same number of processes. Every process draws the same prompts, keeps
its shard, and DDP averages gradients, so an update with N processes equals the single-process update
on the same global batch (SPG's per-token mean included: micro-batches and processes are weighted by
their share of the global batch's tokens).

Shape legend: B completions on this process (prompts x G), G group size, P prompt length,
L completion length, K draws.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from dipod.advantages import group_advantages
from dipod.bounds.masked import (
    MaskDraws,
    draw_block_random_masks,
    draw_masks,
    draw_one_step_masks,
    elbo_from_logprobs,
    masked_token_logprobs,
)
from dipod.config import RunConfig, dump_config
from dipod.language.lora import frozen_copy, has_adapters, reference_mode
from dipod.language.models import build_model, build_tokenizer
from dipod.language.rollout import (
    ExampleSource,
    common_padding,
    concat_decoded,
    decode_and_score,
    encode_prompts,
    evaluate_policy,
    resolve_path,
)
from dipod.language.tasks import get_task
from dipod.objectives import MaskedScores, dipod_term, elbo_difference_penalty, get_objective, k3_kl
from dipod.optim import clip_and_step, loss_is_finite
from dipod.types import LossOut

STAT_KEYS = ("loss", "pg_loss", "dipod_reg", "elbo_mean", "ratio_mean", "clip_frac", "approx_kl", "kl_ref")


@dataclass
class RolloutBatch:
    """One process's rollout: completions, advantages, the stored draws and the old policy's scores."""

    prompt_ids: torch.Tensor
    """(B, P) long, left-padded."""
    prompt_attn: torch.Tensor
    """(B, P) bool."""
    completion_ids: torch.Tensor
    """(B, L) long."""
    valid: torch.Tensor
    """(B, L) bool: tokens up to and including the first EOS."""
    adv: torch.Tensor
    """(B,) group-relative advantages."""
    draws: MaskDraws
    """The objective's stored noise (common random numbers for old, new and reference)."""
    old_logp: torch.Tensor | None = None
    """(B, K, L) token log-probs of the rollout policy under ``draws``, no gradient."""
    ref_logp: torch.Tensor | None = None
    """(B, K, L) token log-probs of the reference policy under ``draws`` (kl_beta > 0)."""
    elbo_draws: MaskDraws | None = None
    """Separate ELBO draws when the objective computes no ELBO but DiPOD needs one (diffu-GRPO)."""

    def rows(self, idx: slice) -> RolloutBatch:
        """The sub-batch of rows ``idx`` (a micro-batch), without the prompt padding all of its rows share
        (``common_padding``): a micro-batch of one prompt's group carries no padding at all."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = None if value is None else value[idx]
        pad = common_padding(out["prompt_attn"])
        if pad:
            out["prompt_ids"], out["prompt_attn"] = out["prompt_ids"][:, pad:], out["prompt_attn"][:, pad:]
            for key in ("draws", "elbo_draws"):
                draws = out[key]
                if draws is not None and draws.prompt_mask is not None:  # (b, K, P) -> (b, K, P - pad)
                    out[key] = MaskDraws(draws.mask, draws.weight, draws.t, draws.prompt_mask[..., pad:])
        return RolloutBatch(**out)

    @property
    def attention(self) -> torch.Tensor:
        """(B, P + L) bool attention mask of prompt + completion."""
        return torch.cat([self.prompt_attn, torch.ones_like(self.valid)], dim=1)


class LanguageTrainer:
    """RL post-training of a masked diffusion LM on a task with a verifiable reward (the Trainer protocol)."""

    def __init__(self, cfg: RunConfig, *, device: str | None = None) -> None:
        from accelerate import Accelerator

        if cfg.domain != "language" or cfg.language is None:
            raise ValueError("LanguageTrainer needs a config with domain: language and a language section")
        self.cfg = cfg
        lang = cfg.language
        self.objective = get_objective("language", cfg.objective.name)
        _check_combination(cfg)
        device = device or cfg.train.device
        self.accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.device = self.accelerator.device if self.world > 1 else torch.device(device)
        if lang.prompts_per_step % self.world:
            raise ValueError(
                f"language.prompts_per_step = {lang.prompts_per_step} is not divisible by {self.world} processes"
            )
        self.task = get_task(lang.task)
        self.source = ExampleSource(self.task, lang.data)
        model_cfg = lang.model.model_copy(update={"path": resolve_path(lang.model.path)})
        self.tokenizer = build_tokenizer(model_cfg)
        self.model = build_model(model_cfg, tokenizer=self.tokenizer, generator=torch.Generator().manual_seed(cfg.seed))
        self.model.to(self.device).eval()  # no dropout: old and new scores must agree before the first update
        self.reference = None
        if cfg.objective.kl_beta > 0 and not has_adapters(self.model):
            self.reference = frozen_copy(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.train_model = self.accelerator.prepare_model(self.model) if self.world > 1 else self.model
        self.np_rng = np.random.default_rng(cfg.seed)  # prompt draws: identical on every process
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919 * (self.rank + 1))
        # The drift probe has its own streams, so training draws are the same whether or not it runs.
        self.probe_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 104729 * (self.rank + 1))
        self.probe_rng = np.random.default_rng(cfg.seed + 1)
        self.step = 0
        self.samples = 0
        self.bad_steps = 0

    # ------------------------------------------------------------------ rollout

    def rollout(self) -> tuple[RolloutBatch, dict[str, float]]:
        """Sample this process's completions, score them and store the draws and old scores."""
        lang = self.cfg.language
        fmt, group = lang.data.prompt_format, lang.group_size
        examples = self.source.draw(lang.prompts_per_step, self.np_rng)  # global prompts, same on all processes
        per_rank = lang.prompts_per_step // self.world
        examples = examples[self.rank * per_rank : (self.rank + 1) * per_rank]
        rows = [ex for ex in examples for _ in range(group)]  # G contiguous copies per prompt
        texts = [self.task.prompt(ex, fmt) for ex in rows]
        prompt_ids, prompt_attn = encode_prompts(self.tokenizer, texts, self.device, chat=lang.data.chat_template)
        with self._autocast():  # decoded in the micro-batches the updates use: bounded memory, less padding
            out = concat_decoded([
                decode_and_score(
                    self.model, self.tokenizer, self.task, rows[mb], prompt_ids[mb], prompt_attn[mb], lang.sampler,
                    fmt, self.generator, score_eos=lang.score_eos,
                )
                for mb in self._micro_batches(len(rows))
            ])  # fmt: skip
        rewards = torch.as_tensor(out.rewards, dtype=torch.float32, device=self.device)  # (B,)
        batch = RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_attn=prompt_attn,
            completion_ids=out.completion_ids,
            valid=out.valid,
            adv=group_advantages(rewards, group, normalize_std=lang.normalize_advantages),
            draws=self._draw(out.valid, prompt_attn),
        )
        if self.objective.draws == "one_step" and self.cfg.objective.dipod_beta > 0:
            batch.elbo_draws = draw_masks(out.valid, lang.elbo_draws, generator=self.generator, scheme=lang.elbo_scheme)
        self._score_old(batch)
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "accuracy": float(out.accuracy.mean()),
            "effective_tokens": float(out.valid.sum(-1).float().mean()),
            "nfe": float(out.nfe),
        }
        return batch, metrics

    def _draw(self, valid: torch.Tensor, prompt_attn: torch.Tensor) -> MaskDraws:
        """The noise ``self.objective`` scores with, drawn once per rollout and stored."""
        lang = self.cfg.language
        if self.objective.draws == "elbo":
            return draw_masks(valid, lang.elbo_draws, generator=self.generator, scheme=lang.elbo_scheme)
        if self.objective.draws == "block_random":
            return draw_block_random_masks(
                valid, lang.elbo_draws, generator=self.generator, block_length=lang.spg_block_length,
                prompt_valid=prompt_attn, prompt_mask_prob=lang.prompt_mask_prob,
            )  # fmt: skip
        if self.objective.draws == "one_step":
            return draw_one_step_masks(
                valid, lang.elbo_draws, generator=self.generator,
                prompt_valid=prompt_attn, prompt_mask_prob=lang.prompt_mask_prob,
            )  # fmt: skip
        raise ValueError(f"objective {self.objective.name!r} needs {self.objective.draws!r} draws, not a language kind")

    def _micro_batches(self, size: int) -> Iterator[slice]:
        step = self.cfg.language.micro_batch_size or size
        for start in range(0, size, step):
            yield slice(start, min(start + step, size))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def token_logprobs(self, model: Any, batch: RolloutBatch, draws: MaskDraws) -> torch.Tensor:
        """(B, K, L) token log-probs of ``model`` under ``draws``: one batched forward pass."""
        with self._autocast():
            return masked_token_logprobs(
                model, batch.prompt_ids, batch.completion_ids, draws,
                mask_id=self.tokenizer.mask_token_id, attention_mask=batch.attention,
            )  # fmt: skip

    @torch.no_grad()
    def _score_old(self, batch: RolloutBatch) -> None:
        """Old (and reference) scores once, in the micro-batches the updates will use; none for an
        objective without a ratio (SPG) and no reference term."""
        old, ref = [], []
        for rows in self._micro_batches(batch.adv.shape[0]):
            mb = batch.rows(rows)
            if self.objective.uses_old:
                old.append(self.token_logprobs(self.train_model, mb, mb.draws))
            if self.cfg.objective.kl_beta > 0:
                with reference_mode(self.model, frozen=self.reference) as ref_model:
                    ref.append(self.token_logprobs(ref_model, mb, mb.draws))
        batch.old_logp = torch.cat(old) if old else None
        batch.ref_logp = torch.cat(ref) if ref else None

    # ------------------------------------------------------------------ update

    def _loss(self, mb: RolloutBatch) -> LossOut:
        """Objective + DiPOD term + reference term for one micro-batch (one forward pass, two for
        diffu-GRPO with DiPOD)."""
        ocfg = self.cfg.objective
        new = MaskedScores(self.token_logprobs(self.train_model, mb, mb.draws), mb.draws, mb.valid)
        old = MaskedScores(mb.old_logp, mb.draws, mb.valid) if mb.old_logp is not None else None
        out = self.objective.fn(new, old, mb.adv, ocfg)
        elbo = out.elbo
        if elbo is None and mb.elbo_draws is not None:  # diffu-GRPO + DiPOD: the documented extra forward pass
            logp = self.token_logprobs(self.train_model, mb, mb.elbo_draws)
            scale = "mean" if self.objective.mean_over == "tokens" else ocfg.elbo_scale  # weighted by length below
            elbo = elbo_from_logprobs(logp, mb.elbo_draws, mb.valid, scale=scale)
            out.stats["elbo_mean"] = elbo.detach().mean()
        if ocfg.dipod_beta > 0:  # a per-token ELBO weighted by length for per-token objectives: a token mean
            weights = mb.valid.sum(-1) if self.objective.mean_over == "tokens" else None
            out = out + dipod_term(elbo, ocfg.dipod_beta, weights=weights)
        if ocfg.kl_beta > 0:
            if ocfg.kl_type == "k3":
                out = out + k3_kl(new.token_logp.mean(1), mb.ref_logp.mean(1), mb.valid, ocfg.kl_beta)
            else:
                ref_elbo = elbo_from_logprobs(mb.ref_logp, mb.draws, mb.valid, scale=ocfg.elbo_scale)
                out = out + elbo_difference_penalty(elbo, ref_elbo, ocfg.kl_beta)
        return out

    def _row_weights(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) what each row weighs in the objective's mean (1, or its length for a per-token mean), and the
        total weight over all processes."""
        if self.objective.mean_over == "tokens":
            weights = batch.valid.sum(-1).to(torch.float64)
        else:
            weights = torch.ones(batch.adv.shape[0], dtype=torch.float64, device=self.device)
        total = weights.sum()
        if self.world > 1:
            total = self.accelerator.reduce(total.clone(), reduction="sum")
        return weights, total.clamp(min=1.0)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """mu inner updates on one rollout: gradient accumulation over micro-batches, then a guarded step.

        Each micro-batch's loss (a mean over its rows, or its tokens) is scaled by its share of the whole
        batch's weight, times the number of processes since DDP averages their gradients: the update is
        that of the whole global batch at once.
        """
        size = batch.adv.shape[0]
        weights, global_weight = self._row_weights(batch)  # (B,), ()
        totals: dict[str, float] = defaultdict(float)
        skipped = 0
        for iteration in range(self.cfg.language.num_iterations):
            if iteration > 0 and not self.objective.uses_old:  # SPG: fresh masks for every inner update
                batch.draws = self._draw(batch.valid, batch.prompt_attn)
            finite = True
            chunks = list(self._micro_batches(size))
            for i, rows in enumerate(chunks):
                mb = batch.rows(rows)
                mb_weight = weights[rows].sum()
                share = float(mb_weight / weights.sum().clamp(min=1.0))  # of this process's batch (metrics)
                scale = float(mb_weight * self.world / global_weight)  # of the global batch, x processes (DDP)
                sync = i == len(chunks) - 1 or self.world == 1
                with contextlib.nullcontext() if sync else self.train_model.no_sync():
                    out = self._loss(mb)
                    loss = out.loss * scale
                    finite &= loss_is_finite(loss)
                    if finite or self.world > 1:
                        # With several processes every one must join DDP's gradient all-reduce: a non-finite
                        # loss is back-propagated too, its gradient makes the averaged one non-finite on every
                        # process, and all of them skip the step together (clip_and_step).
                        self.accelerator.backward(loss)
                totals["loss"] += float(out.loss.detach()) * share
                for key, value in out.stats.items():
                    totals[key] += float(value) * share
            if finite:
                applied, grad_norm = clip_and_step(self.optimizer, self.params, self.cfg.optim.max_grad_norm)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                applied, grad_norm = False, math.nan
            skipped += not applied
            totals["grad_norm"] += grad_norm
        mu = self.cfg.language.num_iterations
        metrics = {key: value / mu for key, value in totals.items()}
        metrics.setdefault("dipod_reg", 0.0)
        metrics.setdefault("elbo_mean", math.nan)
        metrics["skipped_updates"] = float(skipped)
        metrics["updates"] = float(mu)
        return metrics

    # ------------------------------------------------------------------ protocol

    def train_step(self) -> dict[str, float]:
        """One policy-improvement step: rollout, then mu inner updates. Returns DESIGN §5 metrics."""
        batch, rollout_metrics = self.rollout()
        metrics = {**rollout_metrics, **self.update(batch)}
        metrics = self._reduce(metrics)
        self.step += 1
        self.samples += self.cfg.language.prompts_per_step * self.cfg.language.group_size
        # Consecutive steps without a finite update; the run loop stops at train.max_bad_steps.
        self.bad_steps = self.bad_steps + 1 if metrics["skipped_updates"] >= metrics["updates"] else 0
        return metrics

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (every process gets the same numbers)."""
        if self.world == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the fixed evaluation set: eval/accuracy, eval/reward, eval/effective_tokens, eval/nfe."""
        lang = self.cfg.language
        with self._autocast():
            return evaluate_policy(
                self.model, self.tokenizer, self.task, self.source.eval_examples, lang.sampler,
                lang.data.prompt_format, batch_size=lang.eval_batch_size, device=self.device,
                chat=lang.data.chat_template,
            )  # fmt: skip

    def drift_probe(self) -> dict[str, float]:
        """Double-drift metrics on fresh completions (drift/elbo, drift/loglik, drift/gap, drift/grad_cosine)."""
        from dipod.diagnostics.drift import language_trainer_drift_probe

        with self._autocast():
            return language_trainer_drift_probe(self, self.probe_generator, self.probe_rng)

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit: trainable weights, optimiser, generators, counters."""
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in trainable},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "np_rng": self.np_rng.bit_generator.state,
            "probe_generator": self.probe_generator.get_state(),
            "probe_rng": self.probe_rng.bit_generator.state,
            "step": self.step,
            "samples": self.samples,
            "bad_steps": self.bad_steps,
            "config": dump_config(self.cfg),
        }
        if self.world > 1:  # each process samples from its own streams: keep them all (a collective call)
            from accelerate.utils import gather_object

            state["rank_generators"] = gather_object([(self.generator.get_state(), self.probe_generator.get_state())])
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the trainer must have been built from the same config."""
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise ValueError(
                f"checkpoint does not match the model: missing {sorted(trainable & set(missing))[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        generators = state.get("rank_generators", [(state["generator"], state["probe_generator"])])
        if len(generators) != self.world:
            raise ValueError(
                f"the checkpoint was written by {len(generators)} process(es); resume it with as many, not {self.world}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(generators[self.rank][0])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.probe_generator.set_state(generators[self.rank][1])
        self.probe_rng.bit_generator.state = state["probe_rng"]
        self.step, self.samples, self.bad_steps = state["step"], state["samples"], state["bad_steps"]
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])


def _check_combination(cfg: RunConfig) -> None:
    """Objective settings this trainer cannot honour, rejected before any work."""
    o = cfg.objective
    if o.name == "spg" and o.kl_beta > 0:
        raise ValueError("objective.kl_beta must be 0 for spg (SPG has no reference term)")
    if o.kl_beta > 0 and o.kl_type == "k3" and o.name != "diffu_grpo":
        raise ValueError("objective.kl_type 'k3' needs per-token one-step scores: use it with diffu_grpo")
    if o.kl_beta > 0 and o.kl_type == "elbo_difference" and o.name == "diffu_grpo":
        raise ValueError("diffu_grpo scores one-step token log-probs, not an ELBO: use objective.kl_type 'k3'")


__all__ = ["LanguageTrainer", "RolloutBatch"]
