"""A closed word-level tokenizer for the embedded model, built with `tokenizers`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def build_tokenizer(words: Iterable[str]) -> Tokenizer:
    """Special tokens first (ids 0-3), then the words in sorted order, so ids are reproducible."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words} - set(SPECIAL_TOKENS)):
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace splits words from punctuation, so "circle?" and "circle ?" encode the same.
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


class WordTokenizer:
    """Encodes prompts and refuses words outside the vocabulary instead of guessing."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)

    @classmethod
    def from_file(cls, path: str) -> WordTokenizer:
        return cls(Tokenizer.from_file(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Raises ValueError on empty text or on words the model has never seen."""
        if not text or not text.strip():
            raise ValueError("the prompt is empty; ask a question")
        encoding = self.tokenizer.encode(text)
        # The offsets point into the original text: `encoding.tokens` would only say "<unk>".
        unknown = [text[a:b] for (a, b), i in zip(encoding.offsets, encoding.ids) if i == self.unk_id]
        if unknown:
            raise ValueError(
                f"words outside the embedded model's vocabulary: {list(dict.fromkeys(unknown))}; "
                "rephrase with known words (see `adactrl infer --list_vocabulary`)"
            )
        return encoding.ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first end-of-sequence and dropping special tokens."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            token = self.tokenizer.id_to_token(int(i))
            if token is not None and token not in SPECIAL_TOKENS:
                words.append(token)
        return " ".join(words)

    def vocabulary(self) -> list[str]:
        vocab = self.tokenizer.get_vocab()
        return sorted(w for w in vocab if w not in SPECIAL_TOKENS)
