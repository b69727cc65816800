"""What a visitor may ask the Train tab for, checked before anything is queued or written.

Every value arrives raw (a script can send a list where a string belongs), so each is checked for its
type first and refused with one line a visitor can act on. A text is refused when it cannot give the
trainer a training batch and a validation split: the same rule the trainer applies
(`lmdemo.batches.check_stream_length`), on a count of tokens that the real tokenizer can only exceed.
"""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmdemo.batches import TextTooShortError, check_stream_length
from lmdemo.corpus import cut_documents, documents
from lmdemo.generation import SettingsError
from lmdemo.tokenizer import level_unit

CORPORA_DIR = Path(__file__).resolve().parents[1] / "corpora"
LEVELS = {level: level_unit(level).described for level in ("char", "word", "bpe")}  # the tab's choices, in order
CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # control characters other than \t \n \f \r
NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class TrainInputError(SettingsError):
    """A training request the service refuses; the message says why in words a visitor can act on."""


@dataclass(frozen=True)
class Size:
    """A named model size for the Train tab, its learning rate, and the speed (characters a second at 1 thread, as a
    character model) that sets how often a job logs and validates: about a third of what an idle core does, so that
    a trainer a busy server slows (it runs at nice 19) still draws its curve every few seconds."""

    name: str
    num_layers: int
    hidden_size: int
    emb_size: int
    dropout: float
    lr: float
    characters_per_second: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.num_layers}×{self.hidden_size})"

    def parameters(self, vocab: int, tied: bool) -> int:
        """Weights of an LSTM of this size over `vocab` tokens (what its files and optimiser state hold)."""
        lstm, width = 0, self.emb_size
        for _ in range(self.num_layers):
            lstm += 4 * self.hidden_size * (width + self.hidden_size + 2)
            width = self.hidden_size
        decoder = vocab if tied else vocab * (self.hidden_size + 1)
        return vocab * self.emb_size + lstm + decoder + self.hidden_size * self.emb_size


# Measured on one core of a 2-core AMD EPYC Zen 5 (bf16), Tiny Shakespeare, 60 s: tiny (1×256 at lr 0.008) takes
# ~3,700 steps (~63 a second, 2,048 characters each) to 1.426 nats/char on validation, where 1×128 at 0.003 (the old
# tiny, 8,200 steps) reached 1.514, 1×256 at 0.003 1.468, 1×320 at 0.008 1.432, 1×384 at 0.004 1.458 (two runs at
# a time on the two cores). small (about 3× tiny's LSTM weights) keeps 0.003: it runs minutes, not one.
SIZES = {size.name: size for size in (
    Size("tiny", 1, 256, 64, 0.0, 0.008, 40_960.0),
    Size("small", 2, 256, 128, 0.1, 0.003, 10_240.0),
)}
DEFAULT_SIZE = "tiny"
DEFAULT_LEVEL = "char"


@dataclass(frozen=True)
class Corpus:
    """A text bundled with the app (lmdemo/corpora), offered in the Train tab."""

    key: str
    title: str
    file: str
    about: str

    def read(self) -> str:
        with gzip.open(CORPORA_DIR / self.file, "rt", encoding="utf-8") as f:
            return f.read()


CORPORA = {corpus.key: corpus for corpus in (
    Corpus("tinyshakespeare", "Tiny Shakespeare", "tinyshakespeare.txt.gz",
           "40,000 lines of Shakespeare's plays, 1.1 M characters (Karpathy's char-rnn corpus; public domain)"),
    Corpus("imdb", "IMDB reviews (a slice)", "imdb-reviews.txt.gz",
           "the first 794 reviews of the IMDB training set, one a line, 1 M characters, HTML tags removed "
           "(Maas et al. 2011)"),
)}


