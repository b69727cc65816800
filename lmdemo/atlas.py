"""The cell atlas: which unit of the LSTM follows which property of the text, found and named automatically.

Every unit (`h` and `c` of every layer) is scored against every property of `lmdemo.properties` on one
part of the model's own corpus (the part it trained on) and the best is chosen there; its score is then
measured on a part the model never trained on (the test split, else the validation split), beside a
**baseline**: the best unit of a randomly initialised model of the same shape (seed `BASELINE_SEED`),
chosen and scored the same way, so that what training added shows. Scores: Pearson's r for positions
(signed by the direction chosen), AUC for yes/no properties, and for review sentiment the accuracy of one
threshold on the unit's value at the end of a review (threshold and direction chosen on the first part).

The result is `atlas.json` in the model folder: layers counted from 1 (bottom), units from 0; `sign` +1 when
the unit rises with the property (higher where it holds, or the further along the position), -1 when it falls;
and for a property with two nameable ends a `dial`: the unit's 95th and 5th percentile on the choosing text,
named by the ends they stand for, the values a sampler can hold the unit at to steer the model. It also keeps
a few short `examples` of the scoring text (and with sentiment, held-out rated reviews picked by a stated rule: typical
ones the sentiment unit reads right, and one it misreads, see `review_examples`), so the app can show a unit over text
the model never trained on without the corpus at hand.

More properties can be scored over text read once (`read_parts`, then `property_atlas`): a visitor's own rules
(`lmdemo.rules`) are chosen and scored by the same code as the atlas's properties.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import torch

from lmdemo.checkpoint import ATLAS_FILE, TrainedModel
from lmdemo.config import Config, data_name
from lmdemo.corpus import clean_html, load_corpus
from lmdemo.files import write_atomic
from lmdemo.model import LSTMLanguageModel
from lmdemo.properties import BINARY, POSITION, SENTIMENT, Property, properties_for, rating_label, truth, without_ratings
from lmdemo.sampling import SettingsError
from lmdemo.tokenizer import Tokenizer

QUANTITIES = ("h", "c")
BASELINE_SEED = 0
PART_TOKENS = 20_000  # tokens per part read for the structural properties
PASSAGE_TOKENS = 400  # each passage read from the start of a line, all passages side by side
PASSAGE_CHARACTERS = 16 * PASSAGE_TOKENS  # text encoded per passage: enough for 400 tokens of any level
REVIEWS_PER_PART = 400  # rated reviews read per part by default (about 125k word tokens)
MIN_EXAMPLES = 20  # a yes/no property (or sentiment class) needs this many of each answer in each part
DIAL_PERCENTILES = (95, 5)  # the unit's values standing for a property's two ends
REVIEW_BATCH = 128
STRETCH = 256  # most tokens read at once per review in `final_states` (bounds its memory)
SCORE_BLOCK = 256  # columns scored at once
METRICS = {POSITION: "r", BINARY: "auc"}
EXAMPLE_PASSAGES, EXAMPLE_CHARACTERS = 8, 320  # held-out passages kept in atlas.json, cut at a line or word end
# of each label, held-out rated reviews the sentiment unit reads right (plus one it misreads), short enough to keep
EXAMPLE_REVIEWS, REVIEW_CHARACTERS = 2, 600


@dataclass
class Texts:
    """One part of the text the atlas reads: passages for the structural properties, rated reviews for
    sentiment (each as token ids, read from the start of a text), and where they came from."""

    source: str
    passages: list[list[int]]
    reviews: list[list[int]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)  # True: positive (`rating_label`)

    def describe(self) -> dict:
        return {"source": self.source, "passages": len(self.passages),
                "tokens": sum(len(p) for p in self.passages), "rated_reviews": len(self.reviews),
                "positive_reviews": sum(self.labels)}


@dataclass(frozen=True)
class Unit:
    """A unit of the model, as a column of `read_passages`' or `final_states`' matrices."""

    layer: int  # from 0 (bottom)
    quantity: str
    unit: int

    @classmethod
    def from_column(cls, column: int, hidden_size: int) -> "Unit":
        block, unit = divmod(column, hidden_size)
        layer, quantity = divmod(block, len(QUANTITIES))
        return cls(layer, QUANTITIES[quantity], unit)

    def column(self, hidden_size: int) -> int:
        """Where this unit is in those matrices: the inverse of `from_column`."""
        return (self.layer * len(QUANTITIES) + QUANTITIES.index(self.quantity)) * hidden_size + self.unit


# -- the text ------------------------------------------------------------------------------------
def texts_from(text: str, source: str, tokenizer: Tokenizer, clean: bool, tokens: int = PART_TOKENS,
               max_reviews: int | None = REVIEWS_PER_PART) -> Texts:
    """Passages of about `tokens` tokens in all, spread evenly over `text`, each from the start of a line;
    and its rated lines (reviews) with their labels, rating sentences removed, at most `max_reviews` of them
    spread evenly (None: all; 0: none, without looking for ratings). `clean` removes HTML as training did."""
    prepare = clean_html if clean else (lambda doc: doc)
    count = max(1, math.ceil(tokens / PASSAGE_TOKENS))
    starts = sorted({0} | {text.find("\n", j * len(text) // count) + 1 for j in range(1, count)})
    passages = []
    for start, end in zip(starts, [*starts[1:], len(text)]):
        ids = tokenizer.encode(prepare(text[start:min(end, start + PASSAGE_CHARACTERS)]))[:PASSAGE_TOKENS]
        if ids:
            passages.append(ids)
    rated = [(line, label) for line in text.split("\n") if (label := rating_label(line)) is not None] \
        if max_reviews != 0 else []
    if max_reviews is not None and len(rated) > max_reviews:
        rated = [rated[j * len(rated) // max_reviews] for j in range(max_reviews)]
    reviews, labels = [], []
    for line, label in rated:
        ids = tokenizer.encode(prepare(without_ratings(line)))
        if ids:
            reviews.append(ids)
            labels.append(label)
    return Texts(source, passages, reviews, labels)


def stream_texts(ids: Sequence[int], source: str, tokenizer: Tokenizer, tokens: int = PART_TOKENS) -> Texts:
    """Passages of about `tokens` tokens in all, spread evenly over text already encoded (a split as training read
    it), each from a token that follows a line break (or the first): what a trainer has when its text file is gone."""
    ids = [int(i) for i in ids]
    pieces = tokenizer.pieces(ids)
    line_starts = [0] + [index + 1 for index, piece in enumerate(pieces[:-1]) if piece.endswith("\n")]
    count = max(1, math.ceil(tokens / PASSAGE_TOKENS))
    starts = sorted({line_starts[min(bisect.bisect_left(line_starts, j * len(ids) // count), len(line_starts) - 1)]
                     for j in range(count)})
    passages = [ids[start:min(end, start + PASSAGE_TOKENS)] for start, end in zip(starts, [*starts[1:], len(ids)])]
    return Texts(source, [passage for passage in passages if passage])


def corpus_texts(trained: TrainedModel, tokens: int = PART_TOKENS,
                 max_reviews: int | None = REVIEWS_PER_PART) -> tuple[Texts, Texts]:
    """The model's own corpus: chosen on what it trained on (train, and valid when a test split is held
    out), scored on its test split, else its validation split."""
    config = trained.config
    corpus = load_corpus(config.replace(clean_html=False))  # cleaned per passage, after ratings are found
    held_out = "test" if any(doc.strip() for doc in corpus.test) else "valid"
    data = data_name(config.data, config.data_config)  # shown as a heading: no local folders
    seen = ["train", "valid"] if held_out == "test" else ["train"]
    parts = []
    for names in (seen, [held_out]):
        text = "\n".join(doc for name in names for doc in corpus.split(name))
        source = f"{' and '.join(names)} split{'s' if len(names) > 1 else ''} of {data}"
        parts.append(texts_from(text, source, trained.tokenizer, config.clean_html, tokens, max_reviews))
    return parts[0], parts[1]


def file_texts(trained: TrainedModel, path: Path, tokens: int = PART_TOKENS,
               max_reviews: int | None = REVIEWS_PER_PART) -> tuple[Texts, Texts]:
    """A text file of one's own: chosen on its first half, scored on its second (cut at a line break)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    cut = text.find("\n", len(text) // 2) + 1 or len(text) // 2
    clean, name = trained.config.clean_html, data_name(str(path))  # shown as a heading: no local folders
    return (texts_from(text[:cut], f"first half of {name}", trained.tokenizer, clean, tokens, max_reviews),
            texts_from(text[cut:], f"second half of {name}", trained.tokenizer, clean, tokens, max_reviews))


