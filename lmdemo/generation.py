"""Sampling, next-token distributions and per-token surprisal.

Decoding is one token per step, so it runs the LSTM cell by hand on weights laid out once for
that: each layer's input and recurrent matrices are fused into one [in+H, 4H] matrix (one matmul
per layer per step instead of nn.LSTM's per-call set-up), and for small vocabularies the first
layer's input projection of every token is precomputed, turning that matmul into a row lookup.
All temperatures of a request are rows of one batch: one forward pass per step serves them all.
Randomness comes from a `torch.Generator` per request, never from the global seed, so the same
request gives the same text whatever else the process is doing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from lmdemo.checkpoint import TrainedModel
from lmdemo.model import LSTMLanguageModel

LOOKUP_LIMIT = 4_000_000  # floats in a precomputed first-layer table (16 MB)
SEED_LIMIT = 2**64


class SettingsError(ValueError):
    """A sampling setting is out of range; the message says which and what is allowed."""


@dataclass
class Sampling:
    temperatures: Sequence[float] = (0.8,)
    max_new_tokens: int = 200
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int = 0
    stop: str | None = None  # stop a sample once its text contains this
    stop_at_eos: bool = True  # word models: end a sample at <eos>
    avoid_unk: bool = False  # never sample <unk>

    def check(self, max_new_tokens_limit: int | None = None) -> None:
        if not self.temperatures:
            raise SettingsError("give at least one temperature")
        for t in self.temperatures:
            if not isinstance(t, (int, float)) or math.isnan(t) or t < 0 or t > 100:
                raise SettingsError(f"temperature must be a number from 0 to 100 (got {t})")
        if self.max_new_tokens < 1 or (max_new_tokens_limit and self.max_new_tokens > max_new_tokens_limit):
            raise SettingsError(f"max new tokens must be from 1 to {max_new_tokens_limit or 'any'} "
                                f"(got {self.max_new_tokens})")
        if self.top_k < 0:
            raise SettingsError(f"top-k must be 0 (off) or positive (got {self.top_k})")
        if not 0.0 < self.top_p <= 1.0:
            raise SettingsError(f"top-p must be in (0, 1] (got {self.top_p})")
        if not 0 <= self.seed < SEED_LIMIT:
            raise SettingsError(f"seed must be from 0 to 2**64-1 (got {self.seed})")


@dataclass
class Sample:
    temperature: float
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False  # stopped at <eos> or the stop string


@dataclass
class Prompt:
    """A prompt as the model reads it, with what had to change to make it readable."""

    ids: list[int]
    notes: list[str]


class Generator:
    """Fast inference over one loaded model; safe to share between threads (it holds no request state)."""

    def __init__(self, trained: TrainedModel):
        self.trained, self.tokenizer = trained, trained.tokenizer
        model: LSTMLanguageModel = trained.model.eval()
        self.config = model.config
        with torch.no_grad():
            self.embedding = model.embedding.weight.detach().float().contiguous()
            self.layers = []
            for layer in range(self.config.num_layers):
                w_ih = getattr(model.lstm, f"weight_ih_l{layer}").detach().float()
                w_hh = getattr(model.lstm, f"weight_hh_l{layer}").detach().float()
                bias = (getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")).detach().float()
                self.layers.append((torch.cat([w_ih, w_hh], 1).t().contiguous(), bias.contiguous()))
            vocab, gates = self.embedding.size(0), 4 * self.config.hidden_size
            w_in0 = self.layers[0][0][: self.config.emb_size]
            self.input_table = (self.embedding @ w_in0 + self.layers[0][1]).contiguous() \
                if vocab * gates <= LOOKUP_LIMIT else None
            self.w_hh0 = self.layers[0][0][self.config.emb_size:].contiguous()
            self.projection = model.projection.weight.detach().float().t().contiguous() \
                if model.projection is not None else None
            self.decoder_w = model.decoder.weight.detach().float().t().contiguous()
            self.decoder_b = model.decoder.bias.detach().float().contiguous()

    # -- the cell ------------------------------------------------------------------------------
    def step(self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits [B, V] for ids [B] and the next state ([L, B, H] each)."""
        h_all, c_all = state
        hs, cs = [], []
        x = None
        for layer, (weight, bias) in enumerate(self.layers):
            h, c = h_all[layer], c_all[layer]
            if layer == 0 and self.input_table is not None:
                gates = torch.addmm(self.input_table[ids], h, self.w_hh0)
            elif layer == 0:
                gates = torch.addmm(bias, torch.cat([self.embedding[ids], h], 1), weight)
            else:
                gates = torch.addmm(bias, torch.cat([x, h], 1), weight)
            h, c = _cell(gates, c)
            hs.append(h)
            cs.append(c)
            x = h
        if self.projection is not None:
            x = x @ self.projection
        return torch.addmm(self.decoder_b, x, self.decoder_w), (torch.stack(hs), torch.stack(cs))

    @torch.no_grad()
    def read(self, ids: Sequence[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Log-probabilities [len(ids)+1, V] of each next token, and the state after the last id.

        Row 0 is the distribution before any token (after a start-of-text <eos>/newline).
        """
        sequence = torch.tensor([self.start_id, *ids], dtype=torch.long)
        logits, (h, c) = self.trained.model(sequence.unsqueeze(0))
        return F.log_softmax(logits[0].float(), -1), (h, c)

    @property
    def start_id(self) -> int:
        """What a text starts after: <eos> for word models, a newline for character models."""
        if self.tokenizer.level == "word":
            return self.tokenizer.eos_id
        newline = self.tokenizer.hf.token_to_id("\n")
        return newline if newline is not None else self.tokenizer.unk_id

    # -- prompts -------------------------------------------------------------------------------
    def prompt(self, text: str, max_tokens: int | None = None) -> Prompt:
        ids, notes = self.tokenizer.encode(text), []
        if not text.strip():
            notes.append("empty prompt: the model starts from the beginning of a text")
        unknown = ids.count(self.tokenizer.unk_id)
        if unknown:
            notes.append(f"{unknown} {'character' if self.tokenizer.level == 'char' else 'word'}"
                         f"{'s' if unknown > 1 else ''} not in the vocabulary became <unk>")
        if max_tokens is not None and len(ids) > max_tokens:
            notes.append(f"prompt cut to its last {max_tokens} tokens (it had {len(ids)})")
            ids = ids[-max_tokens:]
        return Prompt(ids, notes)

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[list[Sample]]:
        """Yield the samples (one per temperature) after each new token; the prompt is read once."""
        log_probs, (h, c) = self.read(prompt_ids)
        batch = len(sampling.temperatures)
        logits = log_probs[-1].expand(batch, -1)
        state = (h.expand(-1, batch, -1).contiguous(), c.expand(-1, batch, -1).contiguous())
        generator = torch.Generator().manual_seed(sampling.seed % SEED_LIMIT)
        temperatures = torch.tensor([float(t) for t in sampling.temperatures]).unsqueeze(1)
        samples = [Sample(float(t)) for t in sampling.temperatures]
        for _ in range(sampling.max_new_tokens):
            next_ids = self._choose(logits, temperatures, sampling, generator)
            for sample, token in zip(samples, next_ids.tolist()):
                if sample.finished:
                    continue
                if token == self.tokenizer.eos_id and self.tokenizer.level == "word" and sampling.stop_at_eos:
                    sample.finished = True
                    continue
                sample.ids.append(token)
                sample.text = self.tokenizer.decode(sample.ids)
                if sampling.stop and sampling.stop in sample.text:
                    sample.text = sample.text[: sample.text.index(sampling.stop) + len(sampling.stop)]
                    sample.finished = True
            yield samples
            if all(s.finished for s in samples):
                return
            logits, state = self.step(next_ids, state)

    def generate(self, prompt_ids: Sequence[int], sampling: Sampling) -> list[Sample]:
        samples: list[Sample] = []
        for samples in self.stream(prompt_ids, sampling):
            pass
        return samples

    def _choose(self, logits: torch.Tensor, temperatures: torch.Tensor, sampling: Sampling,
                generator: torch.Generator) -> torch.Tensor:
        logits = logits.float().clone()
        if sampling.avoid_unk:
            logits[:, self.tokenizer.unk_id] = -math.inf
        greedy = logits.argmax(-1)
        scaled = logits / temperatures.clamp_min(1e-6)
        if sampling.top_k:
            kth = scaled.topk(min(sampling.top_k, scaled.size(-1)), -1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        if sampling.top_p < 1.0:
            sorted_logits, order = scaled.sort(-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) >= sampling.top_p  # keep the token that crosses p
            scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
        sampled = torch.multinomial(scaled.softmax(-1), 1, generator=generator).squeeze(1)
        return torch.where(temperatures.squeeze(1) == 0, greedy, sampled)

    # -- looking at distributions --------------------------------------------------------------
    def next_tokens(self, prompt_ids: Sequence[int], k: int = 10) -> list[tuple[str, float]]:
        """The k most likely next tokens after `prompt_ids`, with probabilities."""
        log_probs, _ = self.read(prompt_ids)
        top = log_probs[-1].exp().topk(min(k, log_probs.size(-1)))
        return list(zip(self.tokenizer.tokens(top.indices.tolist()), top.values.tolist()))

    def surprisal(self, ids: Sequence[int]) -> list[tuple[str, float]]:
        """Each token with the probability the model gave it, reading left to right."""
        if not ids:
            return []
        log_probs, _ = self.read(ids)
        chosen = log_probs[torch.arange(len(ids)), torch.tensor(list(ids))]
        return list(zip(self.tokenizer.tokens(ids), chosen.exp().tolist()))


def _cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
