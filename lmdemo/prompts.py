"""A prompt as a model reads it: its ids, the end of a long text only, and what had to change to read it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmdemo.tokenizer import Tokenizer, level_unit


@dataclass
class Prompt:
    """A prompt as the model reads it, with what had to change to make it readable.

    `pieces[i]` is token i's share of the readable text (as in `Sample`); `text` is their join: the
    prompt as the model read it (at the word level lower-cased and detokenised, cut to what was kept).
    `characters` counts the prompt as it was written (the part kept): what its bits per character
    divide by, as `eval` and training do, whatever the model re-renders.
    """

    ids: list[int]
    notes: list[str]
    characters: int
    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def encode_prompt(tokenizer: Tokenizer, text: str, max_tokens: int | None = None) -> Prompt:
    """Encode a prompt, keeping at most its last `max_tokens`, and say what was changed.

    Only the end of a long text is encoded: the last `max_tokens` + 1 characters, widened (to whole
    lines when the tokenizer reads by line, where its encoding restarts) until they hold more than
    `max_tokens` tokens.
    """
    kept, ids, starts = _encode_end(tokenizer, text, max_tokens)
    notes = [] if ids else ["empty prompt: the model starts from the beginning of a text"]
    characters = len(text)
    if max_tokens is not None and len(ids) > max_tokens:
        notes.append(f"prompt cut to its last {max_tokens} tokens (it had {len(text):,} characters)")
        ids, characters = ids[-max_tokens:], len(kept) - starts[-max_tokens]
    unknown = ids.count(tokenizer.unk_id) if tokenizer.unk_id is not None else 0
    if unknown:
        pieces = unknown_pieces(tokenizer, kept)[-unknown:]
        shown = ", ".join(repr(piece) for piece in list(dict.fromkeys(pieces))[:5])
        notes.append(f"{level_unit(tokenizer.level).count(unknown)} not in the model's vocabulary "
                     f"became <unk>: {shown}")
    return Prompt(ids, notes, characters, tokenizer.pieces(ids))


def _encode_end(tokenizer: Tokenizer, text: str, max_tokens: int | None) -> tuple[str, list[int], list[int]]:
    """The shortest end of `text` that encodes to more than `max_tokens` ids (or all of it), its ids and
    where each starts in it.

    Its ids are the end of the whole text's ids: a tokenizer that reads by line starts afresh at
    each line, so the window starts at one; one that does not (characters) reads a token per
    character, so any start will do.
    """
    size = len(text) if max_tokens is None else max_tokens + 1
    while True:
        start = max(0, len(text) - size)
        if start and tokenizer.by_line:
            start = text.rfind("\n", 0, start) + 1
        ids, starts = tokenizer.encode_with_starts(text[start:])
        if start == 0 or len(ids) > max_tokens:
            return text[start:], ids, starts
        size *= 4


def unknown_pieces(tokenizer: Tokenizer, text: str) -> list[str]:
    """The characters or words of `text` that the vocabulary lacks, in order (none without `<unk>`)."""
    if tokenizer.unk_id is None:
        return []
    encoding = tokenizer.hf.encode(text, add_special_tokens=False)
    return [text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets)
            if token == tokenizer.unk_id]
