"""The web demo's sampling requests as plain functions: sample a prompt, explain a token, compare models.

Everything here returns plain data (dataclasses, lists, numbers) so the Gradio app stays a thin
layer of widgets and the behaviour can be tested without a browser. Form values are checked by
`lmdemo.web.forms`, models come from `lmdemo.web.registry`, and the "Inside the LSTM" tab's requests live in
`lmdemo.web.inside`. A request reads its prompt through the model once: the prompt's colouring, the
sampling and the bars after the prompt share one `Reading`, and bars inside a sample go on from it. The model
is run through a decoder (lmdemo.batching): the app's batches every request's steps in one loop per model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lmdemo.batching import Decoder, PerRequest
from lmdemo.generation import Dial, Prompt, Reading, Sample, Sampling, SettingsError, TokenScore
from lmdemo.tokenizer import LevelUnit, level_unit
from lmdemo.web.forms import Limits, parse_whole, read_prompt
from lmdemo.web.registry import ModelInfo, Models

DEFAULT_TEMPERATURES = (0.2, 0.5, 0.8, 1.0, 1.3)
DEFAULT_MAX_NEW_TOKENS = 200  # what the Sample and Compare forms offer (a request may ask up to its limit)
DEFAULT_BARS = 10


@dataclass
class Progress:
    """A generation request so far: what the model read, how it scored it, and the samples.

    The page keeps the finished one between events (a `gr.State`, for as long as Gradio keeps a closed page's
    state), so it holds only what the page shows or needs next: no model, no text the page does not show, and no
    tensor but the reading's own [V] distribution after the prompt and its ([L, 1, H], [L, 1, H]) state, never a
    view into a larger matrix. Its size grows with the prompt only by the prompt's per-token records (ids, pieces,
    scores); tests/test_memory.py measures it.
    """

    model: str
    unit: LevelUnit  # what one token is, in words ("character", "word", "subword token")
    by_line: bool  # whether the model reads text line by line (newlines are not tokens of their own)
    lower_bound: bool  # whether its bits per character understate the text's cost (words; a prompt with <unk>)
    prompt: Prompt
    reading: Reading  # the prompt as the model read it: its scores, the next token's odds, the state
    samples: list[Sample]
    seconds: float
    done: bool = False
    dial: Dial | None = None  # when the request turned a dial: `dialled` are the same samples with it held
    dialled: list[Sample] = field(default_factory=list)


@dataclass
class NextTokens:
    """The model's next-token distribution at one point of a sample."""

    context: str  # the text read so far (prompt and the sample's first `position` tokens)
    position: int
    temperature: float  # the sample's
    scores: list[TokenScore]
    chosen: TokenScore | None  # what the sample actually took there, if it went on


@dataclass
class Comparison:
    """The same prompt, settings and seed through several models, with each one's next-token bars after the
    prompt and what each model is (its card, with its measured bits per character)."""

    runs: list[Progress]
    next_tokens: list[NextTokens]
    infos: list[ModelInfo]


def chosen_position(run: Progress, sample_index: Any, position: Any) -> tuple[int, int]:
    """The sample (0-based) and position in it that form values name; a position past the sample's end is its end."""
    index = parse_whole(sample_index, "sample", empty=0)
    if not 0 <= index < len(run.samples):
        raise SettingsError(f"sample must be from 1 to {len(run.samples)} (got {index + 1})")
    return index, max(0, min(parse_whole(position, "position", empty=0), len(run.samples[index].ids)))


class Demo:
    """The Sample and Compare tabs' requests on the served models."""

    def __init__(self, models: Models, limits: Limits = Limits(), decoder: Decoder | None = None):
        self.models, self.limits = models, limits
        self.decoder = decoder or PerRequest()

    def generate(self, name: str, prompt_text: Any, sampling: Sampling, every: float = 0.1, client: str = ""
                 ) -> Iterator[Progress]:
        """Stream a request: a `Progress` at most every `every` seconds, and a last one with `done`; `client` (an
        address) is whose request it is, for the decoder's fair share.

        With a dial, the samples come twice under the same seed: without it (`samples`), then with it
        (`dialled`), so the page can show what the dial changed. Every update is the same object brought up
        to date, so keep a copy to compare updates.
        """
        prompt_text = read_prompt(prompt_text, self.limits)
        generator = self.models.generator(name)
        generator.check_dial(sampling.dial)  # refused before anything is sampled
        start = time.perf_counter()
        prompt = generator.prompt(prompt_text, self.limits.max_prompt_tokens)
        reading = self.decoder.reading(generator, prompt.ids, client=client)
        tokenizer = generator.tokenizer
        progress = Progress(name, level_unit(tokenizer.level), tokenizer.by_line, tokenizer.lower_bound(prompt.ids),
                            prompt, reading, [], 0.0, dial=sampling.dial)
        runs = [("samples", replace(sampling, dial=None))] + ([("dialled", sampling)] if sampling.dial else [])
        for field_name, run in runs:
            for samples in self.decoder.stream(generator, reading, run, every, client):
                setattr(progress, field_name, samples)
                progress.seconds = time.perf_counter() - start
                yield progress
        progress.seconds, progress.done = time.perf_counter() - start, True
        yield progress

    def next_tokens(self, run: Progress, sample_index: Any, position: Any, k: Any = DEFAULT_BARS, client: str = ""
                    ) -> NextTokens:
        """The top-k next tokens after the prompt and the first `position` tokens of one sample (form values); `client`
        is whose request it is, for the decoder's fair share."""
        index, position = chosen_position(run, sample_index, position)
        k = parse_whole(k, "number of bars", empty=DEFAULT_BARS)
        if not 1 <= k <= self.limits.max_bars:
            raise SettingsError(f"number of bars must be from 1 to {self.limits.max_bars} (got {k})")
        generator, sample = self.models.generator(run.model), run.samples[index]
        reading = self.decoder.reading(generator, sample.ids[:position], after=run.reading, client=client)
        chosen = None
        if position < len(sample.ids):
            chosen = TokenScore(sample.ids[position], sample.tokens[position], sample.probabilities[position])
        context = generator.tokenizer.decode([*run.prompt.ids, *sample.ids[:position]])
        return NextTokens(context, position, sample.temperature, generator.next_tokens(reading, k), chosen)

    def compare(self, names: Sequence[str], prompt_text: Any, sampling: Sampling, k: int = DEFAULT_BARS,
                client: str = "") -> Comparison:
        """Run each model to the end on the same request; the bars show each one's first token after the prompt."""
        runs = []
        for name in names:
            for progress in self.generate(name, prompt_text, sampling, every=math.inf, client=client):
                pass
            runs.append(progress)
        return Comparison(runs, [self.next_tokens(run, 0, 0, k, client) for run in runs],
                          [self.models.describe(name) for name in names])

