"""Character- and word-level tokenizers, stored as one Hugging Face `tokenizer.json`.

The `tokenizers` library gives a fast Rust encoder and a standard file any tool can read; this
module only chooses its pieces. Word level follows torchtext's `basic_english`: lower-case,
split off . , ( ) ! ? and the apostrophe, drop " ; : and <br />. Lines end with `<eos>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

UNK = "<unk>"
EOS = "<eos>"
SPECIALS = (UNK, EOS)
TOKENIZER_FILE = "tokenizer.json"
LEVELS = ("word", "char")


class Tokenizer:
    """Encode text to ids and back; unknown characters or words become `<unk>`, never an error."""

    def __init__(self, hf: HFTokenizer, level: str):
        if level not in LEVELS:
            raise ValueError(f"unknown token level {level!r}; choose one of: {', '.join(LEVELS)}")
        self.hf = hf
        self.level = level
        self.unk_id = hf.token_to_id(UNK)
        self.eos_id = hf.token_to_id(EOS)
        self.vocab_size = hf.get_vocab_size()
        self._id_to_token = [hf.id_to_token(i) for i in range(self.vocab_size)]

    # -- building and files --------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str], level: str, min_freq: int = 1, max_vocab: int | None = None,
              lowercase: bool = True) -> "Tokenizer":
        """Learn a vocabulary from `texts`, most frequent first, specials at ids 0 and 1."""
        hf = HFTokenizer(models.WordLevel(unk_token=UNK))
        if level == "char":
            hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            hf.decoder = decoders.Fuse()
        else:
            steps = [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.Replace(Regex(r"[\";:]"), " ")]
            hf.normalizer = normalizers.Sequence(([normalizers.Lowercase()] if lowercase else []) + steps)
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(r"[.,()!?']"), behavior="isolated"),
            ])
        hf.add_special_tokens(list(SPECIALS))
        trainer = trainers.WordLevelTrainer(
            vocab_size=(max_vocab + len(SPECIALS)) if max_vocab else 2**31 - 1,
            min_frequency=min_freq, special_tokens=list(SPECIALS), show_progress=False)
        # A literal "<unk>" in the text (WikiText, PTB) would be counted as a word and take the
        # special's id; it maps to <unk> anyway, so it is left out of the count.
        hf.train_from_iterator((_strip_specials(t) for t in texts), trainer)
        tokenizer = cls(hf, level)
        if (tokenizer.unk_id, tokenizer.eos_id) != (0, 1):
            raise RuntimeError("tokenizer specials did not get ids 0 and 1")
        return tokenizer

    @classmethod
    def load(cls, path: str | Path, level: str) -> "Tokenizer":
        """The file holds the pipeline; the level comes from the model's config.json, where it is stored."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        return cls(HFTokenizer.from_file(str(path)), level)

    def save(self, path: str | Path) -> None:
        from lmdemo.files import write_atomic

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        write_atomic(path, self.hf.to_str(pretty=True))

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`. Word level: each newline becomes `<eos>`."""
        if self.level == "char":
            return self.hf.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            ids.extend(self.hf.encode(line, add_special_tokens=False).ids)
            if i < len(lines) - 1:
                ids.append(self.eos_id)
        return ids

    def encode_documents(self, docs: Sequence[str]) -> torch.Tensor:
        """One stream of ids for a corpus split: word level ends every document with `<eos>`."""
        encodings = self.hf.encode_batch(list(docs), add_special_tokens=False)
        chunks = []
        for enc in encodings:
            chunks.append(torch.tensor(enc.ids, dtype=torch.long))
            if self.level == "word":
                chunks.append(torch.tensor([self.eos_id], dtype=torch.long))
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The token strings (with `<unk>`/`<eos>` shown) for display, one per id."""
        return [self._id_to_token[i] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; word level joins words with spaces and turns `<eos>` into a newline."""
        pieces = self.tokens(ids)
        if self.level == "char":
            return "".join(pieces)
        lines: list[list[str]] = [[]]
        for piece in pieces:
            if piece == EOS:
                lines.append([])
            else:
                lines[-1].append(piece)
        return "\n".join(" ".join(line) for line in lines)

    def __len__(self) -> int:
        return self.vocab_size


def _strip_specials(text: str) -> str:
    for special in SPECIALS:
        text = text.replace(special, " ")
    return text
