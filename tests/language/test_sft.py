"""SFT with the masked-diffusion loss: exact value on a uniform model, the loss falls, save and reload."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dipod.language.models import build_model
from dipod.language.sft import masked_diffusion_loss, sft_tensors, train_sft
from dipod.language.tasks import get_task
from tests.language.language_helpers import tiny_config


class Uniform(torch.nn.Module):
    """Logits all zero: every token has probability 1 / V, so -ELBO per token is exactly log V."""

    mask_token_id = 1

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, self.vocab)


def test_loss_of_uniform_model_is_log_vocab():
    prompt = torch.randint(3, 10, (5, 4))
    completion = torch.randint(3, 10, (5, 6))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    loss = masked_diffusion_loss(
        Uniform(12), prompt, attn, completion, num_draws=3, generator=torch.Generator().manual_seed(0)
    )
    # each draw: weight L / n times n masked tokens of log(1/12), divided by L -> -log 12 per draw
    assert math.isclose(float(loss), math.log(12), rel_tol=1e-6)


def test_targets_are_eos_padded_to_gen_length(tiny_cfg):
    from dipod.language.models import build_tokenizer

    model_cfg = tiny_cfg.language.model.model_copy(update={"charset": "0123456789+-*/(),:"})
    tok = build_tokenizer(model_cfg)
    task = get_task("countdown")
    ex = task.load_sample()[:2]
    prompt_ids, prompt_attn, completion = sft_tensors(tok, task, ex, "compact", 24, "cpu")
    assert completion.shape == (2, 24)
    text = task.target(ex[0], "compact")
    assert tok.decode(completion[0]) == text
    assert (completion[0, len(text) :] == tok.eos_token_id).all()
    assert prompt_attn.dtype == torch.bool and prompt_ids.shape == prompt_attn.shape


def test_sft_lowers_the_loss_and_saves(tmp_path):
    cfg = tiny_config(language={"sft": {"steps": 40, "eval_every": 0}})
    model, tok, history = train_sft(cfg, out_dir=tmp_path)
    first = sum(r["loss"] for r in history[:5]) / 5
    last = sum(r["loss"] for r in history[-5:]) / 5
    assert last < first - 0.2, (first, last)
    assert {"eval/accuracy", "eval/reward", "eval/effective_tokens", "eval/nfe"} <= set(history[-1])
    reloaded = build_model(cfg.language.model.model_copy(update={"path": str(tmp_path)}))
    ids = torch.randint(3, tok.vocab_size, (2, 32))
    torch.testing.assert_close(reloaded(ids), model(ids), rtol=0, atol=0)


def test_shipped_sudoku_base_loads_and_is_moderately_good():
    """The shipped base solves some but not all blanks (room for RL); greedy decoding on 32 puzzles."""
    from dipod.config import load_config
    from dipod.language.trainer import LanguageTrainer

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/language/sudoku_fpo_dipod.yaml", ["language.data.eval_size=32"])
    metrics = LanguageTrainer(cfg).evaluate()
    assert 0.3 <= metrics["eval/accuracy"] <= 0.75, metrics
