"""Two-process DDP (gloo, CPU) through accelerate: one update equals the single-process update on the same
global batch, gradients and parameters alike; a two-process run writes its directory once and resumes
bit for bit."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dipod.checkpoints import list_checkpoints, load_checkpoint
from dipod.language.trainer import LanguageTrainer, RolloutBatch
from dipod.runs import run_training
from dipod.runs.config import validate_config
from dipod.runs.metrics import read_metrics
from tests.language.language_helpers import TINY, merge
from tests.runs.cli_helpers import untimed

CFG = merge(TINY, {"language": {"prompts_per_step": 4, "group_size": 4, "num_iterations": 2, "micro_batch_size": 4}})


SPG = merge(CFG, {"objective": {"name": "spg"}, "language": {"num_iterations": 1}})  # SPG redraws masks per update
CONFIGS = {"fpo": CFG, "spg": SPG}


def _global_batch(trainer: LanguageTrainer) -> RolloutBatch:
    """A fixed global rollout (random tokens, lengths, advantages and draws from fixed seeds), the same on every
    process. Lengths differ between rows, so a per-token mean (SPG) weighs the processes' shards differently."""
    lang = trainer.cfg.language
    size = lang.prompts_per_step * lang.group_size
    g = torch.Generator().manual_seed(123)
    vocab = trainer.tokenizer.vocab_size
    prompt_ids = torch.randint(4, vocab, (size, 16), generator=g)
    completion_ids = torch.randint(4, vocab, (size, lang.sampler.gen_length), generator=g)
    lengths = torch.randint(2, lang.sampler.gen_length + 1, (size, 1), generator=g)
    valid = torch.arange(lang.sampler.gen_length)[None, :] < lengths  # (B, L)
    prompt_attn = torch.ones_like(prompt_ids, dtype=torch.bool)
    trainer.generator.manual_seed(7)
    draws = trainer._draw(valid, prompt_attn)
    adv = torch.randn(size, generator=g)
    return RolloutBatch(prompt_ids, prompt_attn, completion_ids, valid, adv, draws)


def _update(trainer: LanguageTrainer, batch: RolloutBatch) -> tuple[dict, dict]:
    """Run ``update`` on ``batch`` and capture the gradients that reach the first optimiser step."""
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def capturing_step(*args, **kwargs):
        if not grads:
            grads.update(
                {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            )
        return step(*args, **kwargs)

    trainer.optimizer.step = capturing_step
    trainer._score_old(batch)
    trainer.update(batch)
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return grads, params


def _join(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives each process (accelerate reads it); one thread per process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, out: str, objective: str) -> None:
    _join(rank, world, port)
    trainer = LanguageTrainer(validate_config(CONFIGS[objective]))
    assert trainer.world == world and trainer.rank == rank
    batch = _global_batch(trainer)
    per_rank = batch.adv.shape[0] // world
    grads, params = _update(trainer, batch.rows(slice(rank * per_rank, (rank + 1) * per_rank)))
    if rank == 0:
        torch.save({"grads": grads, "params": params}, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["fpo", "spg"])
def test_two_process_update_equals_single_process(tmp_path, objective):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out, objective), nprocs=2, join=True)
    distributed = torch.load(out)
    single = LanguageTrainer(validate_config(CONFIGS[objective]))
    assert single.world == 1
    initial = {n: p.detach().clone() for n, p in single.model.named_parameters()}
    grads, params = _update(single, _global_batch(single))
    assert grads.keys() == distributed["grads"].keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(distributed["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    for name, p in params.items():
        assert not torch.equal(p, initial[name]), f"parameter {name} has not changed"
        torch.testing.assert_close(distributed["params"][name], p, rtol=0, atol=1e-5, msg=name)


def _run_worker(rank: int, world: int, port: int, root: str) -> None:
    """Two runs on every process: 3 steps straight, and 1 step then a resume to 3."""
    _join(rank, world, port)
    cfg = validate_config(merge(CFG, {"train": {"steps": 3, "checkpoint_every": 1, "eval_every": 0}}))
    short = cfg.model_copy(deep=True)
    short.train.steps = 1
    run_training(cfg, f"{root}/straight", trainer_factory=LanguageTrainer, quiet=True)
    run_training(short, f"{root}/resumed", trainer_factory=LanguageTrainer, quiet=True)
    run_training(cfg, f"{root}/resumed", trainer_factory=LanguageTrainer, quiet=True, resume=True)


@pytest.mark.slow
def test_two_process_run_writes_once_and_resumes_bit_for_bit(tmp_path):
    mp.spawn(_run_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [row["step"] for row in straight] == [1, 2, 3]  # one row per step: only rank 0 wrote
    for a, b in zip(straight, resumed, strict=True):  # the short run also evaluated at its last step
        assert {k: v for k, v in untimed(a).items() if not k.startswith("eval/")} == {
            k: v for k, v in untimed(b).items() if not k.startswith("eval/")
        }
    checkpoint = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    assert len(checkpoint["trainer"]["rank_generators"]) == 2


def _nan_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0's shard has a NaN advantage: every process must skip the update together, none may hang."""
    _join(rank, world, port)
    trainer = LanguageTrainer(validate_config(CFG))
    batch = _global_batch(trainer)
    per_rank = batch.adv.shape[0] // world
    shard = batch.rows(slice(rank * per_rank, (rank + 1) * per_rank))
    if rank == 0:
        shard.adv[0] = math.nan
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer._score_old(shard)
    metrics = trainer.update(shard)
    unchanged = all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    torch.save({"skipped": metrics["skipped_updates"], "unchanged": unchanged}, f"{out}.{rank}")


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_skips_the_step_on_all(tmp_path):
    out = str(tmp_path / "result")
    context = mp.spawn(_nan_worker, args=(2, _free_port(), out), nprocs=2, join=False)
    done = False
    for _ in range(120):  # a hang (one process waiting in the all-reduce) fails the test instead of blocking it
        if context.join(timeout=1):
            done = True
            break
    if not done:
        for process in context.processes:
            process.terminate()
    assert done, "the processes did not finish: one of them is stuck in DDP's all-reduce"
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert result["unchanged"] and result["skipped"] == CFG["language"]["num_iterations"], (rank, result)
