"""The scores a training run records: its training loss, each validation, the test of its best model, and why
it ended.

The sums and the best-so-far live in the run's `Counters`, which the resumable state saves, so a
resumed run continues the same sums and compares against the same best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmdemo.config import Config
from lmdemo.evaluation import Split, evaluate
from lmdemo.metrics import improves, loss_record
from lmdemo.model import LSTMLanguageModel
from lmdemo.parallel import Parallel
from lmdemo.run_folder import Counters, RunFolder
from lmdemo.tokenizer import Tokenizer


DIVERGED_NATS = 1.0  # a model e times worse than uniform guessing is lost, not learning (Adam 2e-3 at batch 10 went
# from 8.9 to 12.5 nats on a 10k-word model and on to 13.0)

# Why a run ended: the `end` record's `reason`, in words, with its `limit`.
ENDINGS = {
    "budget": "its time budget of {limit} was used",
    "steps": "its {limit:,} steps were done",
    "epochs": "its {limit:,} epochs were done",
    "early_stop": "early stop, after {limit} validation{s} in a row without improvement",
    "diverged": "the validation loss diverged past {limit} nats a token (worse than guessing every token alike); "
                "a lower --lr or a larger --batch-size may help",
    "stop": "a stop was asked for",
}


def why_it_ended(end: dict[str, Any]) -> str:
    """An `end` record's reason in words: "early stop, after 8 validations in a row without improvement"."""
    reason, limit = end.get("reason"), end.get("limit")
    if reason == "budget" and isinstance(limit, (int, float)):
        limit = f"{limit * 60:.0f} s" if limit < 2 else f"{limit:g} min"
    try:
        return ENDINGS[reason].format(limit=limit, s="" if limit == 1 else "s")
    except (KeyError, TypeError, ValueError):  # a log from another version
        return f"it ended ({reason})"


class RunScores:
    """Training loss between records (summed over processes), validation (the best model kept, patience
    and plateau counted) and the final test of the best model, each written to the log by `log`."""

    def __init__(self, config: Config, splits: dict[str, Split], tokenizer: Tokenizer, parallel: Parallel,
                 folder: RunFolder, counters: Counters, log: Callable[..., None]):
        self.config, self.splits, self.tokenizer, self.parallel = config, splits, tokenizer, parallel
        self.folder, self.counters, self.log = folder, counters, log

    def absorb(self, interval: torch.Tensor) -> tuple[float, int]:
        """Sum the interval over processes into the counters (since the last record and the last
        validation), reset it, and return the totals since the last training record."""
        loss_sum, tokens = self.parallel.sum(interval.clone()).tolist()
        interval.zero_()
        counters = self.counters
        counters.interval_loss += loss_sum
        counters.interval_tokens += int(tokens)
        counters.since_val_loss += loss_sum
        counters.since_val_tokens += int(tokens)
        return counters.interval_loss, counters.interval_tokens

    def log_train(self, interval: torch.Tensor, tokens_per_sec: float, epoch: float) -> float:
        """Write a training record for the steps since the last one; returns its loss."""
        counters = self.counters
        loss_sum, tokens = self.absorb(interval)
        counters.interval_loss, counters.interval_tokens = 0.0, 0
        loss = loss_sum / max(tokens, 1)
        self.log("train", **loss_record("train", loss, self.splits["train"].tokens_per_character),
                 tokens_per_sec=tokens_per_sec, epoch=epoch)
        return loss

    def validate(self, model: LSTMLanguageModel, interval: torch.Tensor, epoch: float, epoch_end: bool) -> str | None:
        """Score the validation split, keep the best model, adjust the rate; why to stop now ("early_stop" or
        "diverged", ENDINGS' keys), if so."""
        config, counters = self.config, self.counters
        self.absorb(interval)
        valid = self.splits["valid"]
        score = evaluate(model, valid.ids, config.eval_batch_size, config.eval_bptt, self.parallel)
        train_part = (loss_record("train", counters.since_val_loss / counters.since_val_tokens,
                                  self.splits["train"].tokens_per_character) if counters.since_val_tokens else {})
        counters.since_val_loss, counters.since_val_tokens = 0.0, 0
        counters.last_val_step = counters.step
        improved = improves(score.loss, counters.best_val)
        if improved:
            counters.best_val = score.loss
            counters.evals_since_best = counters.evals_since_drop = 0
        else:
            counters.evals_since_best += 1
            counters.evals_since_drop += 1
            if config.schedule == "plateau" and counters.evals_since_drop > config.lr_patience:
                counters.lr_scale *= config.lr_factor
                counters.evals_since_drop = 0
        self.log("val", **train_part, **loss_record("val", score.loss, valid.tokens_per_character),
                 epoch=epoch, epoch_end=epoch_end, best=improved)
        if improved:
            self.folder.save_best(model, self.tokenizer)
        if not score.loss <= self.diverged_past:  # NaN too: a run that blew up never comes back on its own
            return "diverged"
        return "early_stop" if config.early_stop and counters.evals_since_best >= config.early_stop else None

    @property
    def diverged_past(self) -> float:
        """A validation loss this high, DIVERGED_NATS past guessing every token alike (log V), ends the run."""
        return round(math.log(self.config.vocab_size) + DIVERGED_NATS, 2)

    def test_best(self, last: LSTMLanguageModel, device: torch.device, ending: dict[str, Any]) -> Path:
        """Score the best model (`last` if none was kept) on the test split, record why the run ended (`ending`: its
        `reason`, a key of ENDINGS, `limit` and whether the last validation was still `improving`) and write the
        final model folder.

        The run state keeps the last weights (saved at the last validation), so a resume with raised
        limits continues from them; the best model is read back into a separate copy for the test.
        """
        self.parallel.barrier()
        best = self.folder.read_best()
        model = best.to(device) if best is not None else last
        test = self.splits["test"]
        if test.ids.numel() >= 2:
            score = evaluate(model, test.ids, self.config.eval_batch_size, self.config.eval_bptt, self.parallel)
            unk_id = self.tokenizer.unk_id
            unk_rate = (test.ids == unk_id).double().mean().item() if unk_id is not None else 0.0
            self.log("test", **loss_record("test", score.loss, test.tokens_per_character), test_tokens=score.tokens,
                     test_characters=test.characters, test_unk_rate=unk_rate)
        self.log("end", **ending)
        self.folder.save_best(model, self.tokenizer)
        return self.folder.best
