"""Models behind the MaskedDiffusionLM interface: the tiny transformer, the HF adapter, LoRA.

HF models are written offline to tmp_path by the helpers below:
- ``write_bert``: a BERT masked LM + WordPiece tokenizer (the AutoModelForMaskedLM path).
- ``write_remote_code_model``: a custom-code model with LLaDA's interface (``model(input_ids).logits``,
  bidirectional, ``mask_token_id`` in its config, not in its tokenizer), loaded through
  ``trust_remote_code=True`` and ``auto_map``, as LLaDA is. ``ignore_mask=True`` makes it ignore its
  attention mask, as LLaDA's stock code does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dipod.language.config import ModelConfig
from dipod.language.lora import TINY_LORA_TARGETS, adapter_parameters, frozen_copy, reference_mode
from dipod.language.model_hf import HFMaskedLM
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM
from dipod.language.models import MaskedDiffusionLM, build_model, build_tokenizer
from dipod.language.sampler import generate
from dipod.language.tokenizer import CharTokenizer

CHARS = list("0123456789abcdef")

CONFIGURATION_SRC = """
from transformers import PretrainedConfig


class TinyLladaConfig(PretrainedConfig):
    model_type = "tiny_llada"

    def __init__(self, vocab_size=32, d_model=32, n_heads=2, mask_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
"""

MODELING_SRC = """
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_llada import TinyLladaConfig


class TinyLladaModel(PreTrainedModel):
    config_class = TinyLladaConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(128, config.d_model)
        self.attn = nn.MultiheadAttention(config.d_model, config.n_heads, batch_first=True)
        self.ff_out = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.5)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.wte(input_ids) + self.wpe(pos)
        pad = None if attention_mask is None else attention_mask == 0
        h = h + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]  # no causal mask
        return CausalLMOutputWithPast(logits=self.ff_out(h))
