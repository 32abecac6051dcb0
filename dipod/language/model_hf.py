"""Adapter that makes a transformers model loaded from a local path a ``MaskedDiffusionLM``.

Three families, one interface (input_ids (N, T), attention_mask (N, T) bool -> logits (N, T, V)):
- BERT / ModernBERT-style encoders through ``AutoModelForMaskedLM`` (bidirectional already);
- LLaDA through ``trust_remote_code=True`` and ``AutoModel`` (``model(input_ids).logits``, bidirectional);
- Dream the same way, plus its two quirks: logits at position i predict token i + 1 (it was adapted
  from an autoregressive model, so they are shifted right by one), and it wants a 4-D boolean
  attention mask with position ids that skip left padding.
Special ids come from the tokenizer and the model config (``HFTokenizer``), never from literals.
"""

from __future__ import annotations

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

        Args:
            tokenizer: supplies the mask, pad and EOS ids.
            trust_remote_code: run the model's own code through ``AutoModel`` (LLaDA, Dream);
                False loads ``AutoModelForMaskedLM`` (BERT-style).
            logits_shift: None decides from the config's model_type (Dream shifts).
        """
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

        path = str(path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model path {path} is not a local directory")
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
        return cls(
            net,
            mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            vocab_size=int(vocab_size),
            logits_shift=logits_shift,
        )

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
            mask = None if attention_mask is None else attention_mask.long()
            logits = self.net(input_ids=input_ids, attention_mask=mask).logits  # (N, T, V')
        if self.logits_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i now predicts token i
        if positions is not None:
            logits = logits[:, positions]
        return logits[..., : self.vocab_size]  # padded embedding rows are not tokens

    def _dream_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None or bool(attention_mask.all()):
            return self.net(input_ids, "full", None).logits
        keys = attention_mask.bool()
        position_ids = (keys.long().cumsum(-1) - 1).masked_fill(~keys, 1)  # positions skip left padding
        full = keys[:, None, None, :] & keys[:, None, :, None]  # (N, 1, T, T)
        return self.net(input_ids, full, position_ids).logits
