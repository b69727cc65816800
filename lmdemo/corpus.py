"""Where text comes from: a text file, a folder of split files, or a Hugging Face dataset.

Every source becomes a `Corpus` of three lists of documents. Word-level documents are lines or
dataset rows (each later ends with `<eos>`); character-level splits are one document each, so the
text is modelled exactly as written, newlines included.
"""

from __future__ import annotations

import html
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy

from lmdemo.config import Config
from lmdemo.files import hub_id

SPLIT_FILE_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "valid": ("valid", "validation", "val", "dev"),
    "test": ("test",),
}
_HTML_TAG = re.compile(r"</?(?!unk>|eos>)[a-zA-Z][^<>]{0,200}>")


class CorpusError(ValueError):
    """The text could not be found or read; the message says where it looked."""


@dataclass
class Corpus:
    train: list[str]
    valid: list[str]
    test: list[str]

    def split(self, name: str) -> list[str]:
        if name not in ("train", "valid", "test"):
            raise CorpusError(f"unknown split {name!r}; use train, valid or test")
        return getattr(self, name)


def load_corpus(config: Config) -> Corpus:
    """Read the corpus `config.data` names and cut it into train/valid/test as configured."""
    if not config.data:
        raise CorpusError("no data given: pass --data with a text file, a folder or a dataset id")
    source = Path(config.data).expanduser()
    if source.is_file():
        text = source.read_text(encoding="utf-8", errors="replace")
        splits = _carve({"train": documents(text, config.level)}, config, shuffle=False)
    elif source.is_dir() and _is_saved_dataset(source):
        splits = _carve(_dataset_splits(config, saved=source), config, shuffle=True)
    elif source.is_dir() and any(source.glob("*.txt")):
        splits = _folder_splits(source, config)
    elif source.is_dir() or hub_id(config.data):  # a Hub id, or data files (json, csv, parquet) datasets reads
        splits = _carve(_dataset_splits(config), config, shuffle=True)
    else:
        raise CorpusError(f"data not found: {config.data} (no such file or folder)")

    if config.train_docs is not None and config.train_docs < len(splits["train"]):
        # As the CNN/DailyMail write-up draws its subset (and datasets' filter keeps the file's order).
        picked = sorted(numpy.random.default_rng(config.seed).choice(len(splits["train"]), config.train_docs,
                                                                     replace=False).tolist())
        splits["train"] = [splits["train"][i] for i in picked]
    corpus = Corpus(**{name: _prepare(docs, config) for name, docs in splits.items()})
    for name in ("train", "valid"):
        if not any(doc.strip() for doc in corpus.split(name)):
            raise CorpusError(f"the {name} split of {config.data} is empty")
    return corpus


def clean_html(doc: str) -> str:
    """A document with HTML entities decoded and each tag a space, as training reads it under `clean_html`."""
    return _HTML_TAG.sub(" ", html.unescape(doc))


def _prepare(docs: list[str], config: Config) -> list[str]:
    if config.clean_html:
        docs = [clean_html(doc) for doc in docs]
    if config.max_tokens is not None:
        docs = _head(docs, config.max_tokens, config.level)
    if config.level == "char" and len(docs) > 1:
        docs = ["\n".join(docs)]
    return docs


def _head(docs: list[str], max_tokens: int, level: str) -> list[str]:
    """Enough leading documents for about `max_tokens` tokens; the stream is cut exactly later."""
    kept, count = [], 0
    for doc in docs:
        size = len(doc) if level == "char" else len(doc.split()) + 1
        if count + size > 2 * max_tokens and kept:
            break
        kept.append(doc[: 2 * max_tokens] if level == "char" else doc)
        count += size
    return kept


def documents(text: str, level: str) -> list[str]:
    """A text as documents: a character model reads it whole, the others line by line."""
    if level == "char":
        return [text]
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _carve(splits: dict[str, list[str]], config: Config, shuffle: bool) -> dict[str, list[str]]:
    """Take missing validation/test splits from the end of the training text.

    Dataset rows are shuffled first (with the seed): hub datasets are often sorted by label.
    """
    splits = dict(splits)
    train = splits["train"]
    missing = [(name, frac) for name, frac in (("test", config.test_fraction), ("valid", config.valid_fraction))
               if name not in splits]
    if missing and shuffle:
        train = list(train)
        random.Random(config.seed).shuffle(train)
    for name, fraction in missing:
        if fraction <= 0:
            splits[name] = []
            continue
        train, splits[name] = cut_documents(train, fraction, config.level)
    splits["train"] = train
    return splits


def cut_documents(docs: list[str], fraction: float, level: str) -> tuple[list[str], list[str]]:
    """The documents kept for training and the last `fraction` held out: whole documents, or a lone text cut
    by characters (at a line break for word models)."""
    if len(docs) == 1:
        text = docs[0]
        cut = round(len(text) * (1 - fraction))
        if level == "word":
            cut = text.rfind("\n", 0, cut) + 1 or cut
        return [text[:cut]], [text[cut:]]
    cut = round(len(docs) * (1 - fraction))
    return docs[:cut], docs[cut:]


def _folder_splits(folder: Path, config: Config) -> dict[str, list[str]]:
    found = {}
    for key, split_name in (("train", config.train_split), ("valid", config.valid_split),
                            ("test", config.test_split)):
        path = _split_file(folder, split_name)
        if path is not None:
            found[key] = documents(path.read_text(encoding="utf-8", errors="replace"), config.level)
    if "train" not in found:
        raise CorpusError(f"no training file in {folder}: expected {config.train_split}.txt "
                          f"(or pass --train-split with the name of a file there)")
    return _carve(found, config, shuffle=False)


def _split_file(folder: Path, split_name: str) -> Path | None:
    for name in SPLIT_FILE_NAMES.get(split_name, (split_name,)):
        for pattern in (f"{name}.txt", f"*.{name}.txt"):
            matches = sorted(folder.glob(pattern))
            if matches:
                return matches[0]
    return None


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def _dataset_splits(config: Config, saved: Path | None = None) -> dict[str, list[str]]:
    """Rows of a Hugging Face dataset: a Hub id (or its cache), a folder of data files, or save_to_disk."""
    import datasets

    try:
        if saved is not None:
            loaded = datasets.load_from_disk(str(saved))
        else:
            loaded = datasets.load_dataset(config.data, config.data_config)
    except Exception as error:  # datasets raises many types: missing, offline, gated, bad config
        where = saved or config.data
        raise CorpusError(f"could not load dataset {where}"
                          f"{' (' + config.data_config + ')' if config.data_config else ''}: "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({config.train_split: loaded})
    splits = {}
    for key, name in (("train", config.train_split), ("valid", config.valid_split), ("test", config.test_split)):
        if name in loaded:
            if config.text_column not in loaded[name].column_names:
                raise CorpusError(f"dataset {config.data} has no column {config.text_column!r}; "
                                  f"its columns are {', '.join(loaded[name].column_names)} (use --text-column)")
            splits[key] = [str(t) for t in loaded[name][config.text_column]]
    if "train" not in splits:
        raise CorpusError(f"dataset {config.data} has no split {config.train_split!r}; "
                          f"it has {', '.join(loaded)} (use --train-split)")
    return splits
