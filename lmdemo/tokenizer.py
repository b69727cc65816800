"""Character, word and subword tokenizers, stored as one Hugging Face `tokenizer.json`.

The `tokenizers` library gives a fast Rust encoder and a standard file any tool can read; this
module only chooses its pieces, and it is the one place where levels differ:

- `char`: every character a token.
- `word`, `tokenize="basic_english"`: torchtext's rules: lower-case, split off . , ( ) ! ? and the
  apostrophe, drop " ; : and <br />.
- `word`, `tokenize="whitespace"`: `line.split()`, tokens exactly as written, as PTB and WikiText
  are distributed (already tokenised, with their own `<unk>`).
- `bpe`: byte-level BPE learnt on the training split: cased, open vocabulary (never `<unk>`), any
  Unicode text round-trips exactly.

Word and subword levels end every line (document) with `<eos>`. A literal `<eos>` or `<unk>` in a text
is the special token only at the word level (PTB and WikiText write their unknown words so); for
characters and subwords it is text like any other. `pieces` gives each token's share of the readable
text (word level detokenised: "i ' m" reads "i'm", PTB's "do n't" reads "don't"), so a display can
colour token by token and still read as text. `level_unit` names what one token of a level is.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

UNK = "<unk>"
EOS = "<eos>"
SPECIALS = (UNK, EOS)
TOKENIZER_FILE = "tokenizer.json"
LEVELS = ("word", "char", "bpe")
TOKENIZE_RULES = ("basic_english", "whitespace")
DEFAULT_BPE_VOCAB = 8000
# Why `Tokenizer.lower_bound` figures understate a text's cost, in words for notes ("bits per character are ...").
LOWER_BOUND = ("a lower bound: a word or character outside the vocabulary is read as <unk> and never spelt out, and "
               "a word model's lower-casing and dropped punctuation make the text easier")

# Detokenising word-level text: tokens written against the word before them, or the word after.
_NO_SPACE_BEFORE = {".", ",", "!", "?", ")", ":", ";", "%", "n't", "'s", "'re", "'ve", "'m", "'ll", "'d"}
_NO_SPACE_AFTER = {"("}
_CONTRACTION_ENDS = {"s", "t", "m", "re", "ve", "ll", "d"}  # basic_english splits "i'm" into i ' m
_WIKITEXT_JOINERS = {"@-@": "-", "@,@": ",", "@.@": "."}  # WikiText's " @-@ " is a hyphen inside a word


@dataclass(frozen=True)
class LevelUnit:
    """What one token of a level is, in the words messages, tables and axes use."""

    singular: str  # "character": "1 character not in the vocabulary"
    plural: str  # "characters": a table's "tokens" row
    short: str  # "char": per-token figures, "nats/char"
    described: str  # "byte-level BPE subwords": prose, "an LSTM language model over ..."

    def count(self, number: int) -> str:
        """"1 word", "2 words"."""
        return f"{number:,} {self.singular if number == 1 else self.plural}"


_LEVEL_UNITS = {
    "char": LevelUnit("character", "characters", "char", "characters"),
    "word": LevelUnit("word", "words", "word", "words"),
    "bpe": LevelUnit("subword token", "subword tokens", "token", "byte-level BPE subwords"),
}


def level_unit(level: str) -> LevelUnit:
    """The one place a level's unit is named ("character", "nats/char", ...)."""
    if level not in _LEVEL_UNITS:
        raise ValueError(f"unknown token level {level!r}; choose one of: {', '.join(LEVELS)}")
    return _LEVEL_UNITS[level]


