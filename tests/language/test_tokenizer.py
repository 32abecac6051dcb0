"""The built-in character tokenizer and the HF tokenizer adapter share one interface."""

from __future__ import annotations

import json

import pytest
import torch

from dipod.language.tokenizer import CharTokenizer, HFTokenizer, Tokenizer, pad_batch
from tests.language.test_models import write_bert, write_remote_code_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_char_tokenizer_roundtrip_and_distinct_special_ids():
    tok = CharTokenizer("0123456789+-=")
    assert isinstance(tok, Tokenizer)
    specials = {tok.pad_token_id, tok.mask_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(specials) == 4
    assert tok.vocab_size == 4 + 13
    ids = tok.encode("12+3=15", add_eos=True)
    assert len(ids) == 8 and ids[-1] == tok.eos_token_id
    assert not specials & set(ids[:-1])
    assert tok.decode(ids) == "12+3=15"
    assert tok.decode(ids, skip_special_tokens=False) == "12+3=15[EOS]"


def test_char_tokenizer_unknown_characters_and_duplicate_charset():
    tok = CharTokenizer("abca")  # duplicates are dropped, order kept
    assert tok.charset == "abc" and tok.vocab_size == 4 + 3
    assert tok.encode("axb") == [tok.encode("a")[0], tok.unk_token_id, tok.encode("b")[0]]
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="specials"):
        CharTokenizer("ab", specials=("[PAD]", "[MASK]"))


def test_batch_encode_pads_left_or_right_with_matching_attention_mask():
    tok = CharTokenizer("0123456789")
    ids, attn = tok.batch_encode(["123", "4"])
    assert ids.dtype == torch.long and attn.dtype == torch.bool
    assert ids.tolist() == [tok.encode("123"), [tok.pad_token_id] * 2 + tok.encode("4")]
    assert attn.tolist() == [[True] * 3, [False, False, True]]
    ids, attn = tok.batch_encode(["123", "4"], padding_side="right")
    assert ids[1].tolist() == tok.encode("4") + [tok.pad_token_id] * 2
    assert attn[1].tolist() == [True, False, False]
    assert tok.batch_decode(ids) == ["123", "4"]
    with pytest.raises(ValueError, match="padding_side"):
        pad_batch([[1]], pad_id=0, padding_side="middle")


def test_char_tokenizer_save_load(tmp_path):
    tok = CharTokenizer("xyz0123")
    tok.save_pretrained(tmp_path)
    loaded = CharTokenizer.from_pretrained(tmp_path)
    assert loaded.id_to_token == tok.id_to_token
    assert loaded.encode("x1z") == tok.encode("x1z")
    assert json.loads((tmp_path / "dipod_tokenizer.json").read_text())["charset"] == "xyz0123"


def test_hf_tokenizer_adapter_bert(tmp_path):
    path = write_bert(tmp_path / "bert")
    tok = HFTokenizer(path)
    assert isinstance(tok, Tokenizer)
    assert tok.mask_token_id == tok.hf.convert_tokens_to_ids("[MASK]")
    assert tok.pad_token_id == tok.hf.convert_tokens_to_ids("[PAD]")
    assert tok.eos_token_id == tok.hf.convert_tokens_to_ids("[SEP]")  # BERT has no EOS: its SEP ends a text
    ids, attn = tok.batch_encode(["1 2 3", "a"], add_eos=True)
    assert ids.shape == (2, 4) and attn.sum().item() == 6
    assert ids[1, :2].tolist() == [tok.pad_token_id] * 2 and ids[1, -1].item() == tok.eos_token_id
    assert tok.batch_decode(ids)[1] == "a"


def test_hf_tokenizer_mask_id_from_model_config(tmp_path):
    path = write_remote_code_model(tmp_path / "llada")
    expected = json.loads((path / "config.json").read_text())["mask_token_id"]
    tok = HFTokenizer(path)
    assert tok.mask_token_id == expected
    assert tok.eos_token_id == tok.hf.convert_tokens_to_ids("<eos>")
    assert tok.decode(tok.encode("1a2b")) == "1a2b"
