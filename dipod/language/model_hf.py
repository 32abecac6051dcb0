"""Adapter that makes a transformers model loaded from a local path a ``MaskedDiffusionLM``.

Three families, one interface (input_ids (N, T), attention_mask (N, T) bool -> logits (N, T, V)):
- BERT / ModernBERT-style encoders through ``AutoModelForMaskedLM`` (bidirectional already);
- LLaDA through ``trust_remote_code=True`` and ``AutoModel`` (``model(input_ids).logits``, bidirectional);
- Dream the same way, plus its two quirks: logits at position i predict token i + 1 (it was adapted
  from an autoregressive model, so they are shifted right by one), and it wants a 4-D boolean
  attention mask with position ids that skip left padding.
Special ids come from the tokenizer and the model config (``HFTokenizer``), never from literals.

LLaDA's stock remote code ignores ``attention_mask`` (its attention is called with no mask), so left
padding is visible to it. Remote-code models are probed once at load time
(``ignores_attention_mask``), and a batch with padding then gets one warning per model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from dipod.language.tokenizer import HFTokenizer

SHIFTED_MODEL_TYPES = frozenset({"Dream"})
"""model_type values whose logits are shifted by one position (AR-adapted masked diffusion models)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFMaskedLM(nn.Module):
    """A transformers model with the ``MaskedDiffusionLM`` interface; the model itself is ``self.net``."""

    def __init__(
        self,
        net: nn.Module,
        *,
        mask_token_id: int,
        pad_token_id: int,
        eos_token_id: int,
        vocab_size: int,
        logits_shift: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self.logits_shift = logits_shift
        self.dream_style_inputs = getattr(getattr(net, "config", None), "model_type", None) in SHIFTED_MODEL_TYPES
        self.ignores_attention_mask = False
        """True when the wrapped model's logits do not depend on the attention mask (``probe_attention_mask``)."""
        self._padding_warned = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tokenizer: HFTokenizer,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        logits_shift: bool | None = None,
    ) -> HFMaskedLM:
        """Load from a local directory (never from a hub).

        An encoder saved without its masked-LM head (a plain ``BertModel`` checkpoint) loads with
        transformers' report of missing head weights, which it initialises fresh: expected, and the head
        then starts untrained.

        Args:
            tokenizer: supplies the mask, pad and EOS ids.
            trust_remote_code: run the model's own code through ``AutoModel`` (LLaDA, Dream);
                False loads ``AutoModelForMaskedLM`` (BERT-style).
            logits_shift: None decides from the config's model_type (Dream shifts).
        """
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

        path = str(path)
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"model.path {path!r} is not an existing local directory; hf models load from a local directory "
                "only (nothing is downloaded)"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        loader = AutoModel if trust_remote_code else AutoModelForMaskedLM
        net = loader.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=DTYPES[dtype], local_files_only=True
        )
        if logits_shift is None:
            logits_shift = getattr(config, "model_type", None) in SHIFTED_MODEL_TYPES
        vocab_size = getattr(config, "vocab_size", None) or tokenizer.vocab_size
        model = cls(
            net,
            mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            vocab_size=int(vocab_size),
            logits_shift=logits_shift,
        )
        if trust_remote_code and not model.dream_style_inputs:
            model.ignores_attention_mask = model.probe_attention_mask()
        return model

    @torch.no_grad()
    def probe_attention_mask(self) -> bool:
        """Whether the wrapped model ignores its attention mask: one 3-token forward pass, with the first
        token marked as padding and without a mask; identical logits at the two real tokens mean the
        padding was seen. Runs in eval mode (no dropout) and restores the training flag."""
        was_training = self.net.training
        self.net.eval()
        try:
            device = getattr(self.net, "device", "cpu")
            ids = torch.tensor([[self.pad_token_id, self.mask_token_id, self.eos_token_id]], device=device)
            padded = torch.tensor([[False, True, True]], device=ids.device)
            with_mask = self.net(input_ids=ids, attention_mask=padded.long()).logits[:, 1:]  # (1, 2, V')
            without = self.net(input_ids=ids, attention_mask=None).logits[:, 1:]
            return bool(torch.equal(with_mask, without))
        finally:
            self.net.train(was_training)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the wrapped transformers model (weights, config and, for remote code, its code files)."""
        self.net.save_pretrained(str(directory))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, positions: slice | None = None
    ) -> torch.Tensor:
        """Logits (N, T, V) for input_ids (N, T) long; attention_mask (N, T) bool, False on padding.

        ``positions`` returns the logits there only, (N, Tp, V); the whole forward still runs (the
        wrapped models compute every position), so this saves the caller's memory, not compute.
        """
        if self.dream_style_inputs:
            logits = self._dream_forward(input_ids, attention_mask)
        else:
            if self.ignores_attention_mask and not self._padding_warned and attention_mask is not None:
                self._warn_if_padded(attention_mask)
            mask = None if attention_mask is None else attention_mask.long()
            logits = self.net(input_ids=input_ids, attention_mask=mask).logits  # (N, T, V')
        if self.logits_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i now predicts token i
        if positions is not None:
            logits = logits[:, positions]
        return logits[..., : self.vocab_size]  # padded embedding rows are not tokens

    def _warn_if_padded(self, attention_mask: torch.Tensor) -> None:
        if bool(attention_mask.all()):
            return
        self._padding_warned = True
        warnings.warn(
            f"{type(self.net).__name__} ignores attention_mask: padding tokens are visible to it, so the "
            "logits of padded prompts differ from unpadded ones (LLaDA's remote code does this). Use one "
            "prompt per batch (equal-length prompts) to avoid it.",
            stacklevel=3,
        )

    def _dream_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None or bool(attention_mask.all()):
            return self.net(input_ids, "full", None).logits
        keys = attention_mask.bool()
        position_ids = (keys.long().cumsum(-1) - 1).masked_fill(~keys, 1)  # positions skip left padding
        full = keys[:, None, None, :] & keys[:, None, :, None]  # (N, 1, T, T)
        return self.net(input_ids, full, position_ids).logits
