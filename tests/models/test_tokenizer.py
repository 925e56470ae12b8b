import pytest

from adactrl.data import VOCABULARY
from adactrl.models.tokenizer import SPECIAL_TOKENS, WordTokenizer, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer(build_tokenizer(VOCABULARY))


def test_ids_are_reproducible(tokenizer):
    assert [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id] == [0, 1, 2, 3]
    assert tokenizer.vocab_size == len(SPECIAL_TOKENS) + len(VOCABULARY)
    shuffled = WordTokenizer(build_tokenizer(reversed(VOCABULARY)))
    assert shuffled.encode("what color is the big circle ?") == tokenizer.encode("what color is the big circle ?")


def test_round_trip(tokenizer):
    text = "is the red square on the left or the right ?"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.split())
    assert tokenizer.decode(ids) == text


def test_punctuation_is_split_from_words(tokenizer):
    assert tokenizer.encode("circle?") == tokenizer.encode("circle ?")
    assert tokenizer.encode("What SHAPE is the big object?") == tokenizer.encode("what shape is the big object ?")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_refused(tokenizer, prompt):
    with pytest.raises(ValueError, match="empty"):
        tokenizer.encode(prompt)


def test_unknown_words_are_listed(tokenizer):
    with pytest.raises(ValueError, match="vocabulary") as err:
        tokenizer.encode("What colour is the Zebra? colour")
    message = str(err.value)
    assert "['colour', 'Zebra']" in message  # the words as written, each once, in order
    assert "<unk>" not in message


def test_decode_stops_at_eos_and_drops_special_tokens(tokenizer):
    red, blue = tokenizer.encode("red"), tokenizer.encode("blue")
    ids = [tokenizer.bos_id, *red, tokenizer.pad_id, tokenizer.eos_id, *blue]
    assert tokenizer.decode(ids) == "red"
    assert tokenizer.decode([tokenizer.eos_id, *blue]) == ""


def test_vocabulary_lists_the_words(tokenizer):
    assert tokenizer.vocabulary() == sorted(VOCABULARY)


def test_save_and_reload(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.tokenizer.save(str(path))
    reloaded = WordTokenizer.from_file(str(path))
    assert reloaded.encode("how many blue objects are there ?") == tokenizer.encode("how many blue objects are there ?")
    with pytest.raises(ValueError, match="zebra"):
        reloaded.encode("zebra")
