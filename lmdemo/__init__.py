"""Train, evaluate, save, load and sample word- and character-level LSTM language models.

The public names load on first use (PEP 562): `python -m lmdemo` then imports torch inside the command,
where a Ctrl-C ends with one line and exit code 130 rather than a traceback from the middle of an import.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"TrainedModel": "checkpoint", "load_model": "checkpoint", "save_model": "checkpoint",
          "PRESETS": "config", "Config": "config", "Generator": "generation", "Sampling": "generation",
          "LSTMLanguageModel": "model", "Tokenizer": "tokenizer"}

__all__ = ["PRESETS", "Config", "Generator", "LSTMLanguageModel", "Sampling", "Tokenizer", "TrainedModel",
           "load_model", "save_model"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lmdemo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lmdemo.{_HOMES[name]}"), name)
