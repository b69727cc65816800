"""A model is a folder: config.json, model.safetensors, tokenizer.json, metrics.jsonl, README.md, atlas.json,
examples.json.

The same folder works locally and as a Hugging Face Hub repo. Nothing in it is pickled, so loading
never runs code from the file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from lmdemo.config import Config, data_name
from lmdemo.corpus import Corpus
from lmdemo.files import hub_id, write_atomic
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, Metrics, bits, read_metrics
from lmdemo.model import LSTMLanguageModel
from lmdemo.tokenizer import TOKENIZER_FILE, Tokenizer, level_unit

MODEL_DIR = "model"  # a training run's best model, inside its run folder
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
ATLAS_FILE = "atlas.json"  # the cell atlas (`lmdemo.atlas`), optional
EXAMPLES_FILE = "examples.json"  # the model's own example prompts, openings of its text (`example_prompts`), optional
EXAMPLE_COUNT = 4  # the training text's opening, then openings of held-out passages
OPENING_MIN_CHARS, OPENING_MAX_CHARS = 16, 80  # an opening: whole lines up to this many, cut after a word beyond
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
    examples: list[str] = field(default_factory=list)  # prompts from its own text; none in older folders

    @property
    def config(self) -> Config:
        return self.model.config


def save_model(folder: str | Path, model: LSTMLanguageModel, tokenizer: Tokenizer,
               metrics_path: str | Path | None = None, name: str | None = None, bf16: bool = False,
               examples: list[str] | None = None) -> Path:
    """Write a complete model folder; it replaces `folder` only once it is whole. `bf16` stores the
    weights at half the size (they are upcast to fp32 on load); `examples` are its example prompts."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if bf16:
        weights = safetensors.torch.load_file(staging / WEIGHTS_FILE)
        safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, staging / WEIGHTS_FILE,
                                    metadata={"format": "pt"})
        os.chmod(staging / WEIGHTS_FILE, 0o644)
    tokenizer.save(staging / TOKENIZER_FILE)
    metrics = None
    if metrics_path is not None and Path(metrics_path).exists():
        shutil.copyfile(metrics_path, staging / METRICS_FILE)
        metrics = read_metrics(staging / METRICS_FILE)
    if examples:
        write_examples(staging, examples)
    write_model_card(staging, model, metrics, name or folder.name)
    _replace_dir(staging, folder)
    return folder


def export_model(source: str | Path, out: str | Path, name: str | None = None, bf16: bool = False) -> Path:
    """A copy of a model folder (or Hub repo) under `name`, with its log and a card for that name."""
    trained = load_model(source)
    metrics = trained.folder / METRICS_FILE
    return save_model(out, trained.model, trained.tokenizer, metrics if metrics.exists() else None,
                      name or Path(out).name, bf16, trained.examples)


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
    repo_id = hub_id(text)
    folder = Path(text).expanduser() if repo_id is None else _download(repo_id, revision)
    if not folder.is_dir():
        raise ModelLoadError(f"no model folder at {text}")
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
    return TrainedModel(model, tokenizer, text, folder, metrics, read_examples(folder))


def read_weights(folder: Path) -> LSTMLanguageModel:
    """The model in a folder, in eval mode; weights stored in bf16/fp16 are upcast to fp32."""
    model = LSTMLanguageModel(Config.load(folder / CONFIG_FILE))
    safetensors.torch.load_model(model, folder / WEIGHTS_FILE, strict=True)
    return model.eval()


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=[*REQUIRED_FILES, METRICS_FILE, CARD_FILE, ATLAS_FILE,
                                                      EXAMPLES_FILE]))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ModelLoadError(f"no model folder at {repo_id}, and as a Hub repo it is not in the local Hugging Face "
                             f"cache and the Hub cannot be reached (offline?)") from None
    except HfHubHTTPError as error:
        raise ModelLoadError(f"no model folder at {repo_id}, and the Hugging Face Hub cannot give it: "
                             f"{str(error).splitlines()[0]}") from None


# -- example prompts: the model's own text --------------------------------------------------------------
def example_prompts(corpus: Corpus, count: int = EXAMPLE_COUNT) -> list[str]:
    """Prompts from the text a model learnt: the opening of its training text, then openings of passages of its
    held-out (validation) text, which it never trained on; more of the training text when too little is held out.

    A passage starts after a blank line (paragraphs, Shakespeare's speeches), or after any line break in a text of
    too few paragraphs (a review or a sentence a line), never at a split's cut, which may fall mid-line. Its opening
    is whole lines until it holds OPENING_MIN_CHARS, cut after a word past OPENING_MAX_CHARS: a few words of the
    text, never a whole passage."""
    training = _openings("\n".join(corpus.train), count, from_start=True)
    found = [*training[:1], *_openings("\n".join(corpus.valid), count, from_start=False), *training[1:]]
    return list(dict.fromkeys(found))[:count]