@dataclass(frozen=True)
class TrainLimits:
    """What one training request may ask for, and what one client and the server may take: the operator's knobs."""

    max_seconds: float = 180.0  # the cap on a job's time budget
    default_seconds: float = 60.0
    min_seconds: float = 10.0
    max_chars: int = 2_000_000  # characters of text (Tiny Shakespeare has 1.1 M)
    max_upload_bytes: int = 8_000_000
    max_symbols: int = 1_000  # distinct characters a character-level model may have to learn
    max_waiting: int = 8  # jobs waiting for the one training slot; more are turned away (0: none wait)
    max_session_models: int = 3  # a session's trained models kept; training one more drops the oldest
    session_ttl_s: float = 900.0  # a session without a request or heartbeat this long is ended
    budget_per_hour_s: float = 600.0  # seconds of training one client may take in any hour
    disk_mb: float = 500.0  # the training folder's size, everything included

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.default_seconds <= self.max_seconds:
            raise ValueError(f"the training time limits must satisfy 0 < min ({self.min_seconds:g}) <= default "
                             f"({self.default_seconds:g}) <= max ({self.max_seconds:g}) seconds")
        if not self.budget_per_hour_s >= self.min_seconds:
            raise ValueError(f"the hourly training budget ({self.budget_per_hour_s:g} s) must hold at least one "
                             f"job of {self.min_seconds:g} s")
        if not self.session_ttl_s > 0 or not self.disk_mb > 0 or self.max_waiting < 0:
            raise ValueError("the session time-to-live and the disk cap must be positive, the queue not negative")


@dataclass(frozen=True)
class TrainRequest:
    """A checked training request; `source` names the text in file names and messages ("pasted", a corpus key,
    an upload's cleaned-up stem), never with a server path."""

    text: str
    level: str
    size: str
    seconds: float
    source: str

    @property
    def run_name(self) -> str:
        return f"{self.level}-{self.size}"

    @property
    def text_name(self) -> str:
        """The text's file name in the run folder, which the model's config and card name as its data."""
        return f"{self.source}.txt"


def bytes_needed(request: TrainRequest, max_symbols: int) -> int:
    """The most a job may write: its text (and the trainer's copy of its splits), its weights, optimiser state and
    zip, and a megabyte for the log, tokenizer and card."""
    vocab = min(len(set(request.text)), max_symbols) + 2 if request.level == "char" else \
        LEVEL_OPTIONS[request.level]["max_vocab"] + 2
    weights = 4 * SIZES[request.size].parameters(vocab, tied=request.level != "char")
    return 2 * len(request.text.encode("utf-8")) + 6 * weights + 1_000_000


# the recipe every job shares: cosine over the budget, AdamW, windows short enough for many steps
RECIPE = dict(batch_size=32, optimizer="adamw", weight_decay=0.01, clip=1.0, schedule="cosine",
              warmup_steps=20, early_stop=8, eval_tokens=20_000, eval_batch_size=16, eval_bptt=128,
              valid_fraction=0.1, test_fraction=0.0, save_every=1e9, seed=1234)
# 32-character windows: twice the updates of 64 in the same time, which a slow CPU's minute needs (a Zen 3 core, fp32:
# 1.588 and 1.594 nats/char against 1.654, bench/train_tab.py); on the Zen 5 the two tie (1.424, 1.426)
BPTT = {"char": 32, "word": 32, "bpe": 48}
LEVEL_OPTIONS = {"char": dict(no_tie_weights=True), "word": dict(max_vocab=5000), "bpe": dict(max_vocab=1000)}


def _choice(value: Any, choices: dict[str, Any] | tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value[:40]) if isinstance(value, str) else f"a {type(value).__name__}"
        raise TrainInputError(f"{what} must be one of {', '.join(choices)} (got {shown})")
    return value


def parse_level(value: Any) -> str:
    return _choice(value, LEVELS, "level")


def parse_size(value: Any) -> str:
    return _choice(value, SIZES, "size")


