"""The chunked K-draw forward + backward gives the unchunked loss and gradients, for losses non-linear in the draws."""

import pytest
import torch
from torch import nn

from dipod.bounds.chunked import chunked_draws_backward, draw_chunks
from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.config import ObjectiveConfig
from dipod.objectives import MaskedScores, dipod_term, get_objective
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
    cfg = ObjectiveConfig(name=name, elbo_scale="sum", clip_low=0.1, clip_high=0.1)
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