class Tokenizer:
    """Encode text to ids and back; unknown characters or words become `<unk>`, never an error."""

    def __init__(self, hf: HFTokenizer, level: str, tokenize: str = "basic_english"):
        if level not in LEVELS:
            raise ValueError(f"unknown token level {level!r}; choose one of: {', '.join(LEVELS)}")
        if tokenize not in TOKENIZE_RULES:
            raise ValueError(f"unknown tokenize rule {tokenize!r}; choose one of: {', '.join(TOKENIZE_RULES)}")
        self.hf = hf
        self.hf.encode_special_tokens = _specials_are_text(level)
        self.level = level
        self.tokenize = tokenize
        self.unk_id = hf.token_to_id(UNK)  # None at the bpe level: bytes cover every text
        self.eos_id = hf.token_to_id(EOS)
        self.vocab_size = hf.get_vocab_size()
        self._id_to_token = [hf.id_to_token(i) for i in range(self.vocab_size)]
        if level == "bpe":
            to_byte = {char: byte for byte, char in _byte_alphabet().items()}
            self._bytes = [b"\n" if token == EOS else bytes(to_byte[c] for c in token) for token in self._id_to_token]

    # -- building and files --------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str], level: str, min_freq: int = 1, max_vocab: int | None = None,
              lowercase: bool = True, tokenize: str = "basic_english") -> "Tokenizer":
        """Learn a vocabulary from `texts`, most frequent first, specials first (at the bpe level
        `max_vocab` is the vocabulary size to learn, 8,000 by default)."""
        if level == "bpe":
            hf = HFTokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            specials = [EOS]
            trainer = trainers.BpeTrainer(vocab_size=max_vocab or DEFAULT_BPE_VOCAB, min_frequency=min_freq,
                                          special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
        else:
            hf = HFTokenizer(models.WordLevel(unk_token=UNK))
            if level == "char":
                hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
                hf.decoder = decoders.Fuse()
            elif tokenize == "whitespace":
                hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            else:
                steps = [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.Replace(Regex(r"[\";:]"), " ")]
                hf.normalizer = normalizers.Sequence(([normalizers.Lowercase()] if lowercase else []) + steps)
                hf.pre_tokenizer = pre_tokenizers.Sequence([
                    pre_tokenizers.WhitespaceSplit(),
                    pre_tokenizers.Split(Regex(r"[.,()!?']"), behavior="isolated"),
                ])
            specials = list(SPECIALS)
            trainer = trainers.WordLevelTrainer(
                vocab_size=(max_vocab + len(SPECIALS)) if max_vocab else 2**31 - 1,
                min_frequency=min_freq, special_tokens=specials, show_progress=False)
        hf.add_special_tokens(specials)
        hf.encode_special_tokens = _specials_are_text(level)
        if level == "word":
            # A literal "<unk>" in the text (WikiText, PTB) would be counted as a word and take the
            # special's id; it maps to <unk> anyway, so it is left out of the count.
            texts = (_strip_specials(t) for t in texts)
        hf.train_from_iterator(texts, trainer)
        tokenizer = cls(hf, level, tokenize)
        if [tokenizer._id_to_token[i] for i in range(len(specials))] != specials:
            raise RuntimeError("tokenizer specials did not get the first ids")
        return tokenizer

    @classmethod
    def load(cls, path: str | Path, level: str, tokenize: str = "basic_english") -> "Tokenizer":
        """The file holds the pipeline; the level and rule come from the model's config.json, where
        they are stored."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        return cls(HFTokenizer.from_file(str(path)), level, tokenize)

    def save(self, path: str | Path) -> None:
        from lmdemo.files import write_atomic

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        write_atomic(path, self.hf.to_str(pretty=True))

    # -- encoding ------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        """What one token is, in words for messages (`level_unit` has its other forms)."""
        return level_unit(self.level).singular

    @property
    def by_line(self) -> bool:
        """Whether text is read line by line (each line ending in `<eos>`), so encoding can start
        afresh at any line; character models read newlines as characters."""
        return self.level != "char"

    @property
    def lossy(self) -> bool:
        """Whether every text this level reads loses something (lower-casing, dropped punctuation, spacing,
        `<unk>` for unknown words): its bits per character are then a lower bound, since the model never
        pays to spell out what is lost. Characters lose only what they map to `<unk>` (`lower_bound`);
        byte-level subwords spell everything."""
        return self.level == "word"

    def lower_bound(self, ids: Sequence[int] | torch.Tensor) -> bool:
        """Whether the bits per character of a text read as `ids` understate its cost: the level is
        lossy, or the text hit `<unk>` (a character the vocabulary lacks is never spelt out)."""
        return self.lossy or (self.unk_id is not None and self.unk_id in ids)

    @property
    def end_id(self) -> int | None:
        """The token that ends a line or document (`<eos>`), if the model was trained with one."""
        return self.eos_id if self.by_line else None

    @property
    def start_id(self) -> int:
        """What a text starts after, as in training: the end of a previous line or document."""
        if self.by_line:
            return self.eos_id
        newline = self.hf.token_to_id("\n")
        return newline if newline is not None else self.unk_id

    def encode(self, text: str) -> list[int]:
        """Ids of `text`. Word and subword levels: each newline becomes `<eos>`."""
        return self.encode_with_starts(text)[0]

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of `text` and where each token starts in it (a character index), so that the characters
        behind the last n tokens are known: `len(text) - starts[-n]`."""
        if not self.by_line:
            encoding = self.hf.encode(text, add_special_tokens=False)
            return encoding.ids, [start for start, _ in encoding.offsets]
        ids: list[int] = []
        starts: list[int] = []
        line_start = 0
        for line in text.split("\n"):
            if line_start:
                ids.append(self.eos_id)
                starts.append(line_start - 1)
            encoding = self.hf.encode(line, add_special_tokens=False)
            ids.extend(encoding.ids)
            starts.extend(line_start + start for start, _ in encoding.offsets)
            line_start += len(line) + 1
        return ids, starts

    def encode_documents(self, docs: Sequence[str]) -> torch.Tensor:
        """One stream of ids for a corpus split: word and subword levels end every document with `<eos>`."""
        encodings = self.hf.encode_batch(list(docs), add_special_tokens=False)
        chunks = []
        for enc in encodings:
            chunks.append(torch.tensor(enc.ids, dtype=torch.long))
            if self.by_line:
                chunks.append(torch.tensor([self.eos_id], dtype=torch.long))
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    def characters(self, docs: Sequence[str]) -> int:
        """Characters of a split as the documents hold them, each document's end counting as one
        (the newline a text file has there): what bits per character divide by."""
        return sum(len(doc) for doc in docs) + (len(docs) if self.by_line else 0)

    # -- decoding ------------------------------------------------------------------------------
    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The raw token strings (with `<unk>`/`<eos>` shown), one per id: what the model sees."""
        if self.level == "bpe":
            return [EOS if i == self.eos_id else self._bytes[i].decode("utf-8", "backslashreplace") for i in ids]
        return [self._id_to_token[i] for i in ids]

    def pieces(self, ids: Sequence[int], context: Sequence[int] = ()) -> list[str]:
        """Each token's share of the readable text, so that `"".join(pieces)` is `decode(ids)`;
        `context` (the ids before, such as a prompt) decides the first token's spacing."""
        ids = list(ids)
        if self.level == "char":  # an unknown character stands for one character
            return ["\ufffd" if i == self.unk_id else token for i, token in zip(ids, self.tokens(ids))]
        if self.level == "bpe":
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            for i in context:
                decoder.decode(self._bytes[i])
            return [decoder.decode(self._bytes[i]) for i in ids]
        before = list(context[-2:])  # "it ' s": the suffix's spacing depends on the two tokens before
        return self._word_pieces(self.tokens([*before, *ids]), len(before))

    def _word_pieces(self, tokens: list[str], skip: int) -> list[str]:
        pieces = []
        for index in range(skip, len(tokens)):
            token, before = tokens[index], tokens[index - 1] if index else None
            after = tokens[index + 1] if index + 1 < len(tokens) else None
            text = "\n" if token == EOS else _WIKITEXT_JOINERS.get(token, token)
            glued = (before is None or before == EOS or token == EOS or token in _NO_SPACE_BEFORE
                     or before in _NO_SPACE_AFTER or token in _WIKITEXT_JOINERS or before in _WIKITEXT_JOINERS
                     or (token == "'" and after in _CONTRACTION_ENDS and before not in _NO_SPACE_BEFORE)
                     or (before == "'" and token in _CONTRACTION_ENDS and index >= 2 and tokens[index - 2] != EOS))
            pieces.append(text if glued else " " + text)
        return pieces

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text of `ids`: `<eos>` as a line break; words detokenised."""
        return "".join(self.pieces(ids))

    def __len__(self) -> int:
        return self.vocab_size


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character map that byte-level BPE tokens are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _specials_are_text(level: str) -> bool:
    """Whether a literal "<eos>" or "<unk>" in a text is read as its characters rather than the special token."""
    return level != "word"


def _strip_specials(text: str) -> str:
    for special in SPECIALS:
        text = text.replace(special, " ")
    return text