"""


def write_bert(directory: Path) -> Path:
    """A 1-layer BERT masked LM and its tokenizer, saved to ``directory``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS]
    (directory / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    return directory


DREAM_CONFIGURATION_SRC = CONFIGURATION_SRC.replace("TinyLladaConfig", "DreamConfig").replace('"tiny_llada"', '"Dream"')

DREAM_MODELING_SRC = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_dream import DreamConfig


class DreamModel(PreTrainedModel):
    """Dream's interface: (input_ids, attention_mask "full" or (N, 1, T, T) bool, position_ids), and logits
    at position i that predict token i + 1 (here exactly: a large logit on the next input token)."""

    config_class = DreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.unused = nn.Linear(2, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        n, t = input_ids.shape
        if isinstance(attention_mask, str):
            assert attention_mask == "full" and position_ids is None
        else:
            assert attention_mask.dtype == torch.bool and attention_mask.shape == (n, 1, t, t)
            assert position_ids.shape == (n, t)
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        logits = 10.0 * nn.functional.one_hot(nxt, self.config.vocab_size).float()
        return CausalLMOutputWithPast(logits=logits)
'''


def _tokenizer_files(directory: Path, mask_token: str | None) -> dict[str, int]:
    """A one-token-per-character tokenizer; ``mask_token`` is registered as the tokenizer's mask token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_tokens = ["<pad>", "<unk>", "<eos>", *CHARS, "<|mdm_mask|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()  # one character per token: decode without separators
    extra = {"mask_token": mask_token} if mask_token else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", **extra
    )
    tokenizer.save_pretrained(directory)
    return vocab


def _save_custom_code(directory: Path, files: dict[str, str], config_cls: str, model_cls: str, **config_kwargs) -> None:
    """Write the code files, import them as a package, save an instance with ``auto_map`` pointing at them."""
    config_module, model_module = (name.removesuffix(".py") for name in files)
    for name, src in files.items():
        (directory / name).write_text(src)
    package = "custom_code_" + str(abs(hash(str(directory))))
    spec = importlib.util.spec_from_file_location(
        package, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    (directory / "__init__.py").write_text("")
    sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        config = getattr(importlib.import_module(f"{package}.{config_module}"), config_cls)(**config_kwargs)
        config.auto_map = {"AutoConfig": f"{config_module}.{config_cls}", "AutoModel": f"{model_module}.{model_cls}"}
        torch.manual_seed(0)
        getattr(importlib.import_module(f"{package}.{model_module}"), model_cls)(config).save_pretrained(directory)
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]
    (directory / "__init__.py").unlink()
    saved = json.loads((directory / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"].endswith(model_cls), saved


MASK_IGNORING_MODELING_SRC = MODELING_SRC.replace(
    "pad = None if attention_mask is None else attention_mask == 0", "pad = None  # attention_mask ignored"
)
assert MASK_IGNORING_MODELING_SRC != MODELING_SRC


def write_remote_code_model(directory: Path, *, ignore_mask: bool = False) -> Path:
    """The custom-code LLaDA-like model + a tokenizer whose mask token is known only to the config."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_files(directory, mask_token=None)
    modeling = MASK_IGNORING_MODELING_SRC if ignore_mask else MODELING_SRC
    files = {"configuration_tiny_llada.py": CONFIGURATION_SRC, "modeling_tiny_llada.py": modeling}
    _save_custom_code(
        directory,
        files,
        "TinyLladaConfig",
        "TinyLladaModel",
        vocab_size=len(vocab),
        mask_token_id=vocab["<|mdm_mask|>"],
    )
    return directory


def write_dream_like_model(directory: Path) -> Path:
    """A custom-code model with Dream's quirks (model_type Dream, shifted logits, 4-D mask); mask in the tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_files(directory, mask_token="<|mdm_mask|>")
    files = {"configuration_dream.py": DREAM_CONFIGURATION_SRC, "modeling_dream.py": DREAM_MODELING_SRC}
    _save_custom_code(directory, files, "DreamConfig", "DreamModel", vocab_size=len(vocab))
    return directory


# --------------------------------------------------------------------------- tiny model

SEED = 0


def tiny(finetune: str = "full", **overrides) -> tuple[MaskedDiffusionLM, CharTokenizer]:
    cfg = ModelConfig(**{"n_layer": 2, "n_embd": 32, "n_head": 2, "max_seq_len": 64, "finetune": finetune, **overrides})
    tok = build_tokenizer(cfg)
    return build_model(cfg, tokenizer=tok, generator=torch.Generator().manual_seed(SEED)), tok


def test_tiny_model_implements_the_interface_with_ids_from_its_tokenizer():
    model, tok = tiny()
    assert isinstance(model, MaskedDiffusionLM)
    assert (model.mask_token_id, model.pad_token_id, model.eos_token_id) == (
        tok.mask_token_id,
        tok.pad_token_id,
        tok.eos_token_id,
    )
    ids, attn = tok.batch_encode(["12+3", "7"])
    logits = model(ids, attn)
    assert logits.shape == (2, ids.shape[1], tok.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_model_is_bidirectional():
    model, tok = tiny()
    ids = torch.tensor([tok.encode("123456")])
    changed = ids.clone()
    changed[0, -1] = tok.encode("9")[0]
    # A causal model's first position could not see the last token; this one must.
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_left_padding_does_not_change_logits_of_real_tokens():
    model, tok = tiny()
    ids, attn = tok.batch_encode(["12345", "345"])  # second row left-padded by 2
    alone = model(torch.tensor([tok.encode("345")]))
    torch.testing.assert_close(model(ids, attn)[1, 2:], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layer", [1, 3])
def test_logits_at_positions_equal_the_full_forward_there(n_layer):
    model, tok = tiny(n_layer=n_layer)
    ids, attn = tok.batch_encode(["12+3=15", "7*8"])  # second row left-padded
    full = model(ids, attn)
    for positions in (slice(2, 5), slice(0, ids.shape[1]), slice(6, 7)):
        part = model(ids, attn, positions=positions)
        assert part.shape == (2, positions.stop - positions.start, tok.vocab_size)
        torch.testing.assert_close(part, full[:, positions], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(ids, positions=slice(1, 3)), model(ids)[:, 1:3], rtol=1e-5, atol=1e-5)


def test_same_generator_same_weights_and_save_load_roundtrip(tmp_path):
    global_state = torch.get_rng_state()
    a, tok = tiny()
    assert torch.equal(torch.get_rng_state(), global_state), "building the model used the global RNG"
    b, _ = tiny()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = TinyMaskedLM(a.config, generator=torch.Generator().manual_seed(SEED + 1))
    assert not torch.equal(a.wte.weight, c.wte.weight)

    a.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    cfg = ModelConfig(path=str(tmp_path / "m"))
    loaded = build_model(cfg)
    ids = torch.tensor([tok.encode("31+4")])
    assert torch.equal(loaded(ids), a(ids))
    assert loaded.config == a.config


def test_tiny_config_rejects_ids_outside_vocab():
    with pytest.raises(ValueError, match="mask_token_id"):
        TinyConfig(vocab_size=10, mask_token_id=10, pad_token_id=0, eos_token_id=1)


# --------------------------------------------------------------------------- HF adapter


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_bert_masked_lm_through_automodelformaskedlm(tmp_path):
    path = write_bert(tmp_path / "bert")
    cfg = ModelConfig(kind="hf", path=str(path))
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    assert isinstance(model, HFMaskedLM) and isinstance(model, MaskedDiffusionLM)
    assert model.mask_token_id == tok.hf.mask_token_id == tok.hf.convert_tokens_to_ids("[MASK]")
    ids, attn = tok.batch_encode(["1 2 3", "a"])
    logits = model(ids, attn)
    assert logits.shape == (2, ids.shape[1], model.vocab_size)
    out = generate(
        model,
        ids,
        attention_mask=attn,
        mask_id=model.mask_token_id,
        eos_id=model.eos_token_id,
        gen_length=4,
        block_length=2,
        steps=4,
        generator=None,
    )
    assert out.nfe == 4 and not (out.completion == model.mask_token_id).any()
    torch.testing.assert_close(model(ids, attn, positions=slice(2, 4)), logits[:, 2:4])


def test_remote_code_model_reads_mask_id_from_config_and_is_bidirectional(tmp_path):
    path = write_remote_code_model(tmp_path / "llada")
    config_mask_id = json.loads((path / "config.json").read_text())["mask_token_id"]
    cfg = ModelConfig(kind="hf", path=str(path), trust_remote_code=True)
    tok = build_tokenizer(cfg)
    assert tok.hf.mask_token_id is None  # only the config knows it, as with LLaDA
    model = build_model(cfg, tokenizer=tok)
    assert type(model.net).__name__ == "TinyLladaModel"
    assert model.mask_token_id == config_mask_id == tok.hf.convert_tokens_to_ids("<|mdm_mask|>")
    assert model.eos_token_id == tok.hf.convert_tokens_to_ids("<eos>")

    ids = torch.tensor([tok.encode("123abc")])
    changed = ids.clone()
    changed[0, -1] = tok.encode("f")[0]
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])
    out = generate(
        model,
        ids,
        mask_id=model.mask_token_id,
        eos_id=model.eos_token_id,
        gen_length=4,
        block_length=4,
        steps=2,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.nfe == 2 and torch.equal(out.tokens[:, :6], ids)


def test_dream_style_model_gets_unshifted_logits_and_a_4d_mask(tmp_path):
    path = write_dream_like_model(tmp_path / "dream")
    cfg = ModelConfig(kind="hf", path=str(path), trust_remote_code=True)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    assert model.logits_shift and model.mask_token_id == tok.hf.mask_token_id
    ids, attn = tok.batch_encode(["12ab", "3c"])  # second row left-padded: 4-D mask and position ids
    for mask in (attn, None):
        logits = model(ids, mask)
        # The net predicts the next token at i; after the shift, position i >= 1 predicts token i itself.
        assert torch.equal(logits[:, 1:].argmax(-1), ids[:, 1:])
    out = generate(
        model, ids, attention_mask=attn, mask_id=model.mask_token_id, eos_id=model.eos_token_id,
        gen_length=2, block_length=2, steps=2, generator=None,
    )  # fmt: skip
    assert out.nfe == 2
    torch.testing.assert_close(model(ids, attn, positions=slice(1, 3)), model(ids, attn)[:, 1:3])


def test_missing_path_and_missing_mask_token_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"model\.path"):
        ModelConfig(kind="hf")
    path = write_remote_code_model(tmp_path / "llada")
    cfg_json = json.loads((path / "config.json").read_text())
    del cfg_json["mask_token_id"]
    (path / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ValueError, match="mask token"):
        build_tokenizer(ModelConfig(kind="hf", path=str(path), trust_remote_code=True))
    tok = build_tokenizer(ModelConfig(kind="hf", path=str(path), trust_remote_code=True, mask_token="<|mdm_mask|>"))
    assert tok.mask_token_id == tok.hf.convert_tokens_to_ids("<|mdm_mask|>")


def test_bert_saves_and_reloads_through_the_adapter(tmp_path):
    cfg = ModelConfig(kind="hf", path=str(write_bert(tmp_path / "bert")))
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    with torch.no_grad():
        model.net.bert.embeddings.word_embeddings.weight.add_(0.1)  # differ from the files it was loaded from
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    cfg2 = ModelConfig(kind="hf", path=str(tmp_path / "saved"))
    tok2 = build_tokenizer(cfg2)
    loaded = build_model(cfg2, tokenizer=tok2)
    assert (tok2.mask_token_id, tok2.pad_token_id, tok2.eos_token_id) == (
        tok.mask_token_id,
        tok.pad_token_id,
        tok.eos_token_id,
    )
    ids, attn = tok.batch_encode(["1 2 3", "a"])
    assert torch.equal(tok2.batch_encode(["1 2 3", "a"])[0], ids)
    torch.testing.assert_close(loaded(ids, attn), model(ids, attn), rtol=0, atol=0)


def test_remote_code_model_saves_its_code_and_reloads(tmp_path):
    cfg = ModelConfig(kind="hf", path=str(write_remote_code_model(tmp_path / "llada")), trust_remote_code=True)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "modeling_tiny_llada.py").is_file()
    loaded = build_model(cfg.model_copy(update={"path": str(tmp_path / "saved")}))
    assert loaded.mask_token_id == model.mask_token_id  # from the saved config, as LLaDA's
    ids = torch.tensor([tok.encode("12ab")])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_a_model_that_ignores_its_attention_mask_is_detected_and_warns_once(tmp_path):
    path = write_remote_code_model(tmp_path / "llada_no_mask", ignore_mask=True)  # own name: own code module
    cfg = ModelConfig(kind="hf", path=str(path), trust_remote_code=True)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    assert model.ignores_attention_mask
    ids, attn = tok.batch_encode(["12ab", "3c"])  # second row left-padded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(ids[:1], attn[:1])  # no padding: nothing to warn about
        assert not caught
        model(ids, attn)
        model(ids, attn)
    assert len(caught) == 1 and "padding tokens are visible" in str(caught[0].message)
    assert "one prompt per batch" in str(caught[0].message)


def test_a_model_that_honours_its_attention_mask_gives_no_warning(tmp_path):
    cfg = ModelConfig(kind="hf", path=str(write_remote_code_model(tmp_path / "llada")), trust_remote_code=True)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tok)
    assert not model.ignores_attention_mask
    ids, attn = tok.batch_encode(["12ab", "3c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, attn)
    bert = build_model(ModelConfig(kind="hf", path=str(write_bert(tmp_path / "bert"))))
    assert not bert.ignores_attention_mask


# --------------------------------------------------------------------------- LoRA and the reference policy


def _one_step(model: nn.Module, ids: torch.Tensor) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = -torch.log_softmax(model(ids), -1)[..., 5].mean()
    loss.backward()
    opt.step()


def test_lora_step_changes_only_adapter_weights_and_disabled_adapter_is_the_base_model():
    base, tok = tiny()
    model, _ = tiny(finetune="lora")
    ids = torch.tensor([tok.encode("12+34=46")])
    base_logits = base(ids)
    torch.testing.assert_close(model(ids), base_logits)  # B = 0 at init: LoRA starts as the base model

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _one_step(model, ids)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing changed"
    assert changed <= set(adapter_parameters(model)), (
        f"non-adapter weights changed: {changed - set(adapter_parameters(model))}"
    )
    assert any("lora_B" in n for n in changed)

    assert not torch.allclose(model(ids), base_logits)
    with reference_mode(model) as ref:
        torch.testing.assert_close(ref(ids), base_logits)
    assert not torch.allclose(model(ids), base_logits)  # adapters back on after the block
    assert all(p.requires_grad for p in adapter_parameters(model).values())


def test_lora_init_comes_from_the_generator():
    global_state = torch.get_rng_state()
    a, _ = tiny(finetune="lora")
    b, _ = tiny(finetune="lora")
    assert torch.equal(torch.get_rng_state(), global_state), "LoRA init used the global RNG"
    lora_a = {n: p for n, p in adapter_parameters(a).items() if "lora_A" in n}
    assert lora_a
    for name, p in lora_a.items():
        assert torch.equal(p, adapter_parameters(b)[name]) and p.abs().sum() > 0


def test_lora_on_an_hf_model_with_its_own_module_names(tmp_path):
    path = write_bert(tmp_path / "bert")
    cfg = ModelConfig(kind="hf", path=str(path), finetune="lora", lora_target_modules=["query", "value"])
    model = build_model(cfg)
    tok = build_tokenizer(cfg)
    ids = torch.tensor([tok.encode("1 2 3")])
    base = model(ids).detach()
    _one_step(model, ids)
    with reference_mode(model) as ref:
        torch.testing.assert_close(ref(ids), base)
    with pytest.raises(ValueError):
        build_model(cfg.model_copy(update={"lora_target_modules": ["no_such_module"]}))


def test_full_finetuning_reference_is_a_frozen_copy():
    model, tok = tiny()
    ids = torch.tensor([tok.encode("9+9=18")])
    ref_model = frozen_copy(model)
    base_logits = model(ids).detach()
    with pytest.raises(ValueError, match="frozen"), reference_mode(model):
        pass
    _one_step(model, ids)
    assert not torch.allclose(model(ids), base_logits)
    with reference_mode(model, frozen=ref_model) as ref:
        assert ref is ref_model
        torch.testing.assert_close(ref(ids), base_logits)
    assert not any(p.requires_grad for p in ref_model.parameters())


def _adapted_modules(model: nn.Module) -> set[str]:
    """Last name parts of the modules that hold adapters ('...attention.self.query.lora_A.default.weight')."""
    return {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapter_parameters(model)}


def test_lora_without_named_targets_uses_the_architectures_defaults(tmp_path):
    # BERT: peft's defaults for model_type "bert" are query and value
    cfg = ModelConfig(kind="hf", path=str(write_bert(tmp_path / "bert")), finetune="lora")
    assert cfg.lora_target_modules is None
    model = build_model(cfg)
    assert _adapted_modules(model) == {"query", "value"}
    # the tiny model: its attention and MLP projections
    tiny_model = build_model(ModelConfig(finetune="lora"))
    assert _adapted_modules(tiny_model) == set(TINY_LORA_TARGETS)


def test_lora_errors_name_the_models_linear_layers(tmp_path):
    path = write_bert(tmp_path / "bert")
    cfg = ModelConfig(kind="hf", path=str(path), finetune="lora", lora_target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"its linear layers are: .*query.*value"):
        build_model(cfg)
    remote = write_remote_code_model(tmp_path / "llada")  # a model_type peft has no defaults for
    with pytest.raises(ValueError, match=r"no default LoRA targets for model_type .*lora_target_modules"):
        build_model(ModelConfig(kind="hf", path=str(remote), trust_remote_code=True, finetune="lora"))
    with pytest.raises(ValueError, match="empty"):
        ModelConfig(lora_target_modules=[])


def test_a_missing_hf_model_directory_is_named_without_a_hub_message(tmp_path):
    missing = tmp_path / "no_such_model"
    for build in (build_tokenizer, build_model):
        with pytest.raises(FileNotFoundError, match=r"no_such_model.*not an existing local directory.*nothing is"):
            build(ModelConfig(kind="hf", path=str(missing)))
