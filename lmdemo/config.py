"""The one configuration type: model shape, data and training, with the reference presets.

A single dataclass keeps the CLI, the presets, the run folder's `config.json` and the model
folder's `config.json` in step: every field is a `--flag` and every preset is a set of fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdemo.files import hub_id, write_atomic


DEFAULT_EPOCHS = 10  # a run's passes over its text when it sets no limit of its own


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, group: str = "training") -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


# The adaptive softmax, all its numbers in one place: when 'auto' chooses it, and its clusters.
ADAPTIVE_MIN_VOCAB = 10_000  # word and subword vocabularies at least this large
ADAPTIVE_HEAD = 2000  # the most frequent words, scored for every token
ADAPTIVE_GROWTH = 5  # each cluster boundary this many times the one before


def adaptive_cutoffs(vocab_size: int, min_last: int | None = None) -> list[int]:
    """Cluster boundaries [head, ..., vocab_size] over frequency-ordered ids: a head of 2,000 words (a quarter
    of smaller vocabularies), then boundaries 5x apart, as Grave et al. suggest for Zipfian text.

    A last cluster smaller than `min_last` words (default: a quarter of the cluster before it) joins that
    cluster: a 2-word cluster (10,002 words) would cost a logit in the head for nothing.
    """
    cuts = [min(ADAPTIVE_HEAD, max(1, vocab_size // 4))]
    while cuts[-1] < vocab_size:
        cuts.append(min(vocab_size, cuts[-1] * ADAPTIVE_GROWTH))
    if len(cuts) > 2:
        before = cuts[-2] - cuts[-3]
        if cuts[-1] - cuts[-2] < (before // 4 if min_last is None else min_last):
            del cuts[-2]
    return cuts


@dataclass
class Config:
    # --- model -----------------------------------------------------------------------------
    level: str = _opt("word", "token level: 'word', 'char', or 'bpe' (byte-level BPE subwords: cased, open "
                      "vocabulary, never <unk>)", ("word", "char", "bpe"), "model")
    emb_size: int = _opt(400, "embedding size", group="model")
    hidden_size: int = _opt(400, "LSTM hidden size", group="model")
    num_layers: int = _opt(2, "stacked LSTM layers", group="model")
    dropout: float = _opt(0.3, "dropout on embeddings, between layers and before the decoder", group="model")
    dropout_locked: bool = _opt(False, "one --dropout mask per sequence, held over the window's tokens, instead of "
                                "one per token (AWD-LSTM's locked, or variational, dropout): a regulariser of its "
                                "own",
                                group="model")
    dropout_embedding: float = _opt(0.0, "drop whole words: each word of the vocabulary loses its embedding, at "
                                    "every place in the batch, with this probability (AWD-LSTM's embedding "
                                    "dropout; 0 = off)", group="model")
    weight_drop: float = _opt(0.0, "DropConnect on every LSTM layer's hidden-to-hidden matrix, one mask per step "
                              "(AWD-LSTM's weight drop; 0 = off); evaluation uses the whole matrix", group="model")
    tie_weights: bool = _opt(True, "share the embedding and decoder weights (Press & Wolf 2016); "
                             "a projection is added when emb_size != hidden_size", group="model")
    softmax: str = _opt("auto", "output layer: the full softmax, or Grave et al.'s adaptive softmax (frequent words "
                        "in a head, rarer ones in clusters scored only when a target falls in them: faster "
                        "training for large vocabularies; tying is kept); auto = adaptive for word and "
                        "subword vocabularies of 10,000 or more, full otherwise", ("auto", "full", "adaptive"), "model")
    vocab_size: int = _opt(0, "set from the tokenizer when training starts", group="model")
    cutoffs: list[int] | None = _opt(None, "adaptive softmax cluster boundaries, set when training starts",
                                     group="model")

    # --- data ------------------------------------------------------------------------------
    data: str = _opt("", "a text file, a folder with train/valid/test.txt, a datasets.save_to_disk "
                     "folder, or a Hugging Face dataset id", group="data")
    data_config: str | None = _opt(None, "Hugging Face dataset configuration name", group="data")
    dataset_id: str | None = _opt(None, "the Hugging Face dataset that --data is (a copy of), named in model cards "
                                  "(default: --data when it is a Hub id)", group="data")
    text_column: str = _opt("text", "dataset column that holds the text", group="data")
    train_split: str = _opt("train", "name of the training split", group="data")
    valid_split: str = _opt("validation", "name of the validation split (carved from train if absent)",
                            group="data")
    test_split: str = _opt("test", "name of the test split (carved from train if absent)", group="data")
    valid_fraction: float = _opt(0.1, "share of the training text kept for validation when the source "
                                 "has no validation split (taken from the end)", group="data")
    test_fraction: float = _opt(0.0, "share of the training text kept for test when the source has no "
                                "test split (taken from the end)", group="data")
    train_docs: int | None = _opt(None, "keep a seeded random subset of this many training documents",
                                  group="data")
    max_tokens: int | None = _opt(None, "cap every split at this many tokens (quick runs, tests)",
                                  group="data")
    eval_tokens: int | None = _opt(None, "score only the first N tokens of the validation split (a cheaper "
                                   "check during training; the test split is always scored whole)", group="data")
    clean_html: bool = _opt(False, "strip HTML tags such as <br /> and unescape entities", group="data")
    tokenize: str = _opt("basic_english", "word level: torchtext's basic_english rules (lower-case, punctuation split "
                         "off), or whitespace (line.split(): tokens exactly as written, for already tokenised "
                         "corpora such as PTB and WikiText)", ("basic_english", "whitespace"), "data")
    lowercase: bool = _opt(True, "lower-case words (word level, basic_english)", group="data")
    min_freq: int = _opt(1, "drop words seen fewer times than this (they become <unk>)", group="data")
    max_vocab: int | None = _opt(None, "keep at most this many words, the most frequent first; at the bpe "
                                 "level the vocabulary size to learn (default 8,000)", group="data")

    # --- training --------------------------------------------------------------------------
    batch_size: int = _opt(32, "parallel token streams per step (all processes together)")
    bptt: int = _opt(35, "truncated back-propagation window, in tokens")
    epochs: int | None = _opt(None, f"passes over the training text (unset: {DEFAULT_EPOCHS}, or as many as "
                              "--max-minutes or --max-steps allow when one is given)")
    shift_windows: bool = _opt(True, "start each epoch after the first at a random offset below --bptt, so the "
                               "windows (and where back-propagation is cut) differ from epoch to epoch")
    max_steps: int | None = _opt(None, "stop after this many optimiser steps")
    max_minutes: float | None = _opt(None, "stop after this many minutes from the command's start (reading and "
                                     "tokenising included)")
    optimizer: str = _opt("adamw", "optimiser", ("adam", "adamw", "sgd"))
    lr: float = _opt(3e-3, "learning rate (AdamW at 3e-3 reached a given perplexity sooner than 1e-3 over short and "
                     "longer budgets: docs/performance.md, time to quality)")
    weight_decay: float = _opt(0.0, "weight decay")
    clip: float = _opt(0.25, "gradient norm clipping (0 = off)")
    alpha: float = _opt(0.0, "activation regularisation: add this times the mean square of the last LSTM layer's "
                        "output, after dropout, to what training minimises (AWD-LSTM: 2; 0 = off)")
    beta: float = _opt(0.0, "temporal activation regularisation: add this times the mean square of the change in "
                       "the last LSTM layer's output (before dropout) from one token to the next (AWD-LSTM: 1; "
                       "0 = off)")
    schedule: str = _opt("plateau", "learning-rate schedule: ReduceLROnPlateau on validation loss, "
                         "cosine decay over the run, or constant", ("plateau", "cosine", "constant"))
    lr_factor: float = _opt(0.5, "plateau: factor applied to the learning rate")
    lr_patience: int = _opt(1, "plateau: evaluations without improvement before the rate drops")
    warmup_steps: int = _opt(0, "linear warm-up steps")
    early_stop: int | None = _opt(None, "stop after this many evaluations without improvement")
    eval_every: int | None = _opt(None, "also evaluate when N steps have passed since the last evaluation "
                                  "(every epoch end evaluates)")
    log_every: int = _opt(50, "write a training record every N steps (and at the step that reaches a limit)")
    save_every: float = _opt(120.0, "save resumable state every N seconds of training")
    eval_batch_size: int = _opt(10, "streams when scoring validation and test text")
    eval_bptt: int = _opt(256, "window when scoring (the state is carried, so this only sets speed)")
    device: str = _opt("auto", "where to train: cuda when available, else cpu", ("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "compute precision: bf16 autocast where the device has native bf16 "
                          "(AVX512-BF16/AMX CPUs, recent GPUs), else fp32; bf16 elsewhere falls back to fp32",
                          ("auto", "fp32", "bf16"))
    seed: int = _opt(1234, "seed for initialisation, dropout and data subsets")
    threads: int | None = _opt(None, "torch threads per process (default: the cores per process)")

    # ----------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid setting, in words a user can act on."""
        out = []
        for name in ("emb_size", "hidden_size", "num_layers", "batch_size", "bptt", "log_every",
                     "eval_batch_size", "eval_bptt"):
            if getattr(self, name) <= 0:
                out.append(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        for name in ("epochs", "max_steps", "train_docs", "max_tokens", "eval_tokens", "max_vocab", "early_stop",
                     "eval_every", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                out.append(f"--{name.replace('_', '-')} must be positive (got {value})")
        if self.softmax == "adaptive" and self.level == "char":
            out.append("--softmax adaptive is for word-level vocabularies; a character model's softmax is already small")
        if self.cutoffs is not None and (sorted(set(self.cutoffs)) != list(self.cutoffs) or self.cutoffs[0] < 1
                                         or (self.vocab_size and self.cutoffs[-1] != self.vocab_size)):
            out.append(f"cutoffs must rise from 1 to the vocabulary size (got {self.cutoffs})")
        if self.vocab_size < 0:
            out.append(f"vocab_size must not be negative (got {self.vocab_size})")
        for name in ("dropout", "dropout_embedding", "weight_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"--{name.replace('_', '-')} must be in [0, 1) (got {getattr(self, name)})")
        if self.lr <= 0:
            out.append(f"--lr must be positive (got {self.lr})")
        if min(self.clip, self.weight_decay, self.warmup_steps, self.alpha, self.beta) < 0:
            out.append("--clip, --weight-decay, --warmup-steps, --alpha and --beta must not be negative")
        if not 0.0 <= self.valid_fraction < 1.0 or not 0.0 <= self.test_fraction < 1.0 \
                or self.valid_fraction + self.test_fraction >= 1.0:
            out.append("--valid-fraction and --test-fraction must be in [0, 1) and leave some training text")
        if self.min_freq < 1:
            out.append(f"--min-freq must be at least 1 (got {self.min_freq})")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                out.append(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)} "
                           f"(got {getattr(self, f.name)!r})")
        return out

    def resolved(self, vocab_size: int) -> "Config":
        """The config of the model actually built for a vocabulary: the vocabulary size, the softmax
        chosen ('auto' resolved) and the adaptive clusters, so a saved config says what was built."""
        config = self.replace(vocab_size=vocab_size)
        if not config.adaptive_softmax:
            return config.replace(softmax="full", cutoffs=None)
        return config.replace(softmax="adaptive", cutoffs=config.cutoffs or adaptive_cutoffs(vocab_size))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def epoch_limit(self) -> float:
        """The passes over the training text that end a run: `epochs`, else none when a budget (minutes or
        steps) is given, since the budget is what the user asked for; else DEFAULT_EPOCHS."""
        if self.epochs is not None:
            return self.epochs
        return math.inf if self.max_minutes or self.max_steps else DEFAULT_EPOCHS

    @property
    def adaptive_softmax(self) -> bool:
        """'auto' chooses the adaptive softmax where it was measured to train faster at no cost in
        perplexity (10k-word WikiText-2 and IMDB); below that the full softmax is cheap anyway."""
        return self.softmax == "adaptive" or (self.softmax == "auto" and self.level != "char"
                                              and self.vocab_size >= ADAPTIVE_MIN_VOCAB)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Build from a saved dict, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {"softmax": "full", **values}  # saved before the adaptive softmax existed: full
        config = cls(**{k: v for k, v in values.items() if k in known})
        if config.adaptive_softmax and config.cutoffs is None and config.vocab_size:
            # saved before the clusters were recorded: they were built without merging a small last one
            config = config.replace(cutoffs=adaptive_cutoffs(config.vocab_size, min_last=1))
        return config

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def data_name(data: str, data_config: str | None = None) -> str:
    """A readable name for training data: a local file as folder/file, a local folder by its name, or a
    Hub dataset id as given; with its configuration in brackets."""
    if not data:
        return "unknown"
    path = Path(data)
    name = data if hub_id(data) else ("/".join(path.parts[-2:]) if path.suffix else path.name)
    return f"{name} ({data_config})" if data_config else name


class ConfigError(ValueError):
    """A setting a user gave is invalid; the message says which and why."""


# The IMDB recipes' shared part: 25 minutes of AdamW + cosine on the reviews, HTML cleaned.
_IMDB = dict(
    data="stanfordnlp/imdb", dataset_id="stanfordnlp/imdb", valid_fraction=0.2, clean_html=True, num_layers=2,
    tie_weights=True, batch_size=64, epochs=10, max_minutes=25.0, optimizer="adamw", lr=2e-3, weight_decay=0.01,
    clip=1.0, schedule="cosine", warmup_steps=200, eval_tokens=200_000, eval_batch_size=64, log_every=50,
    save_every=300.0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # 001_…: PTB, 2x650 tied, Adam 1e-3, clip 5, bptt 30; reported valid 78.0 / test 75.1. PTB is
    # distributed tokenised: split on whitespace, as the write-up's data code does.
    "ptb-tied-650": dict(
        level="word", tokenize="whitespace", data="ptb_text_only", dataset_id="ptb_text_only",
        text_column="sentence", emb_size=650, hidden_size=650,
        num_layers=2, dropout=0.5, tie_weights=True, batch_size=20, bptt=30, epochs=40,
        optimizer="adam", lr=1e-3, weight_decay=1e-5, clip=5.0, schedule="plateau", lr_factor=0.5,
        lr_patience=2, lowercase=False,
    ),
    # 000_…: WikiText-2, 2x1024 tied, dropout 0.65.
    "wikitext2-tied-1024": dict(
        dataset_id="Salesforce/wikitext",
        level="word", tokenize="whitespace", data="Salesforce/wikitext", data_config="wikitext-2-v1", emb_size=1024,
        hidden_size=1024, num_layers=2, dropout=0.65, tie_weights=True, batch_size=128, bptt=50,
        epochs=50, optimizer="adam", lr=1e-3, clip=0.25, schedule="plateau", lr_factor=0.5,
        lr_patience=0, lowercase=False,
    ),
    # 003_…: 10,000 CNN/DailyMail highlights (config 2.0.0; the subset drawn by numpy's default_rng(1234) as
    # there), 3x512, basic_english, min_freq 3; reported vocabulary 14,174 and test 220.6.
    "cnndm-3x512": dict(
        dataset_id="abisee/cnn_dailymail",
        level="word", data="abisee/cnn_dailymail", data_config="2.0.0", text_column="highlights",
        train_docs=10_000, min_freq=3, emb_size=512, hidden_size=512, num_layers=3, dropout=0.65,
        tie_weights=False, batch_size=128, bptt=50, epochs=20, optimizer="adam", lr=1e-3, clip=0.25,
        schedule="plateau", lr_factor=0.5, lr_patience=0,
    ),
    # 002_…: IMDB reviews, word level, basic_english, HTML cleaned. Every word seen 3 times (36,356: 1.96 %
    # of the test words are <unk>, against 5.6 % at 10k); the adaptive softmax keeps the large vocabulary
    # cheap, and a 256-wide tied embedding under a 2x384 LSTM keeps the folder under 25 MB in bf16.
    # Validation during training scores the first 200k tokens; the final test all 25k test reviews.
    "imdb-word": dict(
        _IMDB, level="word", min_freq=3, emb_size=256, hidden_size=384, dropout=0.25, bptt=35, eval_every=1500,
    ),
    # The same reviews as byte-level BPE subwords (8,000, learnt on the training split): cased, nothing
    # is <unk>, so its bits per character are the honest figure to set against imdb-word's lower bound.
    "imdb-bpe": dict(
        _IMDB, level="bpe", max_vocab=8000, emb_size=384, hidden_size=384, dropout=0.2, bptt=64, eval_every=600,
    ),
    # 004_…: Tiny Shakespeare, characters; the standard split is first 90 % / last 10 %. 1M characters
    # over-fit an LSTM fast (a 58-minute cosine peaked at 1.4021 nats/char after 36 min, then rose while
    # train loss fell to 1.05), so dropout is high, the windows shift every epoch, weight decay stays on
    # and a high peak rate decays (cosine) over 26 minutes. 2x512 rather than wider: on a 2-core AMD EPYC
    # with bf16 it reads 11,100 chars/s against 7,300 for 2x640, and the schedule needs the data.
    "shakespeare-char": dict(
        dataset_id="karpathy/tiny_shakespeare",
        level="char", data="../shared/data/tinyshakespeare/input.txt", valid_fraction=0.1,
        lowercase=False, emb_size=128, hidden_size=512, num_layers=2, dropout=0.3, tie_weights=False,
        batch_size=64, bptt=128, epochs=100, max_minutes=26.0, optimizer="adamw", lr=4e-3, weight_decay=0.1,
        clip=1.0, schedule="cosine", warmup_steps=100, eval_every=250, log_every=25, save_every=300.0,
    ),
}


def preset(name: str) -> dict[str, Any]:
    """The field values of a named preset; raises ConfigError naming the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