def _openings(text: str, count: int, from_start: bool) -> list[str]:
    """Up to `count` different openings of `text`'s passages, its very start first when `from_start`."""
    for separator in ("\n\n", "\n"):
        found: list[str] = []
        index = 0 if from_start else text.find(separator)
        while index >= 0 and len(found) < count:
            start = index if from_start and index == 0 else index + len(separator)
            opening = _opening(text, start)
            if opening and opening not in found:
                found.append(opening)
            index = text.find(separator, start)
        if len(found) == count or separator == "\n":
            return found
    return []


def _opening(text: str, start: int) -> str:
    """Whole lines from `start` (blank lines skipped) until OPENING_MIN_CHARS, cut after a word past
    OPENING_MAX_CHARS; '' when nothing but whitespace follows."""
    while start < len(text) and text[start] == "\n":
        start += 1
    end = start
    while end < len(text) and end - start < OPENING_MIN_CHARS:
        line_end = text.find("\n", end)
        end = len(text) if line_end < 0 else line_end + 1
    opening = text[start:end]
    if len(opening) > OPENING_MAX_CHARS:
        cut = opening.rfind(" ", 0, OPENING_MAX_CHARS)
        opening = opening[:cut if cut > 0 else OPENING_MAX_CHARS].rstrip()
    return opening if opening.strip() else ""


def write_examples(folder: str | Path, examples: list[str]) -> Path:
    """The model's example prompts into its folder (`EXAMPLES_FILE`)."""
    path = Path(folder) / EXAMPLES_FILE
    write_atomic(path, json.dumps({"examples": list(examples)}, ensure_ascii=False, indent=1) + "\n")
    return path