# -- reading the model ---------------------------------------------------------------------------
def random_model(config: Config, seed: int = BASELINE_SEED) -> LSTMLanguageModel:
    """A model of the same shape, randomly initialised as training starts one (the global RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LSTMLanguageModel(config).eval()


@torch.no_grad()
def read_passages(model: LSTMLanguageModel, passages: Sequence[Sequence[int]], start_id: int) -> torch.Tensor:
    """Every unit's value after every token: [tokens of all passages, layers * 2 * hidden] (columns: layer 1's
    h, layer 1's c, layer 2's h, ...). Each passage is read after `start_id` from a zero state, as a text
    starts in training, all side by side. h and c both come from PyTorch's LSTM cell, one token at a time, so c need
    not be worked out again from the gates: on CPU, 40 passages of 400 tokens take about two thirds of the time of the
    LSTM kernel over whole passages, a few passages some tens of milliseconds more."""
    model.eval()
    config = model.config
    lengths = torch.tensor([len(p) for p in passages])
    ids = torch.full((len(passages), int(lengths.max()) + 1), start_id)
    for row, passage in enumerate(passages):
        ids[row, 1:len(passage) + 1] = torch.tensor(passage)
    x = model.embedding(ids.t())  # [tokens, passages, embedding]: a token's inputs side by side
    hidden = config.hidden_size
    values = x.new_empty(ids.size(1), len(passages), config.num_layers * len(QUANTITIES) * hidden)
    for layer in range(config.num_layers):
        weights = [getattr(model.lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h_columns, c_columns = (slice(block * hidden, (block + 1) * hidden) for block in (2 * layer, 2 * layer + 1))
        state = (x.new_zeros(len(passages), hidden),) * 2
        for t in range(ids.size(1)):
            state = torch.lstm_cell(x[t], state, *weights)
            values[t, :, h_columns], values[t, :, c_columns] = state
        x = values[:, :, h_columns]
    return values.transpose(0, 1)[:, 1:][torch.arange(ids.size(1) - 1) < lengths[:, None]]


@torch.inference_mode()
def final_states(model: LSTMLanguageModel, reviews: Sequence[Sequence[int]], start_id: int) -> torch.Tensor:
    """Every unit's value at the end of each review [reviews, layers * 2 * hidden], columns as in
    `read_passages`. Reviews of like length are read together by the model's own nn.LSTM, longest first, in
    stretches of plain (unpacked) input: each stretch runs the reviews not yet ended up to the next review's
    end, whose state is then final. On CPU this takes about half the time of one packed batch."""
    model.eval()
    order = sorted(range(len(reviews)), key=lambda i: -len(reviews[i]))
    finals = torch.empty(len(reviews), model.config.num_layers * len(QUANTITIES) * model.config.hidden_size)
    for first in range(0, len(order), REVIEW_BATCH):
        batch = order[first:first + REVIEW_BATCH]
        ends = [len(reviews[i]) + 1 for i in batch]  # after start_id
        ids = torch.full((len(batch), ends[0]), start_id)
        for row, i in enumerate(batch):
            ids[row, 1:ends[row]] = torch.tensor(reviews[i], dtype=torch.long)
        state = None
        live, position = len(batch), 0
        while live:
            end = min(ends[live - 1], position + STRETCH)
            state = tuple(part[:, :live].contiguous() for part in state) if state is not None else None
            _, state = model.lstm(model.embedding(ids[:live, position:end]), state)
            position = end
            while live and ends[live - 1] == position:
                live -= 1
                finals[batch[live]] = torch.stack([state[0][:, live], state[1][:, live]], 1).flatten()
    return finals


# -- scores --------------------------------------------------------------------------------------
def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each row's ranks [F, N] (1 = lowest) of values [F, N], equal values sharing the mean of their ranks. Sorted by
    numpy, about twice as fast as torch on CPU (the order among equal values does not matter)."""
    order = torch.from_numpy(numpy.argsort(values.numpy(), axis=1))
    ordered = values.gather(1, order)
    index = torch.arange(values.size(1)).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, index, 0).cummax(1).values
    last = torch.where(ends, index, values.size(1) - 1).flip(1).cummin(1).values.flip(1)
    return torch.empty_like(values, dtype=torch.double).scatter_(1, order, (first + last).double() / 2 + 1)


