"""A tiny bidirectional transformer masked diffusion LM, in the style of nanoGPT's model.py.

Same blocks as a GPT (pre-LayerNorm, attention, MLP), but attention is full (``is_causal=False``):
a masked diffusion model predicts every masked token from all unmasked ones. Small enough to train
and sample on a CPU in seconds (2 layers, d = 128), which the tests and the CPU demo rely on.

The model also implements ``KVCacheLM`` (``cached_forward``): the keys and values of every layer are
kept between decoding steps, and only those in each row's window are recomputed (the prefix KV cache of
block-wise decoding; see ``dipod.language.sampler``).

Shape legend: N rows, T sequence length, Te the recomputed span, C embedding width (n_embd), H heads,
V vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.checkpoint import checkpoint

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "dipod-tiny"


@dataclass
class TinyConfig:
    """Size and special ids of a TinyMaskedLM; ids come from the tokenizer it was built for."""

    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    max_seq_len: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_layer < 1:
            raise ValueError(f"n_layer = {self.n_layer} must be at least 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} = {getattr(self, name)} is outside the vocabulary (size {self.vocab_size})")


@dataclass
class TinyKVCache:
    """Keys and values of every layer at every position, kept between decoding steps."""

    keys: list[torch.Tensor] = field(default_factory=list)
    """Per layer, (N, H, T, C/H)."""
    values: list[torch.Tensor] = field(default_factory=list)
    """Per layer, (N, H, T, C/H)."""

    def select(self, rows: torch.Tensor) -> TinyKVCache:
        """The cache of ``rows`` ((n,) long indices) only, in that order."""
        return TinyKVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])

    def replace(self, rows: torch.Tensor, other: TinyKVCache) -> None:
        """Overwrite (in place) the cache of ``rows`` ((n,) long) with ``other``'s n rows."""
        for mine, theirs in zip([*self.keys, *self.values], [*other.keys, *other.values], strict=True):
            mine.index_copy_(0, rows, theirs)


