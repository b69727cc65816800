"""Train, evaluate, save, load and sample word- and character-level LSTM language models."""

from lmdemo.checkpoint import TrainedModel, load_model, save_model
from lmdemo.config import PRESETS, Config
from lmdemo.generation import Generator, Sampling
from lmdemo.model import LSTMLanguageModel
from lmdemo.tokenizer import Tokenizer

__all__ = ["PRESETS", "Config", "Generator", "LSTMLanguageModel", "Sampling", "Tokenizer", "TrainedModel",
           "load_model", "save_model"]