def column_ranks(values: torch.Tensor) -> torch.Tensor:
    """Every column's ranks [N, F] of values [N, F] (`average_ranks`), a block of columns at a time, in float32 (exact
    below 2**23 tokens)."""
    ranks = torch.empty_like(values, dtype=torch.float32)
    for first in range(0, values.size(1), SCORE_BLOCK):
        ranks[:, first:first + SCORE_BLOCK] = average_ranks(values[:, first:first + SCORE_BLOCK].t().contiguous()).t()
    return ranks


def column_scores(values: torch.Tensor, targets: torch.Tensor, kinds: Sequence[str],
                  ranks: torch.Tensor | None = None) -> torch.Tensor:
    """Every column's score [F, P] of values [N, F] for each property of targets [N, P]: Pearson's r for a
    position, for a yes/no property the AUC, the chance that a random yes scores above a random no (ties half,
    by the Mann-Whitney rank sum). A block of columns at a time: ranks of every column at once take GBs. The
    columns' `ranks`, when already found (`column_ranks(values)`), make a yes/no property one product."""
    targets = targets.double()
    position = torch.tensor([kind == POSITION for kind in kinds])
    centred = targets[:, position] - targets[:, position].mean(0)
    yes = targets[:, ~position]
    n_yes = yes.sum(0)
    n_no = len(yes) - n_yes
    scores = torch.empty(values.size(1), len(kinds), dtype=torch.double)
    for first in range(0, values.size(1), SCORE_BLOCK):
        block = values[:, first:first + SCORE_BLOCK].double()
        rows = slice(first, first + block.size(1))
        if position.any():
            deviation = block - block.mean(0)
            spread = deviation.norm(dim=0)[:, None] * centred.norm(dim=0)[None]
            scores[rows, position] = torch.where(spread > 0, deviation.t() @ centred / spread.clamp_min(1e-300), 0.0)
        if (~position).any():
            block_ranks = ranks[:, rows].t().double() if ranks is not None \
                else average_ranks(values[:, rows].t().contiguous())
            rank_sums = block_ranks @ yes
            scores[rows, ~position] = (rank_sums - n_yes * (n_yes + 1) / 2) / (n_yes * n_no)
    return scores


