"""The language RL trainer: common random numbers, updates, determinism, resume, every objective, configs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from dipod.bounds.masked import draw_masks
from dipod.config import ConfigError
from dipod.language.rollout import common_padding, encode_prompts
from dipod.language.trainer import LanguageTrainer, RolloutBatch
from dipod.runs.config import load_config
from tests.language.language_helpers import tiny_config
from tests.runs.cli_helpers import untimed

ROOT = Path(__file__).resolve().parents[2]
DESIGN_KEYS = {
    "reward_mean",
    "loss",
    "pg_loss",
    "dipod_reg",
    "elbo_mean",
    "ratio_mean",
    "clip_frac",
    "grad_norm",
    "skipped_updates",
}


def same(a: dict, b: dict) -> bool:
    """Equal metrics (NaN equal to NaN), wall-clock figures aside."""
    a, b = untimed(a), untimed(b)
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


@pytest.mark.parametrize("micro", [None, 3])
def test_rho_is_one_at_the_first_inner_update(micro):
    trainer = LanguageTrainer(tiny_config(language={"micro_batch_size": micro}))
    batch, _ = trainer.rollout()
    for rows in trainer._micro_batches(batch.adv.shape[0]):
        mb = batch.rows(rows)
        out = trainer._loss(mb)
        assert float(out.stats["ratio_mean"]) == 1.0  # exp(ELBO_new - ELBO_old) == 1 exactly: same draws, same weights
        new = trainer.token_logprobs(trainer.train_model, mb, mb.draws)
        assert torch.equal(new, mb.old_logp)


@pytest.mark.parametrize(
    "objective",
    [{"name": "fpo"}, {"name": "spg"}, {"name": "diffu_grpo", "kl_beta": 0.04, "kl_type": "k3"}],
    ids=["fpo", "spg", "diffu_grpo"],
)
def test_micro_batches_give_the_whole_batch_gradient(objective):
    """Accumulating micro-batches equals one pass over the batch, also for the per-token means of SPG and
    diffu-GRPO (with DiPOD and, for diffu-GRPO, the k3 term) over completions of unequal lengths."""
    source = LanguageTrainer(tiny_config(objective=objective, language={"num_iterations": 1}))
    rollout, _ = source.rollout()
    lengths = torch.tensor([3, 16, 9, 12, 5, 16, 7, 11])
    rollout.valid = torch.arange(rollout.valid.shape[1])[None, :] < lengths[:, None]  # unequal lengths
    rollout.draws = source._draw(rollout.valid, rollout.prompt_attn)
    if rollout.elbo_draws is not None:
        rollout.elbo_draws = draw_masks(rollout.valid, 2, generator=source.generator)
    grads = []
    for micro in (None, 3):
        trainer = LanguageTrainer(
            tiny_config(objective=objective, language={"micro_batch_size": micro, "num_iterations": 1})
        )
        batch = copy.deepcopy(rollout)
        trainer._score_old(batch)
        trainer.optimizer.step = lambda *a, **k: None  # keep the gradients, change nothing
        trainer.optimizer.zero_grad = lambda *a, **k: None
        trainer.update(batch)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_step_changes_every_parameter_and_reports_design_keys(tiny_cfg):
    trainer = LanguageTrainer(tiny_cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train_step()
    assert set(metrics) >= DESIGN_KEYS
    assert trainer.step == 1 and trainer.samples == 2 * 4
    assert metrics["skipped_updates"] == 0 and math.isfinite(metrics["loss"])
    assert metrics["dipod_reg"] != 0.0
    for name, p in trainer.model.named_parameters():
        assert not torch.equal(before[name], p), f"parameter {name} has not changed"


def test_same_seed_same_metrics_and_other_seed_differs(tiny_cfg):
    a, b = LanguageTrainer(tiny_cfg), LanguageTrainer(tiny_cfg)
    for _ in range(2):
        assert same(a.train_step(), b.train_step())
    c = LanguageTrainer(tiny_config(seed=4))
    assert not same(LanguageTrainer(tiny_cfg).train_step(), c.train_step())


def test_resume_is_bit_for_bit(tiny_cfg):
    import copy

    full = LanguageTrainer(tiny_cfg)
    full.train_step()
    state = copy.deepcopy(full.state_dict())
    expected = [full.train_step(), full.train_step()]
    resumed = LanguageTrainer(tiny_cfg)
    resumed.load_state_dict(state)
    assert (resumed.step, resumed.samples) == (1, 8)
    for want in expected:
        assert same(resumed.train_step(), want)
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    "objective",
    [
        {"name": "fpo", "dipod_beta": 0.0},
        {"name": "fpo", "dipod_beta": 0.05, "kl_beta": 0.04},
        {"name": "fpo", "dipod_beta": 0.0, "kl_beta": 0.04, "kl_type": "elbo_k3"},
        {"name": "spg", "dipod_beta": 0.05, "eubo_beta": 1.0, "elbo_scale": "mean"},
        {"name": "diffu_grpo", "dipod_beta": 0.0, "kl_beta": 0.04, "kl_type": "k3"},
        {"name": "diffu_grpo", "dipod_beta": 0.05},
    ],
)
def test_every_objective_steps(objective):
    trainer = LanguageTrainer(tiny_config(objective=objective, language={"micro_batch_size": 4}))
    metrics = trainer.train_step()
    assert metrics["skipped_updates"] == 0
    for key in ("loss", "pg_loss", "ratio_mean", "clip_frac", "grad_norm"):
        assert math.isfinite(metrics[key]), key
    assert (metrics["dipod_reg"] != 0.0) == (objective["dipod_beta"] > 0)
    if objective.get("kl_beta"):
        assert "kl_ref" in metrics
    if objective["name"] != "diffu_grpo" or objective["dipod_beta"] > 0:
        assert math.isfinite(metrics["elbo_mean"])


def _count_forwards(trainer: LanguageTrainer) -> list[int]:
    calls = [0]
    trainer.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_dipod_term_adds_no_forward_pass():
    counts = []
    for beta in (0.0, 0.05):
        trainer = LanguageTrainer(tiny_config(objective={"dipod_beta": beta}))
        calls = _count_forwards(trainer)
        trainer.train_step()
        counts.append(calls[0])
    assert counts[0] == counts[1]


def test_spg_scores_no_old_policy_and_draws_fresh_masks_each_inner_update(monkeypatch):
    cfg = tiny_config(objective={"name": "spg", "dipod_beta": 0.0}, language={"num_iterations": 3})
    trainer = LanguageTrainer(cfg)
    batch, _ = trainer.rollout()
    assert batch.old_logp is None and batch.ref_logp is None
    seen = []
    loss = trainer._loss
    monkeypatch.setattr(trainer, "_loss", lambda mb: seen.append(mb.draws.mask.clone()) or loss(mb))
    calls = _count_forwards(trainer)
    trainer.update(batch)
    assert len(seen) == calls[0] == 3  # one forward pass per inner update, none for old scores
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])

    fpo = LanguageTrainer(tiny_config(objective={"name": "fpo"}, language={"num_iterations": 3}))
    batch, _ = fpo.rollout()
    draws = batch.draws.mask.clone()
    fpo.update(batch)
    assert batch.old_logp is not None and torch.equal(batch.draws.mask, draws)  # kept: common random numbers


def test_lora_with_reference_term_trains_only_adapters():
    cfg = tiny_config(
        objective={"kl_beta": 0.04},
        language={"model": {"finetune": "lora", "lora_r": 4, "lora_alpha": 8.0}},
    )
    trainer = LanguageTrainer(cfg)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    metrics = trainer.train_step()
    assert math.isfinite(metrics["kl_ref"])
    for n, p in trainer.model.named_parameters():
        if n in frozen:
            assert torch.equal(frozen[n], p), n
    assert all("lora_" in k for k in trainer.state_dict()["model"])


def test_evaluate_is_greedy_and_repeatable(tiny_cfg):
    trainer = LanguageTrainer(tiny_cfg)
    first = trainer.evaluate()
    assert set(first) == {"eval/accuracy", "eval/reward", "eval/effective_tokens", "eval/nfe"}
    assert trainer.evaluate() == first
    assert 0.0 <= first["eval/accuracy"] <= 1.0


def test_invalid_combinations_fail_before_work():
    # Each objective accepts only its own settings: SPG has no reference term, FPO's is the ELBO difference,
    # diffu-GRPO's the k3 KL.
    with pytest.raises(ValueError, match=r"unknown key `objective.kl_beta`"):
        tiny_config(objective={"name": "spg", "kl_beta": 0.1})
    with pytest.raises(ValueError, match=r"`objective.kl_type` = 'elbo_difference'.*'k3'"):
        tiny_config(objective={"name": "diffu_grpo", "kl_beta": 0.1, "kl_type": "elbo_difference"})
    with pytest.raises(ValueError, match=r"`objective.kl_type` = 'k3'.*'elbo_difference'"):
        tiny_config(objective={"name": "fpo", "kl_beta": 0.1, "kl_type": "k3"})  # k3 is diffu-GRPO's token term


CONFIGS = sorted((ROOT / "configs" / "language").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.domain == "language"


def test_paper_scale_config_matches_release_hyperparameters():
    cfg = load_config(ROOT / "configs/language/llada8b_gsm8k_fpo_dipod.yaml")
    lang, o = cfg.language, cfg.objective
    assert (lang.model.kind, lang.model.finetune, lang.model.lora_r, lang.model.lora_alpha) == ("hf", "lora", 128, 64)
    assert lang.model.lora_dropout == 0.05 and lang.model.trust_remote_code
    assert (o.name, o.dipod_beta, o.clip_low, o.clip_high, o.kl_beta) == ("fpo", 0.05, 0.5, 0.5, 0.04)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay, cfg.optim.max_grad_norm) == (
        3e-6,
        (0.9, 0.99),
        0.1,
        0.2,
    )
    assert (lang.group_size, lang.prompts_per_step, lang.num_iterations, lang.elbo_draws) == (6, 16, 12, 4)
    s = lang.sampler
    assert (s.gen_length, s.block_length, s.steps, s.temperature) == (256, 32, 128, 0.9)
    assert cfg.train.bf16 and cfg.seed == 42 and lang.data.prompt_format == "d1"
    assert lang.elbo_scheme == "d1" and not lang.score_eos  # L = the tokens before the first EOS (paper.md §1a)


@pytest.mark.parametrize("score_eos", [True, False])
def test_score_eos_decides_whether_the_first_eos_is_scored(monkeypatch, score_eos):
    import dipod.language.rollout as rollout
    from dipod.language.sampler import SampleOut

    trainer = LanguageTrainer(tiny_config(language={"score_eos": score_eos}))
    eos, digit = trainer.tokenizer.eos_token_id, trainer.tokenizer.encode("1")[0]
    completion = torch.full((8, 16), digit)
    completion[:4, 5] = eos  # four rows end after 5 tokens, the others run to the end
    completion[0, 0] = eos  # and one row is empty

    def fixed_sample(model, prompt_ids, cfg, *, attention_mask=None, generator=None):
        tokens = torch.cat([prompt_ids, completion[: prompt_ids.shape[0]]], dim=1)
        return SampleOut(tokens, prompt_ids.shape[1], 1, torch.ones(prompt_ids.shape[0], dtype=torch.long))

    monkeypatch.setattr(rollout, "sample", fixed_sample)
    batch, _ = trainer.rollout()
    lengths = batch.valid.sum(-1).tolist()
    assert lengths == ([1, 6, 6, 6] if score_eos else [0, 5, 5, 5]) + [16] * 4
    assert not (batch.draws.mask & ~batch.valid[:, None]).any()  # (B, K, L): draws mask scored tokens only
    assert math.isfinite(trainer.update(batch)["loss"])  # an empty completion scores 0 and breaks nothing


def test_unknown_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: language\nlanguage:\n  task: sudoku\n  data:\n    eval_sise: 3\n")
    with pytest.raises(ConfigError, match=r"language\.data\.eval_sise"):
        load_config(bad)


def test_trains_from_a_data_file_in_the_d1_format():
    """Countdown prompts read from the shipped JSONL, shown in the d1 format (long prompts, left padding)."""
    from dipod.language.config import DEFAULT_CHARSET

    cfg = tiny_config(
        language={
            "task": "countdown",
            "model": {"charset": DEFAULT_CHARSET, "max_seq_len": 512},
            "data": {
                "prompt_format": "d1",
                "train_path": "dipod/assets/data/countdown.jsonl",
                "eval_path": "dipod/assets/data/countdown.parquet",
                "eval_size": 3,
            },
        }
    )
    trainer = LanguageTrainer(cfg)
    assert len(trainer.source.eval_examples) == 3
    metrics = trainer.train_step()
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["reward_mean"] <= 1.0


def test_completion_text_ends_at_the_first_eos(tiny_cfg, monkeypatch):
    import dipod.language.rollout as rollout
    from dipod.language.sampler import SampleOut

    trainer = LanguageTrainer(tiny_cfg)
    tok = trainer.tokenizer
    ex = trainer.source.eval_examples[0]
    ids = torch.tensor([[*tok.encode(ex.solution[:8]), tok.eos_token_id, *tok.encode(ex.solution[8:15])]])

    def fixed(model, prompt_ids, cfg, *, attention_mask, generator):
        return SampleOut(
            tokens=torch.cat([prompt_ids, ids], 1), prompt_length=prompt_ids.shape[1], nfe=1, row_nfe=torch.ones(1)
        )

    monkeypatch.setattr(rollout, "sample", fixed)
    prompt_ids, attn = rollout.encode_prompts(tok, [ex.puzzle], "cpu")
    out = rollout.decode_and_score(trainer.model, tok, trainer.task, [ex], prompt_ids, attn, None, "compact", None)
    assert out.texts == [ex.solution[:8]]
    assert out.valid.sum() == 9  # eight digits and the EOS


def test_drift_probe_reports_and_leaves_training_unchanged(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"drift": tiny_cfg.drift.model_copy(update={"probe_size": 4, "num_orders": 4})})
    plain, probed = LanguageTrainer(cfg), LanguageTrainer(cfg)
    probe = probed.drift_probe()
    assert {"drift/elbo", "drift/loglik", "drift/gap", "drift/grad_cosine"} <= set(probe)
    assert all(math.isfinite(probe[k]) for k in ("drift/elbo", "drift/loglik", "drift/gap"))
    assert same(plain.train_step(), probed.train_step())


def test_drift_probe_samples_through_the_rollout_code_with_its_own_streams(monkeypatch):
    trainer = LanguageTrainer(tiny_config(drift={"probe_size": 4}))
    calls = []
    real = trainer.sample_groups

    def spy(examples, generator):
        calls.append((len(examples), generator))
        return real(examples, generator)

    monkeypatch.setattr(trainer, "sample_groups", spy)
    trainer.drift_probe()
    assert calls == [(1, trainer.probe_generator)]  # ceil(4 / G=4) prompts, the probe's generator
    trainer.train_step()
    assert calls[-1] == (trainer.cfg.language.prompts_per_step, trainer.generator)


def test_chat_template_wraps_prompts_and_is_required(tiny_cfg):
    from dipod.language.rollout import encode_prompts

    trainer = LanguageTrainer(tiny_cfg)
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(trainer.tokenizer, ["12"], "cpu", chat=True)

    class FakeHF:
        chat_template = "user/assistant"

        def apply_chat_template(self, messages, *, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "9" + messages[0]["content"] + "9"

    trainer.tokenizer.hf = FakeHF()
    ids, attn = encode_prompts(trainer.tokenizer, ["12", "345"], "cpu", chat=True)
    assert [trainer.tokenizer.decode(row) for row in ids] == ["9129", "93459"]
    assert attn.sum(-1).tolist() == [4, 5]


def test_eval_set_is_fixed_across_run_seeds():
    a = LanguageTrainer(tiny_config(seed=1)).source.eval_examples
    b = LanguageTrainer(tiny_config(seed=2)).source.eval_examples
    assert a == b and len(a) == 8


def test_non_finite_loss_skips_every_update_and_keeps_weights(tiny_cfg):
    trainer = LanguageTrainer(tiny_cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batch, _ = trainer.rollout()
    batch.adv = torch.full_like(batch.adv, math.nan)
    metrics = trainer.update(batch)
    assert metrics["skipped_updates"] == metrics["updates"] == tiny_cfg.language.num_iterations
    for n, p in trainer.model.named_parameters():
        assert torch.equal(before[n], p), n


def test_micro_batches_drop_the_prompt_padding_their_rows_share():
    trainer = LanguageTrainer(tiny_config(objective={"name": "diffu_grpo"}, language={"prompt_mask_prob": 0.5}))
    texts = ["1234", "1234", "12", "12"]  # two prompts of different lengths, two rows each
    prompt_ids, prompt_attn = encode_prompts(trainer.tokenizer, texts, "cpu")
    completion_ids = torch.randint(4, trainer.tokenizer.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(completion_ids, dtype=torch.bool)
    batch = RolloutBatch(
        prompt_ids, prompt_attn, completion_ids, valid, torch.zeros(4), trainer._draw(valid, prompt_attn)
    )
    assert common_padding(prompt_attn) == 0 and common_padding(prompt_attn[2:]) == 2
    short = batch.rows(slice(2, 4))
    assert short.prompt_attn.all() and short.prompt_ids.shape == (2, 2)
    assert torch.equal(short.draws.prompt_mask, batch.draws.prompt_mask[2:, :, 2:])
    assert torch.equal(batch.rows(slice(0, 2)).prompt_ids, prompt_ids[:2])
    full = trainer.token_logprobs(trainer.model, batch, batch.draws)[2:]  # (2, K, L), scored with padding
    torch.testing.assert_close(trainer.token_logprobs(trainer.model, short, short.draws), full, rtol=1e-5, atol=1e-5)


def test_chunked_draws_and_lean_scoring_give_the_reference_update():
    """draw_chunk_size and score_logits change memory and time, not the update (float64 on the tiny model)."""
    torch.set_default_dtype(torch.float64)
    try:
        reference = LanguageTrainer(tiny_config(language={"score_logits": "all"}))
        lean = LanguageTrainer(tiny_config(language={"draw_chunk_size": 1}))
        reference.train_step()
        lean.train_step()
    finally:
        torch.set_default_dtype(torch.float32)
    for a, b in zip(reference.params, lean.params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_step_time_is_split_into_rollout_score_and_update(tiny_cfg):
    metrics = LanguageTrainer(tiny_cfg).train_step()
    assert all(metrics[k] > 0 for k in ("time/rollout", "time/score", "time/update"))
    assert metrics["nfe_per_row"] > 0


def test_what_would_fail_at_the_first_step_fails_before_it():
    # prompts (16 digits + specials) + gen_length 32 > the tiny model's 32 positions
    with pytest.raises(ValueError, match=r"language.sampler.gen_length = 32 = \d+ positions, but the model has 32"):
        LanguageTrainer(tiny_config(language={"sampler": {"gen_length": 32, "block_length": 32, "steps": 4}}))
    with pytest.raises(ValueError, match=r"has no chat template; set language\.data\.chat_template=false"):
        LanguageTrainer(tiny_config(language={"data": {"chat_template": True}}))


def test_the_chat_template_check_reads_the_wrapped_hf_tokenizer(tiny_cfg, monkeypatch):
    trainer = LanguageTrainer(tiny_cfg)
    assert trainer.tokenizer.chat_template is None

    class WithTemplate:
        chat_template = "{{ messages }}"

    from dipod.language.tokenizer import HFTokenizer

    hf_like = HFTokenizer.__new__(HFTokenizer)
    hf_like.hf = WithTemplate()
    assert hf_like.chat_template == "{{ messages }}"  # what LanguageTrainer._check_fits reads