def read_examples(folder: Path) -> list[str]:
    """A model folder's example prompts; none (not another text's) when it has no readable `EXAMPLES_FILE`."""
    try:
        examples = json.loads((folder / EXAMPLES_FILE).read_text(encoding="utf-8"))["examples"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [text for text in examples if isinstance(text, str) and text.strip()] if isinstance(examples, list) else []


def push_model(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
               space: str | None = None) -> str:
    """Upload a model folder as a Hub model repo; returns the commit URL. `space` (OWNER/NAME): the Space that
    serves the model, linked from its card."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    trained = load_model(folder)
    write_model_card(folder, trained.model, trained.metrics, repo_id.split("/")[-1], repo_id, space)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload lmdemo model")
    return str(commit.commit_url)


def write_model_card(folder: Path, model: LSTMLanguageModel, metrics: Metrics | None, name: str,
                     repo_id: str | None = None, space: str | None = None) -> None:
    """README.md with Hub front matter; the measured figures come from the metrics log. `repo_id` (the
    Hub repo it is pushed to) goes into the usage snippets; without it they use the model's name. `space`
    (a Hub Space id) is linked as the place to try the model."""
    config = model.config
    start = metrics.last("start") if metrics else None
    best = metrics.best("val_loss") if metrics else None
    test = metrics.last("test") if metrics else None
    dataset = hub_dataset(config)
    local = data_name(config.data, config.data_config)
    results = []
    for record, split, prefix in ((best, "validation", "val"), (test, "test", "test")):
        for metric, key, digits in (("perplexity", "ppl", 3), ("bits_per_character", "bpc", 4)):
            if record and record.get(f"{prefix}_{key}") is not None:
                results.append(EvalResult(task_type="text-generation", task_name="Language modelling",
                                          dataset_type=dataset or local, dataset_name=dataset or local,
                                          dataset_config=config.data_config, dataset_split=split,
                                          metric_type=metric, metric_value=round(record[f"{prefix}_{key}"], digits)))
    data = ModelCardData(library_name="lmdemo", tags=["lstm", "language-model", "lmdemo", config.level],
                         pipeline_tag="text-generation", datasets=[dataset] if dataset else None,
                         model_name=name, eval_results=results or None)
    tokens = level_unit(config.level).described + (f" ({config.tokenize} tokenisation)" if config.level == "word" else "")
    size = f"{config.num_layers}×{config.hidden_size} LSTM, embedding {config.emb_size}" + \
        (", adaptive softmax" if config.adaptive_softmax else "")
    source = f"[{dataset}](https://huggingface.co/datasets/{dataset})" if dataset else f"`{local}`"
    lines = [f"# {name}", "",
             f"An LSTM language model over {tokens}, trained with lmdemo on {source}: "
             f"{size}, {'tied' if config.tie_weights else 'untied'} weights, {config.vocab_size:,} tokens in the "
             f"vocabulary, {model.num_parameters():,} parameters.",
             "", "## Results", "", _results_table(best, test, config), ""]
    if _stored_in_bf16(folder / WEIGHTS_FILE):
        lines += ["The weights are stored in bf16 (half the size; upcast to fp32 on load). The figures above were "
                  "measured with the fp32 weights during training; `eval` on this folder scores the stored ones.", ""]
    if start:
        lines += ["## Training", "",
                  f"- data: {source}" + (f", from the local copy `{local}`" if dataset and local != dataset else ""),
                  *_commands(metrics.events("start")),
                  f"- hardware: {start.get('hardware', '?')}, {start.get('precision', 'fp32')} compute"]
        last = metrics.trained() if metrics else {}
        if last.get("time") is not None:
            lines.append(f"- training time: {last['time'] / 60:.1f} min over {last.get('step', '?'):,} steps "
                         f"({last.get('tokens', 0):,} tokens)")
        speeds = [r["tokens_per_sec"] for r in metrics.events("train") if r.get("tokens_per_sec")]
        if speeds:
            lines.append(f"- speed: {sorted(speeds)[len(speeds) // 2]:,.0f} tokens/s (median of log intervals)")
        lines.append("")
    repo = repo_id or name
    if space:
        lines += ["## Try it", "", f"In the web demo on the Hub: [{space}](https://huggingface.co/spaces/{space}) "
                  "(samples at several temperatures side by side, surprisal colouring, next-token bars).", ""]
    lines += ["## Use", "", "```bash", "pip install -r requirements.txt   # in a checkout of lmdemo",
              f"python -m lmdemo generate {repo} --prompt \"...\" --temperature 0.5 1.0",
              f"python -m lmdemo eval {repo} --split {'test' if test else 'valid'}"
              + (f" --data {dataset}" if dataset else ""), "```", "",
              "```python", "from lmdemo import Generator, Sampling, load_model", "",
              f"generator = Generator(load_model({repo!r}))   # a Hub repo id or a downloaded folder",
              "prompt = generator.prompt(\"...\")",
              "for sample in generator.generate(prompt.ids, Sampling(temperatures=[0.8], seed=0)):",
              "    print(sample.text)", "```", "",
              # plain paths, not links: a card is read on the Hub, in a download and in a checkout alike
              "More in lmdemo's reference, `docs/` in its repository: `docs/models.md` (model folders, cards and the "
              "shipped models), `docs/training.md` (every training option and the metrics log) and `docs/web-demo.md` "
              "(the demo and its API).", ""]
    ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).save(
        folder / CARD_FILE)


def _commands(starts: list[dict]) -> list[str]:
    """The command of each leg of the run: a resumed run is only reproduced by all of them in turn."""
    if len(starts) == 1:
        return [f"- command: `{starts[0].get('command', '?')}`"]
    return ["- commands (the run was resumed; each leg went on from the step it names):",
            *(f"  - step {start.get('step', 0):,}: `{start.get('command', '?')}`" for start in starts)]


def _stored_in_bf16(weights: Path) -> bool:
    with safetensors.safe_open(str(weights), "pt") as f:
        return any(f.get_slice(name).get_dtype() == "BF16" for name in f.keys())


def hub_dataset(config: Config) -> str | None:
    """The Hugging Face dataset the model was trained on: `dataset_id`, or `data` when it is a Hub id."""
    return config.dataset_id or hub_id(config.data)


def _results_table(best: dict | None, test: dict | None, config: Config) -> str:
    rows = ["| split | loss (nats/token) | perplexity | bits per character |", "|---|---|---|---|"]
    for record, label, prefix in ((best, "validation (best)", "val"), (test, "test", "test")):
        if record and record.get(f"{prefix}_loss") is not None:
            bpc = record.get(f"{prefix}_bpc")
            if bpc is None and config.level == "char":
                bpc = bits(record[f"{prefix}_loss"])
            rows.append(f"| {label} | {record[f'{prefix}_loss']:.4f} | {record[f'{prefix}_ppl']:.2f} | "
                        f"{'—' if bpc is None else f'{bpc:.4f}'} |")
    if len(rows) == 2:
        return "No evaluation was logged."
    table = "\n".join(rows)
    if config.level == "word" and test and test.get("test_unk_rate"):
        table += (f"\n\n{test['test_unk_rate']:.2%} of the {test.get('test_tokens', 0):,} test tokens are `<unk>` "
                  f"(words outside the vocabulary). The model predicts `<unk>` as one word and never spells it out, "
                  f"which flatters the perplexity more the smaller the vocabulary; for the same reason, and because "
                  f"the text is lower-cased and some punctuation dropped, its bits per character are a lower bound.")
    table += ("\n\nBits per character are the total bits over the characters of the scored text"
              + (" (HTML tags cleaned)" if config.clean_html else "") + ", the unit that compares models with "
              "different tokenisations.")
    return table
