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
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

from dipod.advantages import group_advantages
from dipod.bounds.chunked import chunked_draws_backward
from dipod.bounds.masked import MaskDraws, draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.diagnostics.health import health_signals
from dipod.language.batch import RolloutBatch, Samples
from dipod.language.config import LanguageRunConfig
from dipod.language.draws import draw_noise
from dipod.language.lora import frozen_copy, has_adapters, reference_mode
from dipod.language.models import bf16_autocast, build_model, build_tokenizer, max_positions
from dipod.language.probe import language_drift_probe
from dipod.language.rollout import (
    ExampleSource,
    concat_decoded,
    decode_and_score,
    encode_prompts,
    evaluate_policy,
    resolve_path,
)
from dipod.language.tasks import get_task
from dipod.objectives import MaskedScores, dipod_term, elbo_difference_penalty, elbo_k3_kl, get_objective, k3_kl
from dipod.objectives.dipod import advantage_scale
from dipod.objectives.params import reference_weight
from dipod.optim import clip_and_step, loss_is_finite
from dipod.seeding import numpy_rng, torch_generator
from dipod.types import LossOut


class LanguageTrainer:
    """RL post-training of a masked diffusion LM on a task with a verifiable reward (the Trainer protocol)."""

    def __init__(self, cfg: LanguageRunConfig, *, device: str | None = None) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        lang = cfg.language
        self.objective = get_objective("language", cfg.objective.name)
        self.dipod_beta = cfg.objective.dipod_beta
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
        self.model = build_model(model_cfg, tokenizer=self.tokenizer, generator=torch_generator(cfg.seed, "init"))
        self._check_fits()
        self.model.to(self.device).eval()  # no dropout: old and new scores must agree before the first update
        self.reference = None
        self.kl_beta = reference_weight(cfg.objective)
        if self.kl_beta > 0 and not has_adapters(self.model):
            self.reference = frozen_copy(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.train_model = self.accelerator.prepare_model(self.model) if self.world > 1 else self.model
        self.np_rng = numpy_rng(cfg.seed, "prompts")  # prompt draws: identical on every process
        self.generator = torch_generator(cfg.seed, "rollout", self.rank, self.device)
        # The drift probe has its own streams, so training draws are the same whether or not it runs.
        self.probe_generator = torch_generator(cfg.seed, "probe", self.rank, self.device)
        self.probe_rng = numpy_rng(cfg.seed, "probe_prompts")
        self.step = 0
        self.samples = 0
        self._dipod_factor = 1.0  # what dipod_scale multiplies beta by for the current rollout
        self._timer = {"time/score": 0.0}  # scoring time inside the current rollout

    def _check_fits(self) -> None:
        """Settings that would fail at the first step, rejected now: a chat template the tokenizer lacks, and
        prompts + completions longer than the model's positions (checked on the evaluation prompts)."""
        lang = self.cfg.language
        if lang.data.chat_template and not self.tokenizer.chat_template:
            raise ValueError(
                f"language.data.chat_template is true but the tokenizer of {lang.model.path or lang.model.kind!r} "
                "has no chat template; set language.data.chat_template=false"
            )
        limit = max_positions(self.model)
        if limit is None:
            return
        texts = [self.task.prompt(ex, lang.data.prompt_format) for ex in self.source.eval_examples]
        prompt_ids, _ = encode_prompts(self.tokenizer, texts, "cpu", chat=lang.data.chat_template)
        need = prompt_ids.shape[1] + lang.sampler.gen_length
        if need > limit:
            raise ValueError(
                f"prompts of up to {prompt_ids.shape[1]} tokens (the evaluation set's longest) + "
                f"language.sampler.gen_length = {lang.sampler.gen_length} = {need} positions, but the model has "
                f"{limit}; shorten gen_length or the prompts, or use a model with more positions"
            )

    # ------------------------------------------------------------------ rollout

    def sample_groups(self, examples: list, generator: torch.Generator) -> Samples:
        """G completions for each of ``examples`` from the current policy, scored, with group advantages.

        Decoded in the micro-batches the updates use (bounded memory, less padding). Rollouts and the
        drift probe both sample here, each with its own generator.
        """
        lang = self.cfg.language
        fmt, group = lang.data.prompt_format, lang.group_size
        rows = [ex for ex in examples for _ in range(group)]  # G contiguous copies per prompt
        texts = [self.task.prompt(ex, fmt) for ex in rows]
        prompt_ids, prompt_attn = encode_prompts(self.tokenizer, texts, self.device, chat=lang.data.chat_template)
        # Continuous batching (sampler.slots) takes the whole step as one queue; else the updates' micro-batches.
        chunks = [slice(0, len(rows))] if lang.sampler.slots else list(self._micro_batches(len(rows)))
        with self._autocast():
            out = concat_decoded([
                decode_and_score(
                    self.model, self.tokenizer, self.task, rows[mb], prompt_ids[mb], prompt_attn[mb], lang.sampler,
                    fmt, generator, score_eos=lang.score_eos,
                )
                for mb in chunks
            ])  # fmt: skip
        rewards = torch.as_tensor(out.rewards, dtype=torch.float32, device=self.device)  # (B,)
        adv = group_advantages(rewards, group, normalize_std=lang.normalize_advantages)
        return Samples(prompt_ids, prompt_attn, out, rewards, adv)

    def rollout(self) -> tuple[RolloutBatch, dict[str, float]]:
        """Sample this process's completions, score them and store the draws and old scores."""
        lang = self.cfg.language
        examples = self.source.draw(lang.prompts_per_step, self.np_rng)  # global prompts, same on all processes
        per_rank = lang.prompts_per_step // self.world
        s = self.sample_groups(examples[self.rank * per_rank : (self.rank + 1) * per_rank], self.generator)
        valid = s.decoded.valid
        batch = RolloutBatch(
            prompt_ids=s.prompt_ids,
            prompt_attn=s.prompt_attn,
            completion_ids=s.decoded.completion_ids,
            valid=valid,
            adv=s.adv,
            draws=self._draw(valid, s.prompt_attn),
        )
        if self.objective.draws == "one_step" and self.dipod_beta > 0:
            batch.elbo_draws = draw_masks(valid, lang.elbo_draws, generator=self.generator, scheme=lang.elbo_scheme)
        scoring = time.perf_counter()
        self._score_old(batch)
        self._timer["time/score"] = time.perf_counter() - scoring
        self._dipod_factor = self._dipod_scale_factor(batch)
        metrics = {
            **self._health(batch, s.rewards),
            "reward_mean": float(s.rewards.mean()),
            "reward_std": float(s.rewards.std()) if s.rewards.numel() > 1 else 0.0,
            "accuracy": float(s.decoded.accuracy.mean()),
            "effective_tokens": float(valid.sum(-1).float().mean()),
            "nfe": float(s.decoded.nfe),
            "nfe_per_row": float(s.decoded.nfe if s.decoded.row_nfe is None else s.decoded.row_nfe.float().mean()),
        }
        return batch, metrics

    def _health(self, batch: RolloutBatch, rewards: torch.Tensor) -> dict[str, float]:
        """``health/*`` signals of the rollout (``health_signals``): lengths, equal-reward groups, degenerate
        completions, and, from the old scores where the objective has them, token NLL and ELBO per token."""
        if not self.cfg.health.enabled:
            return {}
        logp = batch.old_logp
        elbo = None
        if logp is not None and self.objective.draws == "elbo":
            elbo = elbo_from_logprobs(logp, batch.draws, batch.valid, scale="sum")  # (B,)
        signals = health_signals(
            batch.completion_ids, batch.valid, rewards, self.cfg.language.group_size,
            eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
            token_logp=logp, draw_mask=None if logp is None else batch.draws.mask, elbo=elbo,
            group_identical_is_degenerate=self.cfg.health.group_identical_is_degenerate,
        )  # fmt: skip
        return signals.metrics()

    def _dipod_scale_factor(self, batch: RolloutBatch) -> float:
        """What ``objective.dipod_scale`` multiplies beta by for this rollout (``dipod.objectives.dipod``).

        Computed once over the whole rollout, so micro-batches share it and their sum is the whole batch's term:
        mean divides a sequence-sum ELBO by the rollout's mean completion length (sum_b ELBO_b / sum_b L_b in
        total); normalized multiplies by the rollout's mean |A| (weighted like the objective's mean).
        """
        scale = self.cfg.objective.dipod_scale
        per_token = self.objective.mean_over == "tokens"  # SPG / diffu-GRPO: the ELBO the term uses is per token
        lengths = batch.valid.sum(-1).float()  # (B,)
        if scale == "mean" and not per_token:
            return 1.0 / float(lengths.mean().clamp(min=1.0))
        if scale == "normalized":
            return float(advantage_scale(batch.adv, lengths if per_token else None))
        return 1.0

    def _draw(
        self, valid: torch.Tensor, prompt_attn: torch.Tensor, generator: torch.Generator | None = None
    ) -> MaskDraws:
        """The noise ``self.objective`` scores with (``draw_noise``), from the rollout's stream unless given another."""
        return draw_noise(
            self.objective.draws, valid, prompt_attn, self.cfg.language, generator=generator or self.generator
        )

    def _micro_batches(self, size: int) -> Iterator[slice]:
        step = self.cfg.language.micro_batch_size or size
        for start in range(0, size, step):
            yield slice(start, min(start + step, size))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self.cfg.train.bf16, self.device)

    def token_logprobs(self, model: Any, batch: RolloutBatch, draws: MaskDraws) -> torch.Tensor:
        """(B, K, L) token log-probs of ``model`` under ``draws``: one batched forward pass."""
        with self._autocast():
            return masked_token_logprobs(
                model, batch.prompt_ids, batch.completion_ids, draws, mask_id=self.tokenizer.mask_token_id,
                attention_mask=batch.attention, logits_at=self.cfg.language.score_logits, valid=batch.valid,
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
            if self.kl_beta > 0:
                with reference_mode(self.model, frozen=self.reference) as ref_model:
                    ref.append(self.token_logprobs(ref_model, mb, mb.draws))
        batch.old_logp = torch.cat(old) if old else None
        batch.ref_logp = torch.cat(ref) if ref else None

    # ------------------------------------------------------------------ update

    def _loss(self, mb: RolloutBatch, token_logp: torch.Tensor | None = None) -> LossOut:
        """Objective + DiPOD term + reference term for one micro-batch, from its (B, K, L) token log-probs under
        the stored draws (scored here when not given: one forward pass, two for diffu-GRPO with DiPOD)."""
        ocfg, beta = self.cfg.objective, self.dipod_beta
        if token_logp is None:
            token_logp = self.token_logprobs(self.train_model, mb, mb.draws)
        new = MaskedScores(token_logp, mb.draws, mb.valid)
        old = MaskedScores(mb.old_logp, mb.draws, mb.valid) if mb.old_logp is not None else None
        out = self.objective.fn(new, old, mb.adv, ocfg)
        elbo = out.elbo
        if elbo is None and mb.elbo_draws is not None:  # diffu-GRPO + DiPOD: the documented extra forward pass
            logp = self.token_logprobs(self.train_model, mb, mb.elbo_draws)
            scale = "mean" if self.objective.mean_over == "tokens" else "sum"  # weighted by length below
            elbo = elbo_from_logprobs(logp, mb.elbo_draws, mb.valid, scale=scale)
            out.stats["elbo_mean"] = elbo.detach().mean()
        if beta > 0:  # a per-token ELBO weighted by length for per-token objectives: a token mean
            weights = mb.valid.sum(-1) if self.objective.mean_over == "tokens" else None
            out = out + dipod_term(elbo, beta * self._dipod_factor, weights=weights)
        if self.kl_beta > 0:
            if ocfg.kl_type == "k3":
                out = out + k3_kl(new.token_logp.mean(1), mb.ref_logp.mean(1), mb.valid, self.kl_beta)
            elif ocfg.kl_type == "elbo_k3":
                ref_elbo = elbo_from_logprobs(mb.ref_logp, mb.draws, mb.valid, scale="mean")
                out = out + elbo_k3_kl(new.elbo("mean"), ref_elbo, self.kl_beta)
            else:
                ref_elbo = elbo_from_logprobs(mb.ref_logp, mb.draws, mb.valid, scale=ocfg.elbo_scale)
                out = out + elbo_difference_penalty(elbo, ref_elbo, self.kl_beta)
        return out

    def _chunked_backward(self, mb: RolloutBatch, scale: float, sync: bool) -> LossOut:
        """``_loss`` with its backward in chunks of ``language.draw_chunk_size`` draws (``chunked_draws_backward``);
        the early chunks of a synchronising micro-batch skip DDP's all-reduce, the last one syncs."""
        no_sync = self.train_model.no_sync if self.world > 1 and sync else None
        return chunked_draws_backward(
            lambda draws: self.token_logprobs(self.train_model, mb, draws),
            lambda token_logp: self._loss(mb, token_logp),
            mb.draws,
            chunk_size=self.cfg.language.draw_chunk_size,
            loss_scale=scale,
            no_sync=no_sync,
        )

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
                    if self.cfg.language.draw_chunk_size:  # the same gradients, one chunk of draws' graph at a time
                        out = self._chunked_backward(mb, scale, sync)
                        finite &= loss_is_finite(out.loss)  # a non-finite gradient is caught by clip_and_step
                    else:
                        out = self._loss(mb)
                        loss = out.loss * scale
                        finite &= loss_is_finite(loss)
                        if finite or self.world > 1:
                            # With several processes every one must join DDP's gradient all-reduce: a non-finite
                            # loss is back-propagated too, its gradient makes the averaged one non-finite on
                            # every process, and all of them skip the step together (clip_and_step).
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
        """One policy-improvement step: rollout, then mu inner updates. Returns the run-directory metrics, with the
        step's time split into ``time/rollout`` (sampling and rewards), ``time/score`` (stored draws, old and
        reference scores) and ``time/update`` (the mu inner updates)."""
        self._timer = {"time/score": 0.0}
        started = time.perf_counter()
        batch, rollout_metrics = self.rollout()
        rolled = time.perf_counter()
        update_metrics = self.update(batch)
        timing = {
            "time/rollout": rolled - started - self._timer["time/score"],
            "time/score": self._timer["time/score"],
            "time/update": time.perf_counter() - rolled,
        }
        metrics = {**rollout_metrics, **update_metrics, **timing}
        metrics = self._reduce(metrics)
        self.step += 1
        self.samples += self.cfg.language.prompts_per_step * self.cfg.language.group_size
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
        """Double-drift metrics (``language_drift_probe``) on fresh completions of the current policy.

        ``ceil(drift.probe_size / G)`` prompts with G completions each, sampled, scored and given advantages by
        the rollout's own code (``sample_groups``) and masked by its own draw dispatch, but from the probe's
        random streams: the training trajectory is the same whether or not the monitor runs.
        """
        group = self.cfg.language.group_size
        examples = self.source.draw(math.ceil(self.cfg.drift.probe_size / group), self.probe_rng)
        s = self.sample_groups(examples, self.probe_generator)
        valid = s.decoded.valid
        attention = torch.cat([s.prompt_attn, torch.ones_like(valid)], dim=1)  # (B, P + L)
        with self._autocast():
            metrics = language_drift_probe(
                self.model, self.params, s.prompt_ids, s.decoded.completion_ids, valid, s.adv, self.cfg.objective,
                self._draw(valid, s.prompt_attn, self.probe_generator), mask_id=self.tokenizer.mask_token_id,
                num_orders=self.cfg.drift.num_orders, generator=self.probe_generator, attention_mask=attention,
                max_rows=self.cfg.drift.chunk_rows, logits_at=self.cfg.language.score_logits,
            )  # fmt: skip
        metrics["drift/reward_mean"] = float(s.rewards.mean())
        return metrics

    def set_dipod_beta(self, beta: float) -> None:
        """DiPOD's weight for the following updates (the run loop's adaptive beta)."""
        self.dipod_beta = beta

    def close(self) -> None:
        """Nothing held open."""

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
        }
        if self.world > 1:  # each process samples from its own streams: keep them all (a collective call)
            from accelerate.utils import gather_object

            state["rank_generators"] = gather_object([(self.generator.get_state(), self.probe_generator.get_state())])
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict, *, restore_envs: bool = True) -> None:
        """Restore a ``state_dict()``; the trainer must have been built from the same config (``restore_envs``:
        the Trainer protocol's switch for control; a language trainer has no environments)."""
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
        self.step, self.samples = state["step"], state["samples"]
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])


__all__ = ["LanguageTrainer", "RolloutBatch"]