@dataclass
class _Placement:
    """Where the positions a cached forward recomputes sit: a span [start, end) shared by every row, with
    ``window`` (N, Te) bool marking each row's own recomputed part (None: all of it), or, when every row
    recomputes a window of the same width at its own place, per-row positions ``index`` (N, Te)."""

    start: int
    end: int
    window: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.end - self.start if self.index is None else self.index.shape[1]

    def take(self, y: torch.Tensor) -> torch.Tensor:
        """(N, T) or (N, T, C) -> the recomputed positions, (N, Te) or (N, Te, C)."""
        if self.index is None:
            return y[:, self.start : self.end]
        index = self.index if y.dim() == 2 else self.index[..., None].expand(-1, -1, y.shape[-1])
        return y.gather(1, index)

    def merge(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Cached keys or values (N, H, T, C/H) with the recomputed ones (N, H, Te, C/H) in their places."""
        if self.index is not None:
            index = self.index[:, None, :, None].expand(-1, old.shape[1], -1, old.shape[3])  # (N, H, Te, C/H)
            return old.scatter(2, index, new)
        if self.window is not None:
            new = torch.where(self.window[:, None, :, None], new, old[:, :, self.start : self.end])
        return torch.cat([old[:, :, : self.start], new, old[:, :, self.end :]], 2)

    def relative(self, positions: slice | torch.Tensor) -> slice | torch.Tensor:
        """``positions`` (a slice, or (N, Tp) long per row) as indices into the recomputed positions."""
        if isinstance(positions, slice) and self.index is None:
            rel = slice(positions.start - self.start, positions.stop - self.start)
            ok = 0 <= rel.start < rel.stop <= self.width
        else:
            if isinstance(positions, slice):
                positions = torch.arange(positions.start, positions.stop, device=self.index.device)[None, :]
            offset = self.start if self.index is None else self.index[:, :1]
            rel = positions - offset  # (N, Tp)
            ok = bool((rel >= 0).all()) and bool((rel < self.width).all())
        if not ok:
            raise ValueError(f"positions must lie in the recomputed span or windows, got {positions}")
        return rel


def take_positions(y: torch.Tensor, positions: slice | torch.Tensor | None) -> torch.Tensor:
    """(N, T, C) -> (N, Tp, C) at ``positions``: a slice, (N, Tp) long per row, or None (all)."""
    if positions is None:
        return y
    if isinstance(positions, slice):
        return y[:, positions]
    return y.gather(1, positions[..., None].expand(-1, -1, y.shape[-1]))


class SelfAttention(nn.Module):
    """Multi-head bidirectional self-attention through scaled_dot_product_attention."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, queries: slice | None = None) -> torch.Tensor:
        """Attention output (N, T, C), or (N, Tq, C) at the ``queries`` positions only (keys: every position)."""
        q = self._heads(self.q_proj(x if queries is None else x[:, queries]))  # (N, H, Tq, C/H)
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))  # (N, H, T, C/H)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )  # (N, H, Tq, C/H)
        n, _, t_q, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(n, t_q, x.shape[-1]))

    def forward_cached(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        place: _Placement,
        queries: slice | torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of the recomputed positions' queries over keys/values recomputed there and cached elsewhere.

        Args:
            x: (N, Te) the (normalised) inputs of the recomputed positions (``place``).
            past: cached keys and values, each (N, H, T, C/H); None: the recomputed positions are all of them.
            queries: the outputs wanted, relative to the recomputed positions (slice or (N, Tq) long); None: all.
        Returns:
            Output (N, Tq, C), and the keys/values attended, each (N, H, T, C/H).
        """
        q = self._heads(self.q_proj(take_positions(x, queries)))  # (N, H, Tq, C/H)
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))  # (N, H, Te, C/H)
        if past is not None:
            k, v = place.merge(past[0], k), place.merge(past[1], v)  # (N, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)  # (N, H, Tq, C/H)
        n, _, t_q, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(n, t_q, x.shape[-1])), (k, v)

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        n, t, c = y.shape
        return y.view(n, t, self.n_head, c // self.n_head).transpose(1, 2)  # (N, H, T, C/H)


class MLP(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.down_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down_proj(F.gelu(self.up_proj(x))))


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, queries: slice | None = None) -> torch.Tensor:
        """(N, T, C) -> (N, T, C), or (N, Tq, C) when only the ``queries`` positions are wanted."""
        residual = x if queries is None else x[:, queries]
        x = residual + self.attn(self.ln_1(x), key_mask, queries)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        place: _Placement,
        queries: slice | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(N, Te, C) -> (N, Tq, C) with cached keys/values (``SelfAttention.forward_cached``), and those attended."""
        residual = take_positions(x, queries)
        y, kv = self.attn.forward_cached(self.ln_1(x), key_mask, past, place, queries)
        x = residual + y
        return x + self.mlp(self.ln_2(x)), kv


class TinyMaskedLM(nn.Module):
    """Bidirectional transformer returning logits for every position; implements ``MaskedDiffusionLM``."""

    def __init__(self, cfg: TinyConfig, *, generator: torch.Generator | None = None) -> None:
        """Build the network; weights are N(0, 0.02) drawn from ``generator`` (a fixed seed-0 one if None)."""
        super().__init__()
        self.config = cfg
        # Built on the meta device, then every weight is drawn by reset_parameters: torch's default
        # initialisers would draw from (and advance) the global RNG.
        with torch.device("meta"):
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.n_embd)
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.to_empty(device="cpu")
        self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass instead of keeping them."""

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def pad_token_id(self) -> int:
        return self.config.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.config.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """GPT-2 init from an explicit generator: N(0, 0.02) weights, zero biases, and residual
        projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
        residual_std = 0.02 / (2 * self.config.n_layer) ** 0.5
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # LayerNorm gains
                p.fill_(1.0)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.normal_(0.0, std, generator=generator)

    def gradient_checkpointing_enable(self) -> None:
        """Keep only each block's input for the backward pass and recompute the block there (torch.utils.checkpoint):
        activation memory of one block instead of all, for about one more forward pass of time. Active whenever
        gradients are recorded, in eval mode too (the RL trainer scores without dropout)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every block's activations again (the default)."""
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (N, T, V) for input_ids (N, T) long; attention_mask (N, T) bool hides padding keys.

        With ``positions`` only the logits there are returned: a slice gives (N, Tp, V); an (N, T) bool tensor
        gives (M, V) at its M True positions, in row-major order (as ``logits[positions]``). The last block then
        computes its queries, MLP and output head over the span of those positions alone (its keys and values
        still see the whole sequence), and the output head only at the positions themselves, so they equal the
        full forward's logits there at a fraction of the cost. The sampler asks for the current block; ELBO
        scoring for the masked completion tokens.
        """
        pos, key_mask = self._positions_and_key_mask(input_ids, attention_mask)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (N, T, C)
        *inner, last = self.blocks
        for block in inner:
            x = self._block(block, x, key_mask, None)
        selected = isinstance(positions, torch.Tensor)
        span = _covering_span(positions, input_ids.shape[1]) if selected else positions
        x = self._block(last, x, key_mask, span)  # (N, Tp, C)
        if selected:
            x = x[positions[:, span]]  # (M, C): hidden states of the selected positions only
        return self.lm_head(self.ln_f(x))  # (N, Tp, V) or (M, V)

    def _positions_and_key_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids (1 or N, T) and the key mask (N, 1, 1, T) bool (None without an attention mask)."""
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len = {self.config.max_seq_len}")
        key_mask = None
        pos = torch.arange(t, device=input_ids.device)[None, :]  # (1, T)
        if attention_mask is not None:
            keys = attention_mask.bool()
            # Positions count real tokens only, so left padding does not shift them (same logits padded or not).
            pos = (keys.long().cumsum(-1) - 1).clamp(min=0)  # (N, T)
            # An all-padding row attends everywhere instead of to nothing (which would give NaN).
            keys = keys | ~keys.any(-1, keepdim=True)
            key_mask = keys[:, None, None, :]  # (N, 1, 1, T) broadcast over heads and queries
        return pos, key_mask

    @torch.no_grad()
    def cached_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: TinyKVCache | None,
        fresh_lo: torch.Tensor | None = None,
        fresh_hi: torch.Tensor | None = None,
        positions: slice | torch.Tensor,
    ) -> tuple[torch.Tensor, TinyKVCache]:
        """Logits at ``positions`` (N, Tp, V), with the keys/values outside each row's window taken from ``cache``.

        Row n recomputes the keys and values of positions fresh_lo[n] <= i < fresh_hi[n] from ``input_ids``
        in every layer and takes the others from ``cache``. The hidden states are computed on those windows
        alone when they all have one width (each row at its own place), else on the span [min fresh_lo,
        max fresh_hi), which must contain ``positions``. With ``cache=None`` everything is recomputed: that
        is the exact forward (same logits as ``forward``), and its cache is the one to reuse. The returned
        cache holds the keys/values attended, so passing it back with the same windows is exact for every
        position outside them (what Fast-dLLM's prefix cache approximates). Inference only (no dropout).

        Args:
            input_ids: (N, T) long. attention_mask: (N, T) bool, False on padding.
            fresh_lo, fresh_hi: (N,) long, each row's recomputed window; required with a cache.
            positions: a slice, or (N, Tp) long, each row's own positions.
        """
        n, t = input_ids.shape
        pos, key_mask = self._positions_and_key_mask(input_ids, attention_mask)
        place = self._placement(n, t, cache, fresh_lo, fresh_hi)
        queries = place.relative(positions)
        pasts = [None] * len(self.blocks) if cache is None else list(zip(cache.keys, cache.values, strict=True))
        x = self.wte(place.take(input_ids)) + self.wpe(place.take(pos.expand(n, -1)))  # (N, Te, C)
        new = TinyKVCache()
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, (k, v) = block.forward_cached(x, key_mask, pasts[i], place, queries if last else None)  # (N, Te|Tp, C)
            new.keys.append(k)
            new.values.append(v)
        return self.lm_head(self.ln_f(x)), new  # (N, Tp, V)

    @staticmethod
    def _placement(
        n: int, t: int, cache: TinyKVCache | None, fresh_lo: torch.Tensor | None, fresh_hi: torch.Tensor | None
    ) -> _Placement:
        """Where ``cached_forward`` recomputes: everything, one shared span, or one window per row."""
        if cache is None:
            return _Placement(0, t)
        if fresh_lo is None or fresh_hi is None or fresh_lo.shape != (n,) or fresh_hi.shape != (n,):
            raise ValueError(f"a cache needs fresh_lo and fresh_hi of shape ({n},)")
        start, end = int(fresh_lo.min()), int(fresh_hi.max())
        if start == int(fresh_lo.max()) and end == int(fresh_hi.min()):
            return _Placement(start, end)  # one window for every row: splice it in, no per-position choice
        width = fresh_hi - fresh_lo  # (N,)
        if int(width.min()) == int(width.max()):  # rows at their own places, one width: gather them
            index = fresh_lo[:, None] + torch.arange(int(width[0]), device=fresh_lo.device)  # (N, W)
            return _Placement(start, end, index=index)
        span = torch.arange(start, end, device=fresh_lo.device)[None, :]  # (1, Te)
        return _Placement(start, end, window=(span >= fresh_lo[:, None]) & (span < fresh_hi[:, None]))

    def _block(
        self, block: Block, x: torch.Tensor, key_mask: torch.Tensor | None, queries: slice | None
    ) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, key_mask, queries, use_reentrant=False)
        return block(x, key_mask, queries)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"model_type": MODEL_TYPE, **asdict(self.config)}, indent=2))
        save_model(self, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> TinyMaskedLM:
        """Load a model written by ``save_pretrained``."""
        directory = Path(directory)
        payload = json.loads((directory / CONFIG_FILE).read_text())
        if payload.pop("model_type", None) != MODEL_TYPE:
            raise ValueError(f"{directory / CONFIG_FILE} is not a {MODEL_TYPE} config")
        model = cls(TinyConfig(**payload))
        load_model(model, str(directory / WEIGHTS_FILE), device=str(map_location))
        return model


def _covering_span(positions: torch.Tensor, length: int) -> slice:
    """The smallest slice of columns that holds every True of an (N, T) bool ``positions`` (one host sync)."""
    if positions.dtype != torch.bool or positions.dim() != 2 or positions.shape[1] != length:
        raise ValueError(
            f"positions must be an (N, {length}) bool tensor, got {positions.dtype} {tuple(positions.shape)}"
        )
    cols = positions.any(0).nonzero()
    if cols.numel() == 0:
        return slice(0, 0)
    return slice(int(cols[0]), int(cols[-1]) + 1)
