"""Config section for language runs (masked diffusion LMs)."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dipod.config import RunConfigBase
from dipod.objectives import objective_params, with_objective_name
from dipod.objectives.ratio_ppo import FpoParams

DEFAULT_CHARSET = string.digits + string.ascii_letters + string.punctuation + " \n"
"""Characters of the built-in tokenizer: printable ASCII, enough for Sudoku, Countdown and short prompts."""


class ModelConfig(BaseModel):
    """Which masked diffusion LM to build and how it is fine-tuned."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["tiny", "hf"] = "tiny"
    """tiny: the built-in bidirectional transformer; hf: a transformers model from a local path."""
    path: str | None = None
    """Local directory: an HF model + tokenizer (kind hf, required), or a saved tiny model (kind tiny, optional)."""
    trust_remote_code: bool = False
    """hf: run the model's own code (LLaDA, Dream) through AutoModel; False loads AutoModelForMaskedLM."""
    mask_token: str | None = None
    """hf: mask token string when neither the model config nor the tokenizer names one (e.g. '<|mdm_mask|>')."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """hf: weight dtype."""
    logits_shift: bool | None = None
    """hf: logits at i predict token i + 1 (Dream, adapted from an AR model); None decides from model_type."""
    charset: str = DEFAULT_CHARSET
    """tiny: characters of the built-in tokenizer (special tokens are added)."""
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    max_seq_len: int = Field(256, ge=2)
    """tiny: learned positions; prompt + completion must fit."""
    dropout: float = Field(0.0, ge=0, lt=1)
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (tiny: torch.utils.checkpoint
    per block; hf: transformers' own switch): less activation memory for about one more forward pass of time."""
    finetune: Literal["full", "lora"] = "full"
    """full: every weight trains, the reference is a frozen copy; lora: peft adapters, the reference is
    the model with adapters disabled."""
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = None
    """Module names that get adapters; None: the tiny model's attention and MLP projections, or peft's
    defaults for an hf model's architecture (BERT: query value; LLaMA: q_proj v_proj). LLaDA, which peft
    does not know, needs them named (q_proj k_proj v_proj attn_out ff_proj up_proj ff_out)."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.kind == "hf" and not self.path:
            raise ValueError("model.kind is 'hf' but model.path is not set (a local directory)")
        if self.kind == "tiny" and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd = {self.n_embd} must be divisible by model.n_head = {self.n_head}")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError("model.lora_target_modules is empty (leave it unset for the architecture's defaults)")
        return self


class SamplerConfig(BaseModel):
    """How completions are decoded (LLaDA low-confidence remasking, random remasking, or threshold)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    remasking: Literal["low_confidence", "random", "threshold"] = "low_confidence"
    """low_confidence / random: a fixed linear schedule of `steps`; threshold: unmask every token whose
    confidence reaches `threshold` (at least one per step), Fast-dLLM style."""
    gen_length: int = Field(64, ge=1)
    block_length: int = Field(32, ge=1)
    """Semi-autoregressive blocks: gen_length must be a multiple."""
    steps: int = Field(32, ge=1)
    """Denoising steps over the whole completion (fixed-schedule remasking); a multiple of the number of blocks."""
    temperature: float = Field(0.0, ge=0)
    """Gumbel-max temperature; 0 is greedy."""
    threshold: float = Field(0.9, gt=0, le=1)
    """threshold remasking: confidence needed to unmask a token."""
    stop_at_eos: bool = True
    """Stop once every row has decoded an EOS with everything before it decoded; fill the rest with EOS."""
    eval_remasking: Literal["low_confidence", "threshold"] | None = None
    """Greedy evaluation decoding; None: as ``remasking`` (low_confidence when that is random)."""
    slots: int | None = Field(None, ge=1)
    """Continuous batching: rows decoded at once, a finished row's slot going to the next waiting prompt,
    each row with its own noise stream; None: every row of a batch decoded together (the batch waits for
    its slowest row)."""
    kv_cache: Literal["none", "prefix", "dual"] = "none"
    """Keys/values reused between decoding steps: none (exact); prefix (Fast-dLLM: the prompt's and
    finished blocks', refreshed at each block's first step); dual (also the masked blocks after the current
    one). Approximate; needs a model implementing ``KVCacheLM`` (the tiny one does), else exact."""

    @model_validator(mode="after")
    def _consistent(self) -> SamplerConfig:
        if self.gen_length % self.block_length:
            raise ValueError(
                f"sampler.gen_length = {self.gen_length} is not a multiple of "
                f"sampler.block_length = {self.block_length}"
            )
        blocks = self.gen_length // self.block_length
        fixed = [key for key in ("remasking", "eval_remasking") if getattr(self, key) not in (None, "threshold")]
        if fixed and self.steps % blocks:
            raise ValueError(
                f"sampler.steps = {self.steps} is not a multiple of the number of blocks ({blocks}), "
                f"which sampler.{fixed[0]} = {getattr(self, fixed[0])!r} needs"
            )
        return self


