"""MolmoE's BPE tokenizer (`tokenizer.json`), read with `tokenizers`, and its chat format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from adactrl.models.molmoe.config import read_json
from adactrl.models.molmoe.preprocessing import IMAGE_TOKENS, ImageTokenIds

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
DEFAULT_EOS = "<|endoftext|>"


def _token_text(value: object) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class MolmoETokenizer:
    """Prompts in MolmoE's chat format: `" User: {prompt} Assistant:"`, after a BOS that the
    model's prefill layout places before the image (OLMo has no BOS of its own: EOS serves)."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int, bos_id: int, source: str = TOKENIZER_FILE) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.bos_id = bos_id
        ids = {name: tokenizer.token_to_id(name) for name in IMAGE_TOKENS}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"{source} lacks the image tokens {missing}; use the tokenizer files that came with the "
                "MolmoE checkpoint (they add <im_start>, <im_end>, <im_patch>, <im_col>)"
            )
        self.image_ids = ImageTokenIds(
            start=ids["<im_start>"], end=ids["<im_end>"], patch=ids["<im_patch>"], col=ids["<im_col>"]
        )

    @classmethod
    def from_directory(cls, directory: str | Path) -> MolmoETokenizer:
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; copy the checkpoint's tokenizer files next to config.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{path} cannot be read as a tokenizer ({err}); re-download it") from err
        settings = read_json(directory / TOKENIZER_CONFIG_FILE) if (directory / TOKENIZER_CONFIG_FILE).is_file() else {}
        eos_text = _token_text(settings.get("eos_token")) or DEFAULT_EOS
        eos_id = tokenizer.token_to_id(eos_text)
        generation = directory / GENERATION_CONFIG_FILE
        if generation.is_file() and isinstance(read_json(generation).get("eos_token_id"), int):
            eos_id = read_json(generation)["eos_token_id"]
        if eos_id is None:
            raise ValueError(f"{path} has no end-of-sequence token {eos_text!r}")
        bos_text = _token_text(settings.get("bos_token"))
        bos_id = tokenizer.token_to_id(bos_text) if bos_text else None
        return cls(tokenizer, eos_id=eos_id, bos_id=eos_id if bos_id is None else bos_id, source=str(path))

    def encode_prompt(self, prompt: str) -> list[int]:
        """The user's question in the chat format, without BOS."""
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty; ask a question")
        return self.tokenizer.encode(f" User: {prompt} Assistant:", add_special_tokens=False).ids

    def encode(self, text: str) -> list[int]:
        """Plain text (an answer) -> ids, no chat format."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at EOS; ids past the tokenizer's vocabulary (unused LM-head rows) are dropped."""
        kept = []
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        for i in ids:
            if int(i) == self.eos_id:
                break
            if 0 <= int(i) < size:
                kept.append(int(i))
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def vocabulary(self) -> list[str]:
        """Every token's text (a BPE vocabulary: any prompt tokenises; this is for inspection)."""
        vocab = self.tokenizer.get_vocab()
        return [self.tokenizer.decode([i]) for i in sorted(vocab.values())]
