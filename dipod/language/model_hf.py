"""Adapter that makes a transformers model loaded from a local path a ``MaskedDiffusionLM``.

Three families, one interface (input_ids (N, T), attention_mask (N, T) bool -> logits (N, T, V)):
- BERT / ModernBERT-style encoders through ``AutoModelForMaskedLM`` (bidirectional already);
- LLaDA through ``trust_remote_code=True`` and ``AutoModel`` (``model(input_ids).logits``, bidirectional);
- Dream the same way, plus its two quirks: logits at position i predict token i + 1 (it was adapted
  from an autoregressive model, so they are shifted right by one), and it wants a 4-D boolean
  attention mask with position ids that skip left padding.
Special ids come from the tokenizer and the model config (``HFTokenizer``), never from literals.

Scoring asks for logits at some positions only (``positions``: the completion span, or the masked tokens). Where
the wrapped model applies its output projection (``get_output_embeddings()``, an ``nn.Linear``) to the final
hidden states, the adapter gathers those hidden states before that projection, so the (N, T, V) logits are never
made; ``probe_output_head`` checks this once at load time against the full logits, and any other model gets its
full logits sliced. Gradient checkpointing goes through transformers' own switch.

LLaDA's stock remote code ignores ``attention_mask`` (its attention is called with no mask), so left
padding is visible to it. Remote-code models are probed once at load time
(``ignores_attention_mask``), and a batch with padding then gets one warning per model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
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
        self.output_head: nn.Linear | None = None
        """The wrapped model's output projection when logits at given positions can be computed by gathering its
        input (``probe_output_head``); None slices the full logits instead."""
        self._gather: slice | torch.Tensor | None = None
        self._checkpointing = False

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
        model.output_head = model.probe_output_head()
        return model

    @torch.no_grad()
    def probe_output_head(self) -> nn.Linear | None:
        """The output projection if gathering its input gives the same logits as the full forward, else None.

        One 4-token forward pass each way in eval mode: ``get_output_embeddings()`` must be an ``nn.Linear`` that
        the model calls once on its final hidden states (BERT's decoder after its transform, LLaMA-style
        ``lm_head``, Dream); tied-embedding remote code (LLaDA with ``weight_tying``) calls no module and fails.
        """
        try:
            head = self.net.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        if not isinstance(head, nn.Linear):
            return None
        was_training = self.net.training
        self.net.eval()
        try:
            device = head.weight.device
            ids = torch.tensor([[self.eos_token_id, self.mask_token_id, self.pad_token_id, self.mask_token_id]])
            ids = ids.to(device)
            attn = torch.ones_like(ids, dtype=torch.bool)
            positions = torch.tensor([[False, True, False, True]], device=device)
            full = self._logits(ids, attn, None)[positions]  # (2, V)
            self.output_head = head
            gathered = self._logits(ids, attn, positions)  # (2, V)
            tol = 1e-4 if full.dtype in (torch.float32, torch.float64) else 3e-2  # a wrong gather is off by O(1)
            same = gathered.shape == full.shape and torch.allclose(gathered, full, rtol=tol, atol=tol)
        except (RuntimeError, ValueError, IndexError):
            same = False
        finally:
            self.output_head = None
            self.net.train(was_training)
        return head if same else None

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the wrapped model's layers in the backward pass (transformers' own switch, non-reentrant).

        transformers checkpoints a layer only in training mode, but the RL trainer scores in eval mode (no
        dropout: old and new scores must agree). So while gradients are recorded, the adapter marks the
        checkpointed layers themselves as training, not their children: their dropout stays off.
        Raises ValueError for a model without checkpointing support.
        """
        enable = getattr(self.net, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Switch transformers' checkpointing off again."""
        disable = getattr(self.net, "activation_checkpointing_disable", None) or self.net.gradient_checkpointing_disable
        disable()
        self._checkpointing = False

    @contextlib.contextmanager
    def _checkpointed_layers_training(self) -> Iterator[None]:
        if not (self._checkpointing and torch.is_grad_enabled()):
            yield
            return
        layers = [m for m in self.net.modules() if getattr(m, "gradient_checkpointing", False) is True]
        flags = [m.training for m in layers]
        for m in layers:
            m.training = True  # the module alone (no .train()): its children keep their mode
        try:
            yield
        finally:
            for m, flag in zip(layers, flags, strict=True):
                m.training = flag

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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (N, T, V) for input_ids (N, T) long; attention_mask (N, T) bool, False on padding.

        ``positions`` returns the logits there only: a slice gives (N, Tp, V), an (N, T) bool tensor (M, V) in
        row-major order. The wrapped model still runs every position through its layers; with a probed
        ``output_head`` only the output projection is restricted to them (the (N, T, V) logits are never
        made), otherwise the full logits are sliced, which saves the caller's memory, not compute.
        """
        if positions is not None and self.output_head is None:
            logits = self._logits(input_ids, attention_mask, None)
            return logits[:, positions] if isinstance(positions, slice) else logits[positions]
        return self._logits(input_ids, attention_mask, positions)

    def _logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: slice | torch.Tensor | None
    ) -> torch.Tensor:
        """The wrapped model's logits, unshifted and cut to the vocabulary; with ``positions`` (only when
        ``output_head`` is set) its output projection sees the hidden states there alone."""
        gather = positions is not None
        self._gather = positions
        handle = self.output_head.register_forward_pre_hook(self._gather_hidden) if gather else None
        try:
            with self._checkpointed_layers_training():
                if self.dream_style_inputs:
                    logits = self._dream_forward(input_ids, attention_mask)
                else:
                    if self.ignores_attention_mask and not self._padding_warned and attention_mask is not None:
                        self._warn_if_padded(attention_mask)
                    mask = None if attention_mask is None else attention_mask.long()
                    logits = self.net(input_ids=input_ids, attention_mask=mask).logits  # (N, T, V')
        finally:
            self._gather = None
            if handle is not None:
                handle.remove()
        if self.logits_shift and not gather:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i now predicts token i
        return logits[..., : self.vocab_size]  # padded embedding rows are not tokens

    def _gather_hidden(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook of the output projection: keep the hidden states at ``self._gather`` only. With
        shifted logits (Dream) the logits at position i come from the hidden state at max(i - 1, 0)."""
        hidden, *rest = args  # (N, T, C)
        if self._gather is None:
            return None
        if hidden.dim() != 3:  # e.g. unpadded (tokens, C) hidden states: the probe falls back to slicing
            raise RuntimeError(f"output projection got hidden states of shape {tuple(hidden.shape)}, not (N, T, C)")
        shift = int(self.logits_shift)
        if isinstance(self._gather, slice):
            cols = torch.arange(hidden.shape[1], device=hidden.device)[self._gather]  # (Tp,)
            return (hidden[:, (cols - shift).clamp(min=0)], *rest)  # (N, Tp, C)
        rows, cols = self._gather.nonzero(as_tuple=True)  # (M,), (M,) in row-major order
        return (hidden[rows, (cols - shift).clamp(min=0)], *rest)  # (M, C)

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
