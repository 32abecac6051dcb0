"""What the GPU GSM8K-format run needs, made offline: word problems, a tokenizer, a fresh LLaDA-architecture model.

    python experiments/gpu/prepare.py OUT_DIR --size 1b     # ~1.0B parameters (a GPU)
    python experiments/gpu/prepare.py OUT_DIR --size 200m   # ~0.2B: the release's horizon within one device call
    python experiments/gpu/prepare.py OUT_DIR --size tiny   # the same chain at CPU size, for a check here

Writes ``OUT_DIR/data/{train,test}.jsonl`` (GSM8K's fields: ``question``, and ``answer`` = worked reasoning
ending in ``#### N``), and ``OUT_DIR/model/``: a byte-level BPE tokenizer trained on the d1-format prompts and
completions of the training problems, and a model initialised from ``llada_arch.LladaArchConfig`` with that file
beside its weights (``trust_remote_code`` loads it, as it loads LLaDA). Nothing is downloaded.

The problems are two-step grade-school arithmetic (buy / give away / share / pack), generated from a seed, so a
model trained from scratch can learn the format and some of the arithmetic within minutes; they are in GSM8K's
format, not GSM8K's difficulty.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from llada_arch import LladaArchConfig, LladaArchModel  # noqa: E402

from dipod.language.tasks import get_task  # noqa: E402

SIZES = {
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden_size": 160},
    "200m": {"d_model": 1024, "n_layers": 16, "n_heads": 16, "mlp_hidden_size": 2816},
    "1b": {"d_model": 2048, "n_layers": 20, "n_heads": 16, "mlp_hidden_size": 5504},
}
"""Model sizes: ``1b`` is LLaDA-8B's shape scaled to ~1.0B parameters (LLaDA-8B: 4096 wide, 32 layers); at 7.3 s a
step on an H200 it reaches 26 steps in a session's device time. ``200m`` (1024 wide, 16 layers, 0.21B) is sized
to reach a few hundred steps of both variants within one 10-minute call: an estimate, not yet run."""

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|mdm_mask|>"]
NAMES = ["Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards"]


def word_problem(rng: np.random.Generator) -> dict[str, str]:
    """One two-step problem in GSM8K's fields (``<<a+b=c>>`` calculator annotations included, as GSM8K writes)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = (int(v) for v in rng.integers(2, 40, size=2))
    kind = int(rng.integers(4))
    if kind == 0:  # buy, then give away
        c = int(rng.integers(1, a + b))
        total, answer = a + b, a + b - c
        question = (
            f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend. "
            f"How many {item} does {name} have now?"
        )
        steps = (
            f"After buying, {name} has {a} + {b} = <<{a}+{b}={total}>>{total} {item}.\n"
            f"After giving {c} away, {name} has {total} - {c} = <<{total}-{c}={answer}>>{answer} {item}."
        )
    elif kind == 1:  # packs of b, plus loose ones
        c = int(rng.integers(1, 10))
        packs, answer = a * b, a * b + c
        question = (
            f"{name} buys {a} packs of {item} with {b} in each pack, and finds {c} more. "
            f"How many {item} does {name} have?"
        )
        steps = (
            f"The packs hold {a} * {b} = <<{a}*{b}={packs}>>{packs} {item}.\n"
            f"With the {c} found, {name} has {packs} + {c} = <<{packs}+{c}={answer}>>{answer} {item}."
        )
    elif kind == 2:  # share equally, add one's own
        per = int(rng.integers(2, 10))
        total, answer = per * b, per + a
        question = (
            f"{name} shares {total} {item} equally among {b} friends and keeps {a} of their own. "
            f"How many {item} does each friend get, plus {name}'s own {a}?"
        )
        steps = (
            f"Each friend gets {total} / {b} = <<{total}/{b}={per}>>{per} {item}.\n"
            f"Adding {name}'s own, {per} + {a} = <<{per}+{a}={answer}>>{answer}."
        )
    else:  # two days of collecting, then double
        total, answer = a + b, 2 * (a + b)
        question = (
            f"{name} collects {a} {item} on Monday and {b} on Tuesday, then doubles the collection. "
            f"How many {item} are there now?"
        )
        steps = (
            f"Over two days {name} collects {a} + {b} = <<{a}+{b}={total}>>{total} {item}.\n"
            f"Doubled, that is 2 * {total} = <<2*{total}={answer}>>{answer} {item}."
        )
    return {"question": question, "answer": f"{steps}\n#### {answer}"}


def write_problems(directory: Path, *, train: int, test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        with open(directory / f"{split}.jsonl", "w") as f:
            for _ in range(count):
                f.write(json.dumps(word_problem(rng)) + "\n")


def d1_texts(path: Path) -> list[str]:
    """The d1-format prompt and target completion of every problem in ``path`` (the tokenizer's corpus)."""
    task = get_task("gsm8k")
    return [text for ex in task.load(path) for text in (task.prompt(ex, "d1"), task.target(ex, "d1"))]


def write_tokenizer(directory: Path, corpus: list[str]):
    """A byte-level BPE tokenizer (exact round trip of any text) with pad, EOS and mask tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|eos|>", mask_token="<|mdm_mask|>"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_model(directory: Path, tokenizer, size: str, seed: int) -> int:
    """A fresh model of ``size`` saved with its code; returns its parameter count."""
    config = LladaArchConfig(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id, **SIZES[size])
    config.auto_map = {"AutoConfig": "llada_arch.LladaArchConfig", "AutoModel": "llada_arch.LladaArchModel"}
    torch.manual_seed(seed)
    model = LladaArchModel(config)
    model.save_pretrained(directory)
    shutil.copy(HERE / "llada_arch.py", directory / "llada_arch.py")
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_problems(args.out / "data", train=args.train, test=args.test, seed=args.seed)
    tokenizer = write_tokenizer(args.out / "model", d1_texts(args.out / "data" / "train.jsonl"))
    params = write_model(args.out / "model", tokenizer, args.size, args.seed)
    print(json.dumps({"out": str(args.out), "size": args.size, "parameters": params, "vocab": len(tokenizer)}))


if __name__ == "__main__":
    main()