def best_thresholds(values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each column of values [N, F], the threshold and direction that classify the yes/no labels best:
    (accuracy, threshold, sign) each [F]; sign +1 says yes above the threshold."""
    ordered, order = values.sort(0)
    yes = labels.double()[order]  # the labels in each column's order
    n = values.size(0)
    below_no = torch.cat([torch.zeros(1, values.size(1), dtype=torch.double), (1 - yes).cumsum(0)])
    above_yes = yes.sum(0) - torch.cat([torch.zeros(1, values.size(1), dtype=torch.double), yes.cumsum(0)])
    accuracy = (below_no + above_yes) / n  # cut k: the k lowest say no, the rest yes
    separable = torch.ones_like(accuracy, dtype=torch.bool)  # a cut between equal values is no cut
    separable[1:-1] = ordered[1:] > ordered[:-1]
    best = torch.where(separable, torch.maximum(accuracy, 1 - accuracy), -1.0)
    cut = best.argmax(0)
    padded = torch.cat([ordered[:1] - 1, ordered, ordered[-1:] + 1]).double()
    columns = torch.arange(values.size(1))
    threshold = (padded[cut, columns] + padded[cut + 1, columns]) / 2
    sign = torch.where(accuracy[cut, columns] >= 0.5, 1.0, -1.0)
    return best[cut, columns], threshold, sign


def _signed(kinds: Sequence[str], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(how well, sign) of scores [F, P]: r folds to |r|, an AUC below 0.5 to 1 - AUC (the unit falls where
    the property holds)."""
    middle = torch.tensor([0.0 if kind == POSITION else 0.5 for kind in kinds], dtype=torch.double)
    sign = torch.where(scores >= middle, 1.0, -1.0)
    return middle + (scores - middle) * sign, sign


def usable(prop: Property, target: numpy.ndarray) -> bool:
    """Whether a part holds enough of a property to score it: both answers `MIN_EXAMPLES` times, or a position
    that varies."""
    if prop.kind == BINARY:
        return min(int(target.sum()), int((1 - target).sum())) >= MIN_EXAMPLES
    return len(target) > 1 and bool(target.std() > 0)


# -- the atlas -----------------------------------------------------------------------------------
@dataclass
class _Choice:
    """A property's unit, chosen on the choosing part: its column, direction, threshold (sentiment) and the
    values standing for the property's two ends (`DIAL_PERCENTILES` of its values there)."""

    column: int
    sign: float
    ends: tuple[float, float]
    threshold: float | None = None


def _choice(values: torch.Tensor, column: int, sign: float, threshold: float | None = None) -> _Choice:
    high, low = (float(numpy.percentile(values[:, column].numpy(), q)) for q in DIAL_PERCENTILES)
    return _Choice(column, sign, (high, low) if sign > 0 else (low, high), threshold)


def _choose(values: torch.Tensor, props: Sequence[Property], targets: torch.Tensor,
            ranks: torch.Tensor | None = None) -> list[_Choice]:
    """The best column per property of the choosing part's values [tokens, columns] (and their `ranks`, if found)."""
    kinds = [prop.kind for prop in props]
    scores, signs = _signed(kinds, column_scores(values, targets, kinds, ranks))
    return [_choice(values, int(column), float(signs[column, index])) for index, column in enumerate(scores.argmax(0))]


def _held_out(values: torch.Tensor, props: Sequence[Property], targets: torch.Tensor,
              choices: Sequence[_Choice]) -> list[float]:
    """Each chosen column's score on the held-out part's values, in the direction chosen."""
    return [float(column_scores(choice.sign * values[:, [choice.column]], targets[:, [index]], [prop.kind])[0, 0])
            for index, (prop, choice) in enumerate(zip(props, choices))]


@dataclass
class EndReading:
    """The sentiment unit at the end of each held-out review: its value, and what its threshold reads there."""

    values: torch.Tensor  # [reviews]
    positive: torch.Tensor  # [reviews], True: read as positive (in the direction and threshold chosen)


def _sentiment(model: LSTMLanguageModel, choose: Texts, score: Texts, start_id: int
               ) -> tuple[_Choice, float, EndReading]:
    """The sentiment column, direction and threshold chosen on `choose`'s rated reviews; its accuracy on `score`'s,
    and how its unit read each of them."""
    values = final_states(model, choose.reviews, start_id)
    accuracy, threshold, sign = best_thresholds(values, torch.tensor(choose.labels))
    column = int(accuracy.argmax())
    choice = _choice(values, column, float(sign[column]), float(threshold[column]))
    values = final_states(model, score.reviews, start_id)[:, column]
    ends = EndReading(values, choice.sign * (values - choice.threshold) > 0)
    return choice, float((ends.positive == torch.tensor(score.labels)).double().mean()), ends


def _targets(passages: Sequence[Sequence[str]], props: Sequence[Property]) -> numpy.ndarray:
    """The properties' values [tokens, properties] over passages of pieces, one after another."""
    return numpy.concatenate([truth(pieces, props) for pieces in passages]) if passages \
        else numpy.zeros((0, len(props)))


def _has_sentiment(texts: Texts) -> bool:
    positive = sum(texts.labels)
    return min(positive, len(texts.labels) - positive) >= MIN_EXAMPLES


def _entry(prop: Property, choice: _Choice, score: float, baseline: float, hidden_size: int) -> dict:
    """A property's row of atlas.json."""
    unit = Unit.from_column(choice.column, hidden_size)
    entry = {"property": prop.name, "description": prop.description, "layer": unit.layer + 1, "unit": unit.unit,
             "quantity": unit.quantity, "metric": "accuracy" if prop is SENTIMENT else METRICS[prop.kind],
             "score": round(score, 4), "baseline": round(baseline, 4), "sign": int(choice.sign)}
    if choice.threshold is not None:
        entry["threshold"] = round(choice.threshold, 4)
    if prop.ends is not None:
        entry["dial"] = {end: round(value, 4) for end, value in zip(prop.ends, choice.ends)}
    return entry


def _atlas(entries: list[dict], choose: Texts, score: Texts, seed: int, kept: list[dict]) -> dict:
    """atlas.json: the rows, the texts read and the examples `kept`."""
    return {"properties": entries, "choose": choose.describe(), "score": score.describe(),
            "baseline_model": f"the same shape, randomly initialised (seed {seed}), its best unit chosen and "
                              f"scored the same way",
            "examples": kept}


def build_atlas(trained: TrainedModel, choose: Texts, score: Texts, seed: int = BASELINE_SEED,
                keep_examples: bool = True) -> dict:
    """The atlas of `trained`: per property its best unit, chosen on `choose`, scored on `score`, beside the
    best unit of a random model of the same shape (`seed`) chosen and scored the same way; with `keep_examples`,
    a few passages and rated reviews of `score` to show units over (`examples`; not for a text that is not ours to
    copy into a model folder)."""
    tokenizer, config = trained.tokenizer, trained.config
    candidates = properties_for(config.level)
    choose_truth = _targets([tokenizer.pieces(p) for p in choose.passages], candidates)
    score_truth = _targets([tokenizer.pieces(p) for p in score.passages], candidates)
    kept = [index for index, prop in enumerate(candidates)
            if usable(prop, choose_truth[:, index]) and usable(prop, score_truth[:, index])]
    props = [candidates[index] for index in kept]
    targets = torch.from_numpy(choose_truth[:, kept]), torch.from_numpy(score_truth[:, kept])
    sentiment = _has_sentiment(choose) and _has_sentiment(score)
    scored = []
    for model in (trained.model, random_model(config, seed)):
        choices, scores, ends = [], [], None
        if props:  # one part's values at a time: for 20,000 tokens of a 2x512 model they take 160 MB
            choices = _choose(read_passages(model, choose.passages, tokenizer.start_id), props, targets[0])
            scores = _held_out(read_passages(model, score.passages, tokenizer.start_id), props, targets[1], choices)
        if sentiment:
            choice, accuracy, ends = _sentiment(model, choose, score, tokenizer.start_id)
            choices, scores = [*choices, choice], [*scores, accuracy]
        scored.append((choices, scores, ends))
    (choices, scores, ends), (_, baselines, _) = scored
    entries = [_entry(prop, choice, score_, baseline, config.hidden_size) for prop, choice, score_, baseline
               in zip(props + ([SENTIMENT] if sentiment else []), choices, scores, baselines)]
    return _atlas(entries, choose, score, seed, examples(score, tokenizer, ends) if keep_examples else [])


# -- more properties over text already read --------------------------------------------------------------------------
@dataclass
class Reading:
    """One model's values after each token of the choosing and of the scoring passages ([tokens, columns] each, as
    `read_passages`), and the ranks of each column over the choosing ones (`column_ranks`), which every yes/no
    property is chosen by."""

    choose: torch.Tensor
    score: torch.Tensor
    choose_ranks: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.choose.nbytes + self.score.nbytes + self.choose_ranks.nbytes


@dataclass
class Readings:
    """The choosing and the scoring passages read by a model and by a random model of its shape, with the passages'
    pieces: all that choosing and scoring one more property of those passages needs, so that many can be scored
    after one reading."""

    choose: Texts
    score: Texts
    pieces: tuple[list[list[str]], list[list[str]]]  # each part's passages as the tokenizer's pieces
    trained: Reading
    random: Reading
    seed: int

    @property
    def passages(self) -> list[list[str]]:
        """Every passage's pieces, the choosing part's first."""
        return [*self.pieces[0], *self.pieces[1]]

    @property
    def nbytes(self) -> int:
        return self.trained.nbytes + self.random.nbytes


def read_parts(trained: TrainedModel, choose: Texts, score: Texts, seed: int = BASELINE_SEED) -> Readings:
    """Both parts read by `trained` and by a random model of its shape (`seed`). Each model reads the two parts'
    passages side by side in one pass: its recurrent steps take little longer for twice the rows."""
    tokenizer = trained.tokenizer
    cut = sum(len(passage) for passage in choose.passages)
    read = []
    for model in (trained.model, random_model(trained.config, seed)):
        values = read_passages(model, [*choose.passages, *score.passages], tokenizer.start_id)
        read.append(Reading(values[:cut], values[cut:], column_ranks(values[:cut])))
    pieces = [tokenizer.pieces(p) for p in choose.passages], [tokenizer.pieces(p) for p in score.passages]
    return Readings(choose, score, pieces, read[0], read[1], seed)


def property_atlas(trained: TrainedModel, readings: Readings, props: Sequence[Property]) -> dict:
    """The atlas of `props` (a visitor's rules: `lmdemo.rules`) over text already read: atlas.json's schema with just
    their rows, each unit chosen and scored as `build_atlas` does its own, and examples of the scoring text. A property
    that a part holds too little of to score raises SettingsError, saying how little."""
    choose_truth, score_truth = _targets(readings.pieces[0], props), _targets(readings.pieces[1], props)
    for index, prop in enumerate(props):
        for texts, values in ((readings.choose, choose_truth[:, index]), (readings.score, score_truth[:, index])):
            if not usable(prop, values):
                raise SettingsError(_too_little(prop, values, texts.source))
    targets = torch.from_numpy(choose_truth), torch.from_numpy(score_truth)
    scored = []
    for reading in (readings.trained, readings.random):
        choices = _choose(reading.choose, props, targets[0], reading.choose_ranks)
        scored.append((choices, _held_out(reading.score, props, targets[1], choices)))
    (choices, scores), (_, baselines) = scored
    hidden_size = trained.config.hidden_size
    entries = [_entry(prop, choice, score, baseline, hidden_size)
               for prop, choice, score, baseline in zip(props, choices, scores, baselines)]
    return _atlas(entries, readings.choose, readings.score, readings.seed,
                  examples(readings.score, trained.tokenizer, None))


def _too_little(prop: Property, values: numpy.ndarray, source: str) -> str:
    """Why `prop` cannot be scored on a part: how often it holds there, or that it does not vary."""
    what = f"{prop.name} ({prop.description})"
    if prop.kind == POSITION:
        return f"{what} does not vary over the {len(values):,} tokens of the {source}: nothing to follow"
    return (f"{what} holds on {int(values.sum()):,} of the {len(values):,} tokens of the {source}, as the model reads "
            f"it: a unit is scored where it holds on at least {MIN_EXAMPLES} tokens and fails on {MIN_EXAMPLES}")


def examples(texts: Texts, tokenizer: Tokenizer, ends: EndReading | None) -> list[dict]:
    """A few short readable texts of a held-out part, for the app to show a unit over: `EXAMPLE_PASSAGES` passages
    spread over it and, where the sentiment unit read its rated reviews (`ends`), the reviews `review_examples`
    picks, whole (ratings removed), labelled."""
    count = min(EXAMPLE_PASSAGES, len(texts.passages))
    picked = [texts.passages[j * len(texts.passages) // count] for j in range(count)]
    kept = [{"text": _shortened(tokenizer.decode(passage), EXAMPLE_CHARACTERS)} for passage in picked]
    if ends is not None:
        reviews = [tokenizer.decode(review) for review in texts.reviews]
        whole = torch.tensor([len(review) <= REVIEW_CHARACTERS for review in reviews])
        kept += [{"text": reviews[index], "sentiment": "positive" if texts.labels[index] else "negative"}
                 for index in review_examples(torch.tensor(texts.labels), ends, whole)]
    return [example for example in kept if example["text"].strip()]


def review_examples(labels: torch.Tensor, ends: EndReading, whole: torch.Tensor) -> list[int]:
    """Which held-out rated reviews show the sentiment unit: examples of what it does, not of anything else (such as
    being short). Of each label (positive first), the `EXAMPLE_REVIEWS` the unit reads right whose value at the end
    lies nearest the median of all that label's reviews read right (typical ones); then one that it misreads, of the
    label it misreads more often, the one nearest the median of those misreads (a typical miss). Only reviews short
    enough to keep `whole` are picked, so that reading an example ends where the atlas's reading did."""
    right = ends.positive == labels
    misread_positive = int((~right & labels).sum()) >= int((~right & ~labels).sum())
    groups = [(right & (labels == label), EXAMPLE_REVIEWS) for label in (True, False)]
    groups.append((~right & (labels == misread_positive), 1))
    picked = []
    for group, count in groups:
        candidates = (group & whole).nonzero()[:, 0]
        if len(candidates):
            distance = (ends.values[candidates] - ends.values[group].median()).abs()
            picked += candidates[distance.argsort(stable=True)[:count]].tolist()
    return picked


def _shortened(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at its last line break (or else space) in the second half."""
    if len(text) <= limit:
        return text
    for separator in ("\n", " "):
        cut = text.rfind(separator, limit // 2, limit)
        if cut > 0:
            return text[:cut + (separator == "\n")]
    return text[:limit]


def write_atlas(folder: str | Path, atlas: dict) -> Path:
    path = Path(folder) / ATLAS_FILE
    write_atomic(path, json.dumps(atlas, indent=1, ensure_ascii=False) + "\n")
    return path


def read_atlas(folder: str | Path) -> dict | None:
    """The atlas saved in a model folder, or None when it has none."""
    path = Path(folder) / ATLAS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def atlas_table(atlas: dict) -> str:
    """The atlas as a plain-text table, one property a line."""
    lines = [f"{'property':<26} {'unit':<12} {'metric':<8} {'score':>6} {'random':>6}  dial"]
    for entry in atlas["properties"]:
        unit = f"L{entry['layer']} {entry['quantity']} {entry['unit']}"
        dial = ", ".join(f"{end} {value:+.3f}" for end, value in entry.get("dial", {}).items())
        lines.append(f"{entry['property']:<26} {unit:<12} {entry['metric']:<8} {entry['score']:>6.3f} "
                     f"{entry['baseline']:>6.3f}  {dial}")
    return "\n".join(lines)
