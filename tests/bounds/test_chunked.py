"""The chunked K-draw forward + backward gives the unchunked loss and gradients, for losses non-linear in the draws."""

import contextlib
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dipod.bounds.chunked import chunked_draws_backward, draw_chunks
from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.objectives import MaskedScores, dipod_term, get_objective, make_params
from tests.bounds.tiny_models import MLPMaskedNet

V, P, L, B, K = 3, 2, 4, 5, 6
MASK_ID = V


def _setup(seed=0):
    net = MLPMaskedNet(V, P + L, seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (B, P), generator=g)
    completion = torch.randint(0, V, (B, L), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    valid[1, 3:] = False
    draws = draw_masks(valid, K, generator=g)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    with torch.no_grad():  # old scores away from the new ones: ratios off 1, some clipped
        old = masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)
        old = old + 0.3 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    return net, prompt, completion, valid, draws, adv, old


def _loss_fn(name, old, draws, valid, adv):
    clips = {"clip_low": 0.1, "clip_high": 0.1} if name == "fpo" else {}  # SPG has no clip
    cfg = make_params("language", name, **clips)
    objective = get_objective("language", name)

    def loss_fn(token_logp):
        new = MaskedScores(token_logp, draws, valid)
        out = objective.fn(new, MaskedScores(old, draws, valid), adv, cfg)
        return out + dipod_term(out.elbo, 0.05)

    return loss_fn


def _grads(net):
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    return grads


def test_draw_chunks_cover_k_and_check_arguments():
    assert draw_chunks(6, 4) == [slice(0, 4), slice(4, 6)]
    assert draw_chunks(4, None) == [slice(0, 4)]
    assert draw_chunks(4, 9) == [slice(0, 4)]
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None, got 0"):
        draw_chunks(4, 0)


@pytest.mark.parametrize("name", ["fpo", "spg"])  # spg: the EUBO mixes draws token by token (logsumexp over K)
@pytest.mark.parametrize("chunk_size", [1, 2, 4, 6])
def test_chunked_loss_and_gradients_equal_the_unchunked_autograd_path(name, chunk_size):
    net, prompt, completion, valid, draws, adv, old = _setup()
    loss_fn = _loss_fn(name, old, draws, valid, adv)

    reference = loss_fn(masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID))
    (0.7 * reference.loss).backward()
    expected = _grads(net)
    if name == "fpo":  # the test means something only if the clip is active for some rows and not others
        assert 0 < reference.stats["clip_frac"] < 1

    def score_fn(chunk_draws):
        return masked_token_logprobs(net, prompt, completion, chunk_draws, mask_id=MASK_ID)

    out = chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=chunk_size, loss_scale=0.7)
    assert not out.loss.requires_grad and not out.elbo.requires_grad
    torch.testing.assert_close(out.loss, reference.loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.elbo, reference.elbo.detach(), rtol=0, atol=1e-12)
    for key, value in reference.stats.items():
        torch.testing.assert_close(out.stats[key], value, rtol=0, atol=1e-12)
    for got, want in zip(_grads(net), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_chunked_backward_accumulates_into_existing_grads():
    net, prompt, completion, valid, draws, adv, old = _setup(1)
    loss_fn = _loss_fn("fpo", old, draws, valid, adv)
    loss_fn(masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)).loss.backward()
    single = _grads(net)

    def score_fn(chunk_draws):
        return masked_token_logprobs(net, prompt, completion, chunk_draws, mask_id=MASK_ID)

    for _ in range(2):  # two micro-batches' worth: the gradients add up, as in gradient accumulation
        chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=4)
    for got, want in zip(_grads(net), single, strict=True):
        torch.testing.assert_close(got, 2 * want, rtol=1e-6, atol=1e-10)


