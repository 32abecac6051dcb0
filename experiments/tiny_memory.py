"""Memory of one ELBO forward + backward of the tiny model over K masking draws (an experiment, not a benchmark).

For B completions and K draws the ELBO runs one batched forward over B * K rows, so activation
memory grows linearly in K. Two measures per K, each in a fresh process so peaks do not mix:
- ``saved_mib``: bytes of the tensors autograd keeps for the backward (exact, from saved-tensor hooks);
- ``peak_rss_delta_mib``: growth of the process's peak resident memory over the model alone
  (what the machine sees; includes allocator slack and the logits).

Run: ``python experiments/tiny_memory.py [--n-embd 128] [--ks 1 2 4 8 16]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from dipod.bounds.masked import draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.language.config import ModelConfig
from dipod.language.models import build_model, build_tokenizer


def measure(num_draws: int, *, batch: int, prompt_length: int, gen_length: int, n_embd: int) -> dict[str, float]:
    """One K-draw ELBO forward + backward; returns the memory figures of this process."""
    cfg = ModelConfig(n_embd=n_embd, max_seq_len=prompt_length + gen_length)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(4, tok.vocab_size, (batch, prompt_length), generator=g)
    completion = torch.randint(4, tok.vocab_size, (batch, gen_length), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, num_draws, generator=g, scheme="count")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    saved_bytes = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logp = masked_token_logprobs(model, prompt, completion, draws, mask_id=tok.mask_token_id)
        elbo = elbo_from_logprobs(token_logp, draws, valid, scale="mean")
    (-elbo.mean()).backward()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "K": num_draws,
        "rows": batch * num_draws,
        "saved_mib": saved_bytes / 2**20,
        "peak_rss_delta_mib": (peak_rss - base_rss) / 1024,
        "params_mib": params / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = dict(batch=args.batch, prompt_length=args.prompt_length, gen_length=args.gen_length, n_embd=args.n_embd)
    if args.one is not None:
        print(json.dumps(measure(args.one, **shape)))
        return
    rows = []
    for k in args.ks:
        cmd = [sys.executable, __file__, "--one", str(k), "--batch", str(args.batch), "--prompt-length",
               str(args.prompt_length), "--gen-length", str(args.gen_length), "--n-embd", str(args.n_embd)]  # fmt: skip
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(json.dumps({"shape": shape, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
