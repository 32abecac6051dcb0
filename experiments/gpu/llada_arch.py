"""A LLaDA-architecture masked diffusion LM, initialised from a config, for transformers' remote-code loading.

LLaDA is a LLaMA-style transformer without the causal mask: RMSNorm before attention and before the MLP,
rotary positions, a SwiGLU MLP, no biases and an untied output head, predicting every masked token from all
the others. Module names follow LLaDA's own (``q_proj k_proj v_proj attn_out ff_proj up_proj ff_out``), so the
LoRA targets of ``configs/language/llada8b_gsm8k_fpo_dipod.yaml`` apply unchanged, and the mask id lives in the
config (``mask_token_id``) as in LLaDA's. ``experiments/gpu/prepare.py`` saves a fresh model with this file beside
its weights; ``AutoModel.from_pretrained(path, trust_remote_code=True)`` then loads it as it loads LLaDA.

Shape legend: N rows, T positions, C width (d_model), H heads, D head width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class LladaArchConfig(PretrainedConfig):
    model_type = "llada_arch"

    def __init__(
        self,
        vocab_size: int = 4096,
        d_model: int = 2048,
        n_layers: int = 20,
        n_heads: int = 16,
        mlp_hidden_size: int = 5504,
        rope_theta: float = 500_000.0,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        mask_token_id: int | None = None,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of (N, H, T, D) queries or keys, half-split layout."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, cfg: LladaArchConfig) -> None:
        super().__init__()
        width = cfg.d_model
        self.n_heads = cfg.n_heads
        self.attn_norm = RMSNorm(width, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.ff_norm = RMSNorm(width, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(width, cfg.mlp_hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(width, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        n, t, width = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(n, t, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # (N, H, T, D)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=False)  # bidirectional
        x = x + self.attn_out(a.transpose(1, 2).reshape(n, t, width))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LladaArchModel(PreTrainedModel):
    config_class = LladaArchConfig
    base_model_prefix = "model"
    _no_split_modules = ("Block",)

    def __init__(self, config: LladaArchConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def rotary(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (T, D) of the rotary angles at positions 0..T-1."""
        head = self.config.d_model // self.config.n_heads
        inv_freq = self.config.rope_theta ** (-torch.arange(0, head, 2, device=device, dtype=torch.float32) / head)
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> MaskedLMOutput:
        x = self.wte(input_ids)  # (N, T, C)
        cos, sin = self.rotary(input_ids.shape[1], x.device, x.dtype)
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (N, 1, 1, T)
        for block in self.blocks:
            x = block(x, cos, sin, keep)
        return MaskedLMOutput(logits=self.lm_head(self.ln_f(x)))  # (N, T, V)
