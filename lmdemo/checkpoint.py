"""A model is a folder: config.json, model.safetensors, tokenizer.json, metrics.jsonl, README.md.

The same folder works locally and as a Hugging Face Hub repo. Nothing in it is pickled, so loading
never runs code from the file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from lmdemo.config import Config
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, Metrics, bits, read_metrics
from lmdemo.model import LSTMLanguageModel
from lmdemo.tokenizer import TOKENIZER_FILE, Tokenizer

MODEL_DIR = "model"  # a training run's best model, inside its run folder
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


class ModelLoadError(ValueError):
    """The model folder or Hub repo is missing, incomplete or unreachable."""


@dataclass
class TrainedModel:
    """A loaded model with what it needs to be used and described."""

    model: LSTMLanguageModel
    tokenizer: Tokenizer
    source: str
    folder: Path
    metrics: Metrics | None

    @property
    def config(self) -> Config:
        return self.model.config


def save_model(folder: str | Path, model: LSTMLanguageModel, tokenizer: Tokenizer,
               metrics_path: str | Path | None = None, name: str | None = None) -> Path:
    """Write a complete model folder; it replaces `folder` only once it is whole."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save(staging / TOKENIZER_FILE)
    metrics = None
    if metrics_path is not None and Path(metrics_path).exists():
        shutil.copyfile(metrics_path, staging / METRICS_FILE)
        metrics = read_metrics(staging / METRICS_FILE)
    write_model_card(staging, model, metrics, name or folder.name)
    _replace_dir(staging, folder)
    return folder


def _replace_dir(new: Path, old: Path) -> None:
    """Swap `new` into `old`'s place; a crash in between leaves `old` or its `.previous` copy."""
    previous = old.with_name(f".{old.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if old.exists():
        os.replace(old, previous)
    os.replace(new, old)
    shutil.rmtree(previous, ignore_errors=True)


def load_model(source: str | Path, revision: str | None = None) -> TrainedModel:
    """Load a model folder, or a Hub repo id through `huggingface_hub` (cache and HF_HUB_OFFLINE honoured)."""
    text = str(source)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        if folder.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
            raise ModelLoadError(f"no model folder at {text}")
        folder = _download(text, revision)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"{text} is not a model folder: missing {', '.join(missing)}")
    try:
        model = read_weights(folder)
        tokenizer = Tokenizer.load(folder / TOKENIZER_FILE, model.config.level, model.config.tokenize)
    except Exception as error:  # corrupt JSON or safetensors, wrong shapes: one message for the user
        raise ModelLoadError(f"cannot load the model in {text}: {str(error).splitlines()[0]}") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ModelLoadError(f"{text}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                             f"expects {model.config.vocab_size}")
    metrics = read_metrics(folder / METRICS_FILE) if (folder / METRICS_FILE).exists() else None
    return TrainedModel(model, tokenizer, text, folder, metrics)


def read_weights(folder: Path) -> LSTMLanguageModel:
    """The model in a folder, in eval mode; weights stored in bf16/fp16 are upcast to fp32."""
    model = LSTMLanguageModel(Config.load(folder / CONFIG_FILE))
    safetensors.torch.load_model(model, folder / WEIGHTS_FILE, strict=True)
    return model.eval()


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=[*REQUIRED_FILES, METRICS_FILE, CARD_FILE]))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ModelLoadError(f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be "
                             f"reached (offline?)") from None
    except HfHubHTTPError as error:
        raise ModelLoadError(f"cannot fetch {repo_id} from the Hugging Face Hub: "
                             f"{str(error).splitlines()[0]}") from None


def push_model(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a model folder as a Hub model repo; returns the commit URL."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload lmdemo model")
    return str(commit.commit_url)


def write_model_card(folder: Path, model: LSTMLanguageModel, metrics: Metrics | None, name: str) -> None:
    """README.md with Hub front matter: the measured figures come from the metrics log."""
    config = model.config
    start = metrics.last("start") if metrics else None
    best = metrics.best("val_loss") if metrics else None
    test = metrics.last("test") if metrics else None
    dataset = config.data if config.data and not Path(config.data).exists() else None
    results = []
    for record, split, prefix in ((best, "validation", "val"), (test, "test", "test")):
        if record and record.get(f"{prefix}_ppl") is not None:
            results.append(EvalResult(task_type="text-generation", dataset_type=dataset or "text",
                                      dataset_name=dataset or Path(config.data).name or "text",
                                      dataset_split=split, metric_type="perplexity",
                                      metric_value=round(record[f"{prefix}_ppl"], 3)))
    data = ModelCardData(library_name="lmdemo", tags=["lstm", "language-model", "lmdemo", config.level],
                         pipeline_tag="text-generation", datasets=[dataset] if dataset else None,
                         model_name=name, eval_results=results or None)
    size = f"{config.num_layers}×{config.hidden_size} LSTM, embedding {config.emb_size}" + \
        (", adaptive softmax" if config.adaptive_softmax else "")
    lines = [f"# {name}", "",
             f"A {config.level}-level LSTM language model trained with lmdemo: {size}, {'tied' if config.tie_weights else 'untied'} "
             f"weights, {config.vocab_size:,} tokens in the vocabulary, {model.num_parameters():,} parameters.",
             "", "## Results", "", _results_table(best, test, config.level), ""]
    if start:
        lines += ["## Training", "",
                  f"- data: `{config.data}`" + (f" ({config.data_config})" if config.data_config else ""),
                  f"- command: `{start.get('command', '?')}`",
                  f"- hardware: {start.get('hardware', '?')}, {start.get('precision', 'fp32')} compute"]
        last = metrics.trained() if metrics else {}
        if last.get("time") is not None:
            lines.append(f"- training time: {last['time'] / 60:.1f} min over {last.get('step', '?')} steps "
                         f"({last.get('tokens', 0):,} tokens)")
        speeds = [r["tokens_per_sec"] for r in metrics.events("train") if r.get("tokens_per_sec")]
        if speeds:
            lines.append(f"- speed: {sorted(speeds)[len(speeds) // 2]:,.0f} tokens/s (median of log intervals)")
        lines.append("")
    lines += ["## Use", "", "```bash", f"python -m lmdemo generate {name} --prompt \"...\"",
              f"python -m lmdemo eval {name} --split {'test' if test else 'valid'}", "```", "",
              "```python", "from lmdemo import load_model", f"lm = load_model({name!r})", "```", ""]
    ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).save(
        folder / CARD_FILE)


def _results_table(best: dict | None, test: dict | None, level: str) -> str:
    head = "| split | loss (nats/token) | perplexity |" + (" bits/char |" if level == "char" else "")
    rows = [head, "|---|---|---|" + ("---|" if level == "char" else "")]
    for record, label, prefix in ((best, "validation (best)", "val"), (test, "test", "test")):
        if record and record.get(f"{prefix}_loss") is not None:
            row = f"| {label} | {record[f'{prefix}_loss']:.4f} | {record[f'{prefix}_ppl']:.2f} |"
            if level == "char":
                row += f" {bits(record[f'{prefix}_loss']):.4f} |"
            rows.append(row)
    if len(rows) == 2:
        return "No evaluation was logged."
    table = "\n".join(rows)
    if test and test.get("test_unk_rate") is not None and level == "word":
        table += (f"\n\n{test['test_unk_rate']:.2%} of the {test.get('test_tokens', 0):,} test tokens are `<unk>` "
                  f"(words outside the vocabulary); the model predicts `<unk>` as one word, which flatters the "
                  f"perplexity more the smaller the vocabulary.")
    return table