class DataConfig(BaseModel):
    """Where a language run's prompts come from and in which format they are shown."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    train_path: str | None = None
    """Training examples (.jsonl, .json, .csv, .parquet in the task's public format); None generates fresh
    examples every step (sudoku, countdown only)."""
    eval_path: str | None = None
    """Evaluation examples; None generates a fixed set from ``eval_seed`` (sudoku, countdown only)."""
    eval_size: int = Field(64, ge=1)
    """Evaluation examples used (the first ``eval_size`` of the file, or this many generated)."""
    eval_seed: int = 1234
    """Seed of the generated evaluation set, apart from the run seed so every run sees the same set."""
    prompt_format: Literal["compact", "d1"] = "compact"
    """compact: bare task strings for the tiny model (Sudoku: 16 digits -> 16 digits); d1: the
    reasoning/answer XML format for real LLMs."""
    chat_template: bool = False
    """Wrap each prompt as a user message with the tokenizer's chat template (instruction-tuned HF models
    such as LLaDA-8B-Instruct, as d1 does); the built-in tokenizer has none."""
    sudoku_min_blanks: int = Field(6, ge=1, le=13)
    sudoku_max_blanks: int = Field(10, ge=1, le=13)
    countdown_numbers: int = Field(3, ge=2, le=5)
    countdown_max_number: int = Field(9, ge=1)
    countdown_max_target: int = Field(99, ge=1)
    sort_numbers: int = Field(12, ge=2, le=32)
    """Sorting: numbers per list (two digits each: a completion of 3 * n - 1 characters)."""
    gsm8k_grading: Literal["exact", "numeric"] = "exact"
    """GSM8K correctness: exact (the release: the answer string equals the text after '####') or numeric
    (the same number: '$18', '18.0', '+18', '018', '1200' vs '1,200' count; '1,8' and non-ASCII digits do not)."""
    gsm8k_xml_count: Literal["d1", "spg"] = "d1"
    """GSM8K's XML-count reward as in the release's d1 code (its FPO runs), or as in its SPG code, whose copy
    penalises the text after the opening answer tag rather than after the closing one (its SPG runs)."""
    math500_grading_timeout_s: float = Field(2.0, gt=0, le=600)
    """MATH500: wall-clock limit of one answer's grading (math-verify in a child process); past it the
    answer is graded wrong."""

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.sudoku_min_blanks > self.sudoku_max_blanks:
            raise ValueError(
                f"data.sudoku_min_blanks = {self.sudoku_min_blanks} > data.sudoku_max_blanks = {self.sudoku_max_blanks}"
            )
        return self


class SFTConfig(BaseModel):
    """Supervised pre-training of a base policy with the masked-diffusion loss (-ELBO per token)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    elbo_draws: int = Field(1, ge=1)
    """Masking draws per example and step."""
    eval_every: int = Field(0, ge=0)
    """Greedy-decode the evaluation set every this many steps; 0 only at the end."""