def parse_seconds(value: Any, limits: TrainLimits) -> float:
    """A time budget in seconds, from `limits.min_seconds` to the operator's cap."""
    if value is None or value == "":
        return limits.default_seconds
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TrainInputError(f"the time budget must be a number of seconds (got a {type(value).__name__})")
    try:
        seconds = float(value[:40] if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise TrainInputError(f"the time budget must be a number of seconds (got {str(value)[:40]!r})") from None
    if not math.isfinite(seconds) or not limits.min_seconds <= seconds <= limits.max_seconds:
        raise TrainInputError(f"the time budget must be from {limits.min_seconds:g} to {limits.max_seconds:g} seconds "
                              f"on this server (got {seconds:g})")
    return seconds


def upload_name(path: str | Path) -> str:
    """An upload's name as shown and stored: its stem with anything but letters, digits, - and _ dropped."""
    return NAME_CHARS.sub("-", Path(str(path)).stem).strip("-")[:40] or "upload"


def read_upload(path: Any, limits: TrainLimits) -> tuple[str, str]:
    """An uploaded file's text and a name for it: UTF-8 text only, refused before reading when too large."""
    if not path:
        raise TrainInputError("no file uploaded: choose a .txt file, or another source of text")
    if not isinstance(path, (str, Path)):
        raise TrainInputError(f"the upload must be a file (got a {type(path).__name__})")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise TrainInputError("the uploaded file could not be read: upload it again") from None
    if size > limits.max_upload_bytes:
        raise TrainInputError(f"the file has {size / 1e6:,.1f} MB; at most {limits.max_upload_bytes / 1e6:g} MB "
                              f"of text is accepted")
    data = path.read_bytes()
    if b"\x00" in data[:1_000_000]:
        raise TrainInputError("the file is not text (it holds NUL bytes: a binary file?): upload a UTF-8 .txt file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TrainInputError(f"the file is not UTF-8 text (byte {error.start:,} cannot be read: a binary file, or "
                              f"another encoding?): save it as UTF-8 and upload it again") from None
    return text, upload_name(path)


def check_text(text: Any, level: str, limits: TrainLimits) -> str:
    """The text to train on, with newlines made plain, or a refusal saying what is wrong with it."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TrainInputError(f"the text must be a string (got a {type(text).__name__})")
    if len(text) > limits.max_chars:
        raise TrainInputError(f"the text has {len(text):,} characters; at most {limits.max_chars:,} are accepted")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise TrainInputError("the text is empty: paste some text, upload a .txt file or pick a bundled corpus")
    control = len(CONTROL.findall(text))
    if "\x00" in text or control > len(text) // 100:
        raise TrainInputError(f"the text is not plain text ({control:,} control characters: a binary file?)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TrainInputError("the text holds unpaired surrogate code points: it is not valid Unicode text") from None
    symbols = set(text)
    visible = {ch for ch in symbols if not ch.isspace()}
    if len(visible) < 2:
        shown = next(iter(visible))
        raise TrainInputError(f"the text is one character ({shown!r}) repeated: there is nothing to learn; "
                              f"give a real text")
    if level == "char" and len(symbols) > limits.max_symbols:
        raise TrainInputError(f"the text has {len(symbols):,} different characters; a character-level model here "
                              f"learns at most {limits.max_symbols:,}: choose the word or subword level")
    if level == "word" and len(set(text.lower().split())) < 2:
        raise TrainInputError("the text is one word repeated: there is nothing to learn; give a real text")
    check_length(text, level)
    return text


WORDLIKE = re.compile(r"\w")


def tokens_at_least(text: str, level: str) -> int:
    """Tokens the level's tokenizer makes of `text`, or fewer: a character is a token; at the word and subword
    levels every whitespace-separated chunk holding a letter or digit gives one token at least."""
    if level == "char":
        return len(text)
    return sum(1 for chunk in text.split() if WORDLIKE.search(chunk))


def check_length(text: str, level: str) -> None:
    """Refuse a text whose training part cannot fill the batch's streams (at any epoch's window offset) or whose
    validation part is empty: the trainer's own rule, on a count of tokens the real tokenizer can only exceed."""
    parts = cut_documents(documents(text, level), RECIPE["valid_fraction"], level)
    unit = level_unit(level).plural
    for part, streams, offset in (("training", RECIPE["batch_size"], BPTT[level] - 1), ("validation", 1, 0)):
        tokens = sum(tokens_at_least(doc, level) for doc in parts[part == "validation"])
        try:
            check_stream_length(tokens, streams, offset)
        except TextTooShortError as error:
            raise TrainInputError(
                f"the text is too short: its {part} part ({'the first' if part == 'training' else 'the last'} "
                f"{1 - RECIPE['valid_fraction'] if part == 'training' else RECIPE['valid_fraction']:.0%}) gives "
                f"{error.tokens:,} {unit} or fewer, and {error.needed:,} are needed ({streams} streams of 2 or more"
                f"{f' after an offset of up to {offset}' if offset else ''}): give a longer text") from None


def read_request(text: Any, level: Any, size: Any, seconds: Any, limits: TrainLimits,
                 source: str = "pasted") -> TrainRequest:
    """A request from form or API values, the cheap checks first."""
    level, size = parse_level(level), parse_size(size)
    budget = parse_seconds(seconds, limits)
    return TrainRequest(check_text(text, level, limits), level, size, budget, source)


def read_source(source: Any, text: Any, upload: Any, limits: TrainLimits) -> tuple[str, str]:
    """The Train tab's text: a bundled corpus, the pasted text or an uploaded file; and its name."""
    source = _choice(source, (*CORPORA, "paste", "upload"), "text source")
    if source in CORPORA:
        return CORPORA[source].read(), source
    if source == "upload":
        return read_upload(upload, limits)
    return text, "pasted"
