"""Fine-tuning modes and the reference policy: LoRA adapters through peft, or full fine-tuning.

The reference policy (for KL or ELBO-difference terms) is the model before RL:
- with LoRA it is the same network with its adapters switched off, so it costs no memory;
- with full fine-tuning it is a frozen copy taken before the first update.
``reference_mode`` hides the difference: inside it, the yielded model is the reference.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

TINY_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
"""The built-in tiny model's attention and MLP projections: its LoRA targets unless the config names others."""


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's ``nn.Linear`` layers (what LoRA target names match)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def default_lora_targets(model: nn.Module, model_type: str | None) -> list[str]:
    """LoRA target names for a model whose config names none: the tiny model's projections (``model_type``
    None), or peft's defaults for the transformers architecture ``model_type``; an error naming the model's
    linear layers where peft has no default for it."""
    if model_type is None:
        return list(TINY_LORA_TARGETS)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise ValueError(
        f"peft has no default LoRA targets for model_type {model_type!r}; set model.lora_target_modules to some "
        f"of the model's linear layers: {', '.join(linear_module_names(model))}"
    )


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze every other weight.

    Works for any module tree (the tiny model, HF models): peft wraps the matching ``nn.Linear``
    layers; the adapter's B matrix starts at zero, so the model's outputs are unchanged. The A
    matrices are drawn from ``generator`` (peft's Kaiming-uniform init), and the global RNG is
    left as it was. Returns the same module.
    """
    from peft import LoraConfig, inject_adapter_in_model

    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    with torch.random.fork_rng(devices=[]):  # peft initialises from the global RNG; keep it untouched
        try:
            inject_adapter_in_model(lora_config, model)
        except ValueError as err:  # peft's "Target modules ... not found": say which names the model has
            if "not found" not in str(err):
                raise
    if not has_adapters(model):
        raise ValueError(
            f"no module of the model matches model.lora_target_modules {list(target_modules)}; its linear layers "
            f"are: {', '.join(linear_module_names(model))}"
        )
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if generator is not None and "lora_A" in name:
            with torch.no_grad():
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)  # peft's (and nn.Linear's) default
    return model


def _adapter_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model: nn.Module) -> bool:
    """True when peft adapters have been injected into ``model``."""
    return bool(_adapter_layers(model))


def adapter_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights by name (what a LoRA checkpoint needs to store)."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off and dropout off: the reference for full fine-tuning."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


@contextmanager
def reference_mode(model: nn.Module, *, frozen: nn.Module | None = None) -> Iterator[nn.Module]:
    """Yield the reference policy: ``model`` with adapters disabled (LoRA), or ``frozen`` (full fine-tuning).

    Adapters are re-enabled on exit, also when the body raises.

    Args:
        frozen: the frozen copy taken before training (``frozen_copy``); required without adapters.
    """
    layers = _adapter_layers(model)
    if not layers:
        if frozen is None:
            raise ValueError("the model has no adapters: full fine-tuning needs `frozen=frozen_copy(model)`")
        yield frozen
        return
    was_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled, strict=True):
            layer.enable_adapters(not disabled)