class LanguageConfig(BaseModel):
    """Model, task, sampler and rollout settings of a language run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = "sudoku"
    """Task name: sudoku | countdown | gsm8k | math500."""
    group_size: int = Field(6, ge=2)
    """G completions per prompt (group-relative advantages need at least 2)."""
    prompts_per_step: int = Field(4, ge=1)
    num_iterations: int = Field(4, ge=1)
    """mu: inner updates per rollout, reusing the stored ELBO draws."""
    elbo_draws: int = Field(4, ge=1)
    """K Monte-Carlo masking draws per completion."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The masked diffusion LM and its tokenizer."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """Rollout decoding."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training and evaluation examples."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Supervised pre-training (``dipod sft``)."""
    normalize_advantages: bool = False
    """Divide group advantages by the group's reward std (GRPO). The release does not (d1, SPG); the tiny
    configs do, so that DiPOD's beta = 0.05 weighs against advantages of unit scale, as it does against
    GSM8K's 0-4.5 rewards, rather than against Sudoku's 0-1 fractions."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Completions per forward/backward pass (gradient accumulation); None: all of a process's batch."""
    score_logits: Literal["masked", "all"] = "masked"
    """Where scoring computes the output head: at the masked completion tokens only (the same log-probs; a
    fraction of the memory and time with a wide vocabulary), or at every position (the reference path)."""
    draw_chunk_size: int | None = Field(None, ge=1)
    """ELBO draws per forward pass of an inner update (``dipod.bounds.chunked.chunked_draws_backward``): the
    same loss and gradients at the activation memory of this many draws instead of K, for one extra forward
    pass without graph per chunk but the last. None (or >= elbo_draws): all K draws in one pass."""
    elbo_scheme: Literal["count", "round", "bernoulli", "d1"] = "count"
    """How the ELBO draws pick the masked tokens (``dipod.bounds.masked.draw_masks``)."""
    score_eos: bool = True
    """Whether a completion's first EOS is scored (masked, and counted in L) with the tokens before it. The
    release's FPO scores only the tokens before it; what follows the EOS is never scored."""
    spg_block_length: int = Field(32, ge=1)
    """SPG block_random masking: block length."""
    spg_block_choice: Literal["permutation", "uniform"] = "permutation"
    """SPG block_random masking: which block each draw masks. permutation: the release's ``randperm(blocks) % valid``
    (draws of one completion never repeat a block until all were used); uniform: independent uniform choices."""
    prompt_mask_prob: float = Field(0.15, ge=0, lt=1)
    """diffu-GRPO / SPG: probability of masking each prompt token in the stored draws."""
    eval_batch_size: int = Field(64, ge=1)
    """Prompts decoded together in ``evaluate``."""

    @model_validator(mode="after")
    def _task_data(self) -> LanguageConfig:
        from dipod.language.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"language.task = {self.task!r} is not a task; choose one of: {', '.join(sorted(TASKS))}")
        if TASKS[self.task].generate is None:
            for key in ("train_path", "eval_path"):
                if getattr(self.data, key) is None:
                    raise ValueError(f"language.data.{key} must be set: task {self.task!r} has no generator")
        return self


LanguageObjective = objective_params("language")
"""The params model of a registered language objective, chosen by ``objective.name``."""


class LanguageRunConfig(RunConfigBase):
    """A language run: a masked diffusion LM trained on a task with a verifiable reward."""

    domain: Literal["language"] = "language"
    objective: LanguageObjective = Field(default_factory=FpoParams)  # type: ignore[valid-type]
    """The policy-gradient method and its settings (``name`` picks the params model)."""
    language: LanguageConfig
    """Model, task, sampler and rollout settings."""

    @model_validator(mode="after")
    def _chunks_need_one_scoring_pass(self) -> LanguageRunConfig:
        if self.language.draw_chunk_size and self.objective.name == "diffu_grpo" and self.objective.dipod_beta > 0:
            raise ValueError(
                "language.draw_chunk_size chunks one scoring pass, but diffu_grpo with objective.dipod_beta > 0 "
                "scores twice (one-step and ELBO draws); unset draw_chunk_size or dipod_beta"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_objective(cls, data: Any) -> Any:
        return with_objective_name(data, "language", "fpo")
