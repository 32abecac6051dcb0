"""Tokenizers behind one small interface: a built-in character tokenizer and an adapter for HF tokenizers.

Both expose the special ids the samplers and bounds need (``mask_token_id``, ``pad_token_id``,
``eos_token_id``), so no id is ever written as a literal elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch

PaddingSide = Literal["left", "right"]

TOKENIZER_FILE = "dipod_tokenizer.json"
"""File name of a saved CharTokenizer inside a model directory."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of dipod needs from a tokenizer."""

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    vocab_size: int
    chat_template: str | None
    """The chat template of an instruction-tuned model's tokenizer (``data.chat_template``), or None."""

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str: ...

    def batch_encode(
        self, texts: Sequence[str], *, padding_side: PaddingSide = "left", add_eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def batch_decode(self, ids: torch.Tensor, *, skip_special_tokens: bool = True) -> list[str]: ...


def pad_batch(
    sequences: Sequence[Sequence[int]], *, pad_id: int, padding_side: PaddingSide = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one length.

    Prompts are left-padded by default so every completion starts at the same column.

    Returns:
        ids (B, T) long and attention_mask (B, T) bool (False on padding).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):  # data preparation, not a hot path
        if not seq:
            continue
        cols = slice(length - len(seq), length) if padding_side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        attention_mask[row, cols] = True
    return ids, attention_mask


class BatchCoding:
    """``batch_encode``/``batch_decode`` for a tokenizer that has ``encode``, ``decode`` and ``pad_token_id``."""

    def batch_encode(
        self, texts: Sequence[str], *, padding_side: PaddingSide = "left", add_eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and (B, T) bool attention mask of ``texts``, padded with the pad id."""
        return pad_batch(
            [self.encode(t, add_eos=add_eos) for t in texts], pad_id=self.pad_token_id, padding_side=padding_side
        )

    def batch_decode(self, ids: torch.Tensor, *, skip_special_tokens: bool = True) -> list[str]:
        """Texts of the rows of a (B, T) id tensor."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids.tolist()]


class CharTokenizer(BatchCoding):
    """One token per character of a fixed charset, plus special tokens; for the built-in tiny model.

    Ids: the special tokens first (in ``specials`` order), then the charset in its order. Text with a
    character outside the charset maps to ``[UNK]``.
    """

    SPECIALS = ("[PAD]", "[MASK]", "[EOS]", "[UNK]")
    chat_template: str | None = None
    """The built-in tokenizer has no chat template."""

    def __init__(self, charset: str, *, specials: Sequence[str] = SPECIALS) -> None:
        missing = {"[PAD]", "[MASK]", "[EOS]", "[UNK]"} - set(specials)
        if missing:
            raise ValueError(f"specials must include {sorted(missing)}")
        chars = list(dict.fromkeys(charset))  # unique, order kept
        if not chars:
            raise ValueError("charset is empty")
        self.charset = "".join(chars)
        self.specials = tuple(specials)
        self.id_to_token = [*self.specials, *chars]
        self.token_to_id = {tok: i for i, tok in enumerate(self.id_to_token)}
        self.pad_token_id = self.token_to_id["[PAD]"]
        self.mask_token_id = self.token_to_id["[MASK]"]
        self.eos_token_id = self.token_to_id["[EOS]"]
        self.unk_token_id = self.token_to_id["[UNK]"]
        self.vocab_size = len(self.id_to_token)
        self._special_ids = set(range(len(self.specials)))

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Character ids of ``text`` (unknown characters -> [UNK]), optionally followed by [EOS]."""
        ids = [self.token_to_id.get(ch, self.unk_token_id) for ch in text]
        return [*ids, self.eos_token_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            if skip_special_tokens and i in self._special_ids:
                continue
            pieces.append(self.id_to_token[i])
        return "".join(pieces)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``dipod_tokenizer.json`` (charset and specials) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"type": "char", "charset": self.charset, "specials": list(self.specials)}
        (directory / TOKENIZER_FILE).write_text(json.dumps(payload, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CharTokenizer:
        """Load a tokenizer written by ``save_pretrained``."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (not a saved dipod tiny model?)")
        payload = json.loads(path.read_text())
        if payload.get("type") != "char":
            raise ValueError(f"{path}: unknown tokenizer type {payload.get('type')!r}")
        return cls(payload["charset"], specials=payload["specials"])


def _config_mask_id(directory: str | Path) -> int | None:
    """``mask_token_id`` from the model's config.json (LLaDA keeps it there), or None."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("mask_token_id")
    return int(value) if value is not None else None


class HFTokenizer(BatchCoding):
    """An ``AutoTokenizer`` loaded from a local directory, with the ids resolved once.

    mask id: the model config's ``mask_token_id`` (LLaDA), else the tokenizer's mask token (BERT,
    Dream), else ``mask_token`` looked up in the vocabulary. pad id: the tokenizer's pad token, else
    its EOS. A model with none of these cannot be used as a masked diffusion LM, and says so.
    """

    def __init__(
        self, directory: str | Path, *, trust_remote_code: bool = False, mask_token: str | None = None
    ) -> None:
        from transformers import AutoTokenizer

        self.directory = str(directory)
        if not Path(directory).is_dir():
            raise FileNotFoundError(
                f"model.path {self.directory!r} is not an existing local directory; hf models and their tokenizers "
                "load from a local directory only (nothing is downloaded)"
            )
        self.hf = AutoTokenizer.from_pretrained(
            self.directory, trust_remote_code=trust_remote_code, local_files_only=True
        )
        mask_id = _config_mask_id(directory)
        if mask_id is None and mask_token is not None:
            mask_id = self.hf.convert_tokens_to_ids(mask_token)
            if mask_id is None or mask_id == self.hf.unk_token_id:
                raise ValueError(f"mask_token {mask_token!r} is not in the vocabulary of {directory}")
        if mask_id is None:
            mask_id = self.hf.mask_token_id
        if mask_id is None:
            raise ValueError(
                f"{directory}: no mask token (config.json has no mask_token_id, the tokenizer has no mask token); "
                "set model.mask_token"
            )
        eos_id = self.hf.eos_token_id if self.hf.eos_token_id is not None else self.hf.sep_token_id
        if eos_id is None:
            raise ValueError(f"{directory}: the tokenizer has neither an EOS nor a SEP token")
        pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else eos_id
        self.mask_token_id = int(mask_id)
        self.eos_token_id = int(eos_id)
        self.pad_token_id = int(pad_id)
        self.vocab_size = len(self.hf)

    @property
    def chat_template(self) -> str | None:
        """The wrapped tokenizer's chat template (instruction-tuned models), or None."""
        return getattr(self.hf, "chat_template", None)

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` without the tokenizer's automatic special tokens."""
        ids = list(self.hf.encode(text, add_special_tokens=False))
        return [*ids, self.eos_token_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the wrapped tokenizer's files into ``directory`` (``HFTokenizer(directory)`` loads them).

        The mask id is not stored here: it comes back from the model's config.json (written by the
        model's ``save_pretrained``) or the tokenizer's own mask token; a ``mask_token`` given at
        construction must be given again.
        """
        self.hf.save_pretrained(str(directory))
