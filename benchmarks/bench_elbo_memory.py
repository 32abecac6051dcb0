"""Peak memory and time of the K = 4 ELBO forward + backward (FPO + DiPOD), lean scoring vs today's path.

Lean scoring = logits only at the masked completion tokens (``masked_token_logprobs(logits_at="masked")``) and
the K draws in chunks (``chunked_draws_backward``, same loss and gradients); the reference is today's path:
full-vocabulary logits at every position of all K draws in one forward + backward. The model is the tiny
transformer made wider and given a realistic vocabulary (V = 32768; prompt 64, completion 128), where the
logits dominate memory as they do for LLaDA (V = 126k).

Peak memory: each variant runs once in a fresh process; the figure is the growth of its peak resident memory
during the step over its resident memory before it (model, inputs, old scores), read from /proc/self/status
after resetting the peak (Linux). Time: interleaved medians of CPU time on one thread, in this process.
Figures (candidate / reference, both measured here):
  - ``peak_memory_ratio``, ``time_ratio``: lean scoring (masked logits, chunks of ``CHUNK`` draws) vs today's;
  - ``chunk_only_peak_memory_ratio``, ``chunk_only_time_ratio``: chunks of draws alone (full logits both);
  - ``chunk_on_lean_peak_memory_ratio``, ``chunk_on_lean_time_ratio``: chunks on top of the masked logits;
  - ``lean_head_peak_memory_ratio`` and ``lean_head_update_speedup``: masked logits alone, one pass
    (today's time / lean time: what the output head saves in an inner update);
  - ``checkpointing_on_lean_peak_memory_ratio``, ``checkpointing_on_lean_time_ratio``: gradient checkpointing
    of the blocks on top of the masked logits, one pass.

Run alone: ``python benchmarks/run.py [--quick] elbo_memory``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dipod.bounds.chunked import chunked_draws_backward
from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM
from dipod.objectives import MaskedScores, dipod_term, get_objective, make_params

VOCAB, PROMPT, GEN, DRAWS, CHUNK = 32768, 64, 128, 4, 1
VARIANTS = {  # name -> (logits_at, draw chunk size, gradient checkpointing)
    "today": ("all", None, False),
    "chunked": ("all", CHUNK, False),
    "lean": ("masked", None, False),
    "lean_chunked": ("masked", CHUNK, False),
    "lean_checkpointed": ("masked", None, True),
}


def _setup(batch: int) -> dict:
    """Model, a batch of completions with K draws, old scores (ratios off 1) and the FPO + DiPOD loss."""
    cfg = TinyConfig(
        vocab_size=VOCAB, mask_token_id=VOCAB - 1, pad_token_id=0, eos_token_id=1, max_seq_len=PROMPT + GEN,
        n_layer=4, n_head=4, n_embd=256,
    )  # fmt: skip
    model = TinyMaskedLM(cfg, generator=torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, VOCAB - 1, (batch, PROMPT), generator=g)
    completion = torch.randint(2, VOCAB - 1, (batch, GEN), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, DRAWS, generator=g)
    with torch.no_grad():  # the lean path for every variant: the same values, and no full logits before the step
        old = masked_token_logprobs(model, prompt, completion, draws, mask_id=cfg.mask_token_id, logits_at="masked")
        old = old + 0.1 * torch.randn(old.shape, generator=g)
    adv = torch.randn(batch, generator=g)
    ocfg = make_params("language", "fpo")
    fpo = get_objective("language", "fpo")

    def loss_fn(token_logp: torch.Tensor):
        out = fpo.fn(MaskedScores(token_logp, draws, valid), MaskedScores(old, draws, valid), adv, ocfg)
        return out + dipod_term(out.elbo, ocfg.dipod_beta)

    def step(variant: str) -> None:
        logits_at, chunk_size, checkpointing = VARIANTS[variant]
        model.zero_grad(set_to_none=True)
        if checkpointing:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()

        def score_fn(chunk):
            return masked_token_logprobs(
                model, prompt, completion, chunk, mask_id=cfg.mask_token_id, logits_at=logits_at, valid=valid
            )  # (B, k, L)

        chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=chunk_size)

    return {"step": step, "model": model}


def _peak_rss_growths(batch: int) -> dict[str, float]:
    """MiB by which one step raises the peak resident memory of a fresh process, per variant (one process each,
    run side by side: a process's peak is its own, whatever runs beside it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--one", name, "--batch", str(batch)], stdout=subprocess.PIPE, text=True, env=env
        )
        for name in VARIANTS
    }
    growth = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"elbo_memory variant {name} failed with exit code {proc.returncode}")
        growth[name] = json.loads(out.strip().splitlines()[-1])["peak_rss_growth_mib"]
    return growth


def _cpu_medians(fns: dict, *, repeats: int) -> dict[str, float]:
    """Median CPU seconds of this process per call, measured round-robin. Every variant runs on one thread
    (``torch.set_num_threads(1)``), so CPU time is the wall time it would take on an idle core, and other
    jobs sharing the machine do not enter it."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.process_time()
            fn()
            times[key].append(time.process_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _status_kib(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _measure_one(variant: str, batch: int) -> dict:
    """Peak resident memory of one step above the resident memory just before it. Linux: the peak (VmHWM) is
    reset to the current RSS first, so the setup's own transient peak does not hide the step's."""
    torch.set_num_threads(1)
    bench = _setup(batch)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
    before = _status_kib("VmRSS")
    bench["step"](variant)
    return {"variant": variant, "peak_rss_growth_mib": (_status_kib("VmHWM") - before) / 1024}


def run(quick: bool) -> dict:
    batch = 2 if quick else 4
    memory = _peak_rss_growths(batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench = _setup(batch)
        steps = {name: (lambda name=name: bench["step"](name)) for name in VARIANTS}
        times = _cpu_medians(steps, repeats=3 if quick else 7)
    finally:
        torch.set_num_threads(threads)
    figures = {
        "peak_memory_ratio": memory["lean_chunked"] / memory["today"],
        "time_ratio": times["lean_chunked"] / times["today"],
        "chunk_only_peak_memory_ratio": memory["chunked"] / memory["today"],
        "chunk_only_time_ratio": times["chunked"] / times["today"],
        "chunk_on_lean_peak_memory_ratio": memory["lean_chunked"] / memory["lean"],
        "chunk_on_lean_time_ratio": times["lean_chunked"] / times["lean"],
        "lean_head_peak_memory_ratio": memory["lean"] / memory["today"],
        "lean_head_update_speedup": times["today"] / times["lean"],
        "checkpointing_on_lean_peak_memory_ratio": memory["lean_checkpointed"] / memory["lean"],
        "checkpointing_on_lean_time_ratio": times["lean_checkpointed"] / times["lean"],
        "today_peak_mib": memory["today"],
        "lean_chunked_peak_mib": memory["lean_chunked"],
    }
    reference = (
        f"today's scoring: full-vocabulary logits at every position, all K={DRAWS} draws in one FPO + DiPOD forward"
        f" + backward; tiny model 4x256, V={VOCAB}, B={batch}, prompt {PROMPT}, completion {GEN}; lean = logits at"
        f" masked tokens only, chunked = {CHUNK} draw(s) per pass; memory = peak RSS growth in the step, own process"
    )
    return {"figures": figures, "reference": reference}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="one variant's peak memory (used by run())")
    parser.add_argument("--one", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(_measure_one(args.one, args.batch)))