class _DropoutScorer(nn.Module):
    """Token log-probs through dropout: the random mask must be the same in the recomputation."""

    def __init__(self):
        super().__init__()
        self.net = MLPMaskedNet(V, P + L, seed=2).double()
        self.drop = nn.Dropout(0.5)

    def forward(self, ids, attention_mask=None):
        return self.drop(self.net(ids, attention_mask))


def test_dropout_is_replayed_in_the_recomputation():
    model = _DropoutScorer().train()
    _, prompt, completion, valid, draws, adv, old = _setup(3)
    loss_fn = _loss_fn("fpo", old, draws, valid, adv)
    chunks = draw_chunks(K, 2)

    def score_fn(chunk_draws):
        return masked_token_logprobs(model, prompt, completion, chunk_draws, mask_id=MASK_ID)

    # Reference: the same chunk-by-chunk random stream, every graph kept, one backward.
    torch.manual_seed(0)
    logp = torch.cat([score_fn(draws.select(c)) for c in chunks], dim=1)
    reference = loss_fn(logp)
    reference.loss.backward()
    expected = _grads(model)
    after_reference = torch.rand(1)

    torch.manual_seed(0)
    out = chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=2)
    assert torch.equal(torch.rand(1), after_reference)  # the random stream continues as after one pass
    torch.testing.assert_close(out.loss, reference.loss.detach(), rtol=0, atol=1e-12)
    for got, want in zip(_grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_with_no_sync_only_the_final_chunk_synchronises():
    net, prompt, completion, valid, draws, adv, old = _setup(4)
    loss_fn = _loss_fn("fpo", old, draws, valid, adv)
    state = {"quiet": False}
    calls = []

    @contextlib.contextmanager
    def no_sync():
        state["quiet"] = True
        try:
            yield
        finally:
            state["quiet"] = False

    def score_fn(chunk_draws):
        calls.append((torch.is_grad_enabled(), state["quiet"]))
        return masked_token_logprobs(net, prompt, completion, chunk_draws, mask_id=MASK_ID)

    chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=2, no_sync=no_sync)  # 3 chunks
    # two graph-free passes, the last chunk and the first recomputation quiet, the final recomputation synced
    assert calls == [(False, False), (False, False), (True, True), (True, True), (True, False)]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """Each process: its half of the batch in two micro-batches, chunked, with DDP's no_sync as a trainer would."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net, prompt, completion, valid, draws, adv, old = _setup(5)
        ddp = nn.parallel.DistributedDataParallel(net)
        half = B // world + 1  # rows [0, 3) and [3, 5): the processes hold different shares
        rows = slice(0, half) if rank == 0 else slice(half, B)
        micro = [slice(rows.start, rows.start + 1), slice(rows.start + 1, rows.stop)]
        for i, mb in enumerate(micro):
            mb_draws = draws[mb]
            loss_fn = _loss_fn("fpo", old[mb], mb_draws, valid[mb], adv[mb])

            def score_fn(chunk, mb=mb):
                return masked_token_logprobs(ddp, prompt[mb], completion[mb], chunk, mask_id=MASK_ID)

            share = (mb.stop - mb.start) * world / B  # DDP averages over processes: scale back to the batch mean
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else ddp.no_sync():
                chunked_draws_backward(
                    score_fn, loss_fn, mb_draws, chunk_size=2, loss_scale=share, no_sync=ddp.no_sync if last else None
                )
        if rank == 0:
            torch.save([p.grad for p in net.parameters()], out)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_chunked_backward_equals_the_single_process_gradient(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    net, prompt, completion, valid, draws, adv, old = _setup(5)
    # One process, whole batch, no chunks: the mean over rows of each row's loss term.
    total = 0.0
    for row in range(B):
        r = slice(row, row + 1)
        loss_fn = _loss_fn("fpo", old[r], draws[r], valid[r], adv[r])
        total = total + loss_fn(masked_token_logprobs(net, prompt[r], completion[r], draws[r], mask_id=MASK_ID)).loss
    (total / B).backward()
    for got, want in zip(torch.load(out), [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)
