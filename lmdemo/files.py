"""Files on disk: crash-safe writes (a reader, or a resumed run, sees the old file or the new one, never
half), and the one rule that tells a local path from a Hugging Face Hub id."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_HUB_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?"  # the Hub's characters; no '-' or '.' at either end
_HUB_ID = re.compile(rf"(?:{_HUB_NAME}/)?{_HUB_NAME}")
_FILE_SUFFIX = re.compile(r"\.[A-Za-z]+$")  # "train.txt", "reviews.jsonl": a file's name, not a repo's


def hub_id(source: str | Path) -> str | None:
    """The Hugging Face Hub repo id `source` names, or None when it names a local path (which may be missing).

    The one rule for models and datasets alike: what exists on disk is local. Otherwise a Hub id is `name` or
    `owner/name` in the Hub's characters (letters, digits, `-`, `_`, `.`) whose end is not a file suffix; so
    `./x`, `/missing`, `~/x`, `a/b/c` and `notes.txt` are missing local paths (a "not found" error, not a
    download), while `owner/name`, `ptb_text_only` and `owner/gpt-1.3B` are looked up on the Hub.
    """
    text = str(source)
    if not text or Path(text).expanduser().exists():
        return None
    return text if _HUB_ID.fullmatch(text) and not _FILE_SUFFIX.search(text) else None


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; these are ordinary shareable files
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
