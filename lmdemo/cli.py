"""`python -m lmdemo train|eval|generate|push|space|export|atlas|examples|presets|table`: the one command-line
interface.

Every Config field is a `train` option, generated from the dataclass so help and validation can
never drift from the code. Mistakes end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmdemo.config import PRESETS, Config, ConfigError, preset
from lmdemo.metrics import METRICS_FILE, Metrics, read_metrics

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
BUILT_FIELDS = ("vocab_size", "cutoffs")  # set by training from the tokenizer, not options


class UsageError(Exception):
    """Wrong input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _field_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(Config)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    groups = {name: parser.add_argument_group(f"{name} options") for name in ("model", "data", "training")}
    for f in dataclasses.fields(Config):
        if f.name in BUILT_FIELDS:
            continue
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} (default: {f.default})"
        group = groups[f.metadata["group"]]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, type=kind, choices=f.metadata.get("choices"), default=argparse.SUPPRESS,
                               metavar=kind.__name__.upper() if not f.metadata.get("choices") else None, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lmdemo", description="Train, evaluate, sample and share LSTM language models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model (or resume a run)",
                                description="Train a model. Start from --preset and override any field; "
                                            "the best model by validation loss lands in OUT/model.")
    train.add_argument("--preset", help=f"start from a reference setup: {', '.join(PRESETS)}")
    train.add_argument("--out", type=Path, help="run folder (default: runs/<preset or data name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--atlas", action="store_true", help="then write the best model's cell atlas of structural "
                                                            "properties (units chosen on the training split, scored "
                                                            "on the validation split) into its folder")
    _add_config_options(train)

    evaluate = commands.add_parser("eval", help="perplexity of a model on a split or a text file")
    evaluate.add_argument("model", help="model folder or Hugging Face repo id")
    evaluate.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"),
                          help="split of the model's training data to score (default: test)")
    evaluate.add_argument("--data", help="score this corpus instead of the one the model was trained on")
    evaluate.add_argument("--text-file", type=Path, help="score this whole text file instead of a split")
    evaluate.add_argument("--batch-size", type=int, help="parallel streams (default: the model's eval_batch_size)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    generate = commands.add_parser("generate", help="sample text from a model")
    generate.add_argument("model", help="model folder or Hugging Face repo id")
    generate.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    generate.add_argument("--prompt", default="", help="text to continue (default: start of a text)")
    generate.add_argument("--temperature", type=float, nargs="+", default=[0.8],
                          help="one or more temperatures, sampled side by side; 0 = greedy (default: 0.8)")
    generate.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample (default: 200)")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest only (0 = off)")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1]")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    generate.add_argument("--stop", help="end a sample once it contains this text")
    generate.add_argument("--avoid-unk", action="store_true", help="never sample <unk>")
    generate.add_argument("--dial", help="hold one unit of the state at a value while sampling: "
                                         "LAYER:UNIT:QUANTITY=VALUE, layers from 1, units from 0, QUANTITY h or c")

    push = commands.add_parser("push", help="upload a model folder (or every shipped one) to the Hugging Face Hub")
    push.add_argument("model", type=Path, nargs="?", help="model folder (for example runs/NAME/model)")
    push.add_argument("repo_id", nargs="?", help="target repo, as user/name")
    push.add_argument("--all", metavar="OWNER", help="instead: push every model folder under checkpoints/ as "
                                                     "OWNER/<folder name>")
    push.add_argument("--space", metavar="OWNER/NAME", help="the Space that serves the model(s), linked from the cards")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")

    space = commands.add_parser("space", help="write a Hugging Face Space serving Hub models, and upload it",
                                description="Write a Gradio Space folder: the web demo's code, its run-time "
                                            "requirements and the model repos to serve (preloaded by the Space's "
                                            "build), no weights; then create the Space and upload the folder.")
    space.add_argument("space_id", metavar="OWNER/NAME", help="the Space's repo id")
    space.add_argument("--model", action="append", required=True, metavar="REPO_ID",
                       help="a Hub model repo to serve (repeatable; push it first with `push`)")
    space.add_argument("--out", type=Path, help="the Space folder to write (default: runs/space-NAME)")
    space.add_argument("--dry-run", action="store_true", help="write the folder only, upload nothing")
    space.add_argument("--private", action="store_true", help="create the Space as private")
    space.add_argument("--token", help="Hub token (default: the logged-in one)")

    export = commands.add_parser("export", help="copy a model folder under a new name (and its card), "
                                                "optionally with bf16 weights")
    export.add_argument("model", help="model folder or Hugging Face repo id")
    export.add_argument("out", type=Path, help="the new model folder (its name is the model's name)")
    export.add_argument("--bf16", action="store_true", help="store the weights in bf16: half the size, "
                                                             "upcast on load (measure the cost with eval)")

    atlas = commands.add_parser("atlas", help="find the units that follow properties of the text (the cell atlas)",
                                description="Score every unit (h and c of every layer) against properties of the "
                                            "text; choose the best per property on text the model trained on, "
                                            "score it on held-out text beside the best unit of a random model of "
                                            "the same shape. Writes atlas.json into a local model folder.")
    atlas.add_argument("model", help="model folder or Hugging Face repo id")
    atlas.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    atlas.add_argument("--text", type=Path, help="read this text file instead of the model's corpus: units chosen "
                                                 "on its first half, scored on its second")
    atlas.add_argument("--reviews", type=int, help="rated reviews read per part for sentiment, spread over them "
                                                   "(default: 400, under a minute on 2 cores; 0 = all)")
    atlas.add_argument("--rule", action="append", metavar="NAME=RULE",
                       help="score a rule of your own instead (repeatable), on fewer tokens a part than the atlas, "
                            "as the web demo does: a regular expression (numbers=\\d+), 'words: a, b', 'inside X...Y' "
                            "or 'since REGEX' (see docs/atlas.md); prints its rows, writes nothing")
    atlas.add_argument("--json", action="store_true", help="print the atlas as JSON")

    examples = commands.add_parser("examples", help="write a model folder's example prompts from its own text",
                                   description="Write examples.json into a model folder: the opening of its training "
                                               "text and openings of held-out passages, the prompts the web demo "
                                               "offers for it. Training writes it; this gives it to a folder trained "
                                               "before, from the corpus its config names.")
    examples.add_argument("model", type=Path, help="model folder")
    examples.add_argument("--data", help="read this corpus instead of the one the model's config names")

    commands.add_parser("presets", help="list the presets and their settings")

    table = commands.add_parser("table", help="a Markdown table of model folders' results, read from their logs")
    table.add_argument("models", nargs="+", type=Path, help="model or run folders (with metrics.jsonl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; Ctrl-C at any point (loading, tokenising, measuring a budget) ends with one line."""
    started = time.monotonic()  # when the user asked: a training budget counts from here
    try:
        return _run(argv, started)
    except KeyboardInterrupt:  # training turns the first Ctrl-C into a clean stop and raises on the second
        print("lmdemo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextmanager
def interrupts_after_imports() -> Iterator[None]:
    """Hold a Ctrl-C that comes while the libraries import and raise it once they have: an interrupt inside torch's
    or numpy's import left a half-imported module (a later AttributeError and its traceback) or was swallowed by a
    library's catch-all, and the command trained on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _run(argv: list[str] | None, started: float) -> int:
    with interrupts_after_imports():
        from lmdemo.batches import TextTooShortError
        from lmdemo.checkpoint import ModelLoadError
        from lmdemo.corpus import CorpusError
        from lmdemo.generation import SettingsError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.started = started
        return {"train": _train, "eval": _eval, "generate": _generate, "push": _push, "space": _space,
                "export": _export, "atlas": _atlas, "examples": _examples, "presets": _presets,
                "table": _table}[args.command](args)
    except (UsageError, ConfigError, CorpusError, ModelLoadError, SettingsError, TextTooShortError) as error:
        print(f"lmdemo: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _explicit_config(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def _train(args: argparse.Namespace) -> int:
    from lmdemo.metrics import CONFIG_FILE
    from lmdemo.parallel import Parallel
    from lmdemo.training import train

    explicit = _explicit_config(args)
    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out with the run folder to continue")
        if not (args.out / CONFIG_FILE).exists():
            raise UsageError(f"nothing to resume in {args.out}: it has no {CONFIG_FILE}")
        config = Config.load(args.out / CONFIG_FILE).replace(**explicit)
    else:
        values = preset(args.preset) if args.preset else {}
        values.update(explicit)
        config = Config(**values)
    out = args.out or Path("runs") / (args.preset or Path(config.data).stem or "run")
    folder = train(config, out, resume=args.resume, progress_bar=not args.quiet, atlas=args.atlas,
                   started=args.started)
    if Parallel().main:  # one process says it (torchrun starts several)
        for line in _closing_lines(read_metrics(out / METRICS_FILE), config.level, out):
            print(line)
    print(f"best model: {folder}")
    return 0


# What would let a run that ended still improving train further: the option to raise, on `--resume`.
LONGER = {"budget": "max_minutes", "steps": "max_steps", "epochs": "epochs"}


def _closing_lines(metrics: Metrics, level: str, out: Path) -> list[str]:
    """Why the run ended (its `end` record), its best validation (the model kept) and test, and when validation
    still improved at a limit, the command that trains further."""
    from lmdemo.run_scores import why_it_ended
    from lmdemo.tokenizer import level_unit

    end, last = metrics.last("end") or {}, metrics.trained()
    where = f"step {last.get('step', 0):,}, epoch {last.get('epoch') or 0:.2f}, {last.get('time') or 0:,.0f} s"
    lines = [f"ended: {why_it_ended(end)} ({where})"]
    unit = level_unit(level).short
    for record, split, what in ((metrics.best("val_loss"), "val", "best validation"),
                                (metrics.last("test"), "test", "test of the best model")):
        if record:
            bpc = record.get(f"{split}_bpc")
            lines.append(f"{what}: {record[f'{split}_loss']:.4f} nats/{unit} (perplexity {record[f'{split}_ppl']:.2f})"
                         + (f", {bpc:.4f} bits/char" if bpc is not None else "")
                         + (f" at step {record['step']:,}" if split == "val" else ""))
    option, limit = LONGER.get(end.get("reason")), end.get("limit")
    if end.get("improving") and option and isinstance(limit, (int, float)):
        longer = f"--{option.replace('_', '-')} {2 * limit:g}"
        lines.append(f"validation still improved at the end: `python -m lmdemo train --out {out} --resume {longer}` "
                     f"trains further")
    return lines


def _eval(args: argparse.Namespace) -> int:
    from lmdemo.checkpoint import load_model
    from lmdemo.evaluation import Split, evaluate
    from lmdemo.corpus import clean_html, documents
    from lmdemo.metrics import bits_per_character
    from lmdemo.tokenizer import LOWER_BOUND
    from lmdemo.training import encode_splits

    trained = load_model(args.model, args.revision)
    config = trained.config
    if args.batch_size is not None and args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive (got {args.batch_size})")
    if args.text_file is not None:
        if not args.text_file.is_file():
            raise UsageError(f"no such file: {args.text_file}")
        text = args.text_file.read_text(encoding="utf-8", errors="replace")
        docs = documents(text, config.level)
        if config.clean_html:  # scored as training read its text
            docs = [clean_html(doc) for doc in docs]
        split = Split(trained.tokenizer.encode_documents(docs), trained.tokenizer.characters(docs))
        what = str(args.text_file)
    else:
        if args.data:
            config = config.replace(data=args.data)
        _, splits = encode_splits(config, trained.tokenizer, [args.split])
        split, what = splits[args.split], f"{args.split} split of {config.data}"
        if config.eval_tokens and args.split == "valid":
            what += f" (its first {config.eval_tokens:,} tokens)"
    ids = split.ids
    if ids.numel() < 2:
        raise UsageError(f"the {what} has fewer than 2 tokens")
    score = evaluate(trained.model, ids, args.batch_size or config.eval_batch_size, config.eval_bptt)
    unk_id = trained.tokenizer.unk_id
    unk = (ids == unk_id).float().mean().item() if unk_id is not None else 0.0
    bpc = bits_per_character(score.loss, split.tokens_per_character)
    result = {"data": what, "tokens": score.tokens, "characters": split.characters, "loss": round(score.loss, 4),
              "ppl": round(score.ppl, 2), "bpc": round(bpc, 4), "unk_rate": round(unk, 4),
              "lower_bound": trained.tokenizer.lower_bound(ids)}
    if args.json:
        print(json.dumps(result))
    else:
        bound = f" ({LOWER_BOUND})" if result["lower_bound"] else ""
        print(f"{what}: loss {result['loss']:.4f} nats/token, perplexity {result['ppl']:.2f}, "
              f"{result['bpc']:.4f} bits/char{bound} over {score.tokens:,} tokens (<unk> {unk:.2%})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lmdemo.checkpoint import load_model
    from lmdemo.generation import Dial, Generator, Sampling

    sampling = Sampling(temperatures=args.temperature, max_new_tokens=args.max_tokens, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, stop=args.stop, avoid_unk=args.avoid_unk,
                        dial=None if args.dial is None else Dial.parse(args.dial))
    sampling.check()
    generator = Generator(load_model(args.model, args.revision))
    generator.check_dial(sampling.dial)
    prompt = generator.prompt(args.prompt)
    for note in prompt.notes:
        print(f"note: {note}", file=sys.stderr)
    for sample in generator.generate(prompt.ids, sampling):
        print(f"--- temperature {sample.temperature:g}")
        print(args.prompt + sample.text)
    return 0


def _push(args: argparse.Namespace) -> int:
    from lmdemo.checkpoint import push_model
    from lmdemo.space import SpaceError, push_models, shipped_models

    if args.all is None:
        if args.model is None or args.repo_id is None:
            raise UsageError("push needs a model folder and a repo id, or --all OWNER")
        print(push_model(args.model, args.repo_id, private=args.private, token=args.token, space=args.space))
        return 0
    if args.model is not None:
        raise UsageError("push --all OWNER takes no model folder: it pushes every folder under checkpoints/")
    try:
        for repo_id, url in push_models(shipped_models(), args.all, args.space, args.private, args.token):
            print(f"{repo_id}: {url}")
    except SpaceError as error:
        raise UsageError(str(error)) from None
    return 0


def _space(args: argparse.Namespace) -> int:
    from lmdemo.space import SpaceError, build_space, upload_space

    try:
        out = args.out or Path("runs") / f"space-{args.space_id.rsplit('/', 1)[-1]}"
        folder = build_space(args.space_id, args.model, out)
        print(f"Space folder: {folder}")
        if args.dry_run:
            print("dry run: nothing uploaded")
            return 0
        print(upload_space(folder, args.space_id, token=args.token, private=args.private))
    except SpaceError as error:
        raise UsageError(str(error)) from None
    return 0


def _export(args: argparse.Namespace) -> int:
    from lmdemo.checkpoint import export_model

    print(export_model(args.model, args.out, bf16=args.bf16))
    return 0


def _atlas(args: argparse.Namespace) -> int:
    import time

    from lmdemo.atlas import (PART_TOKENS, REVIEWS_PER_PART, atlas_table, build_atlas, corpus_texts, file_texts,
                              read_parts, write_atlas)
    from lmdemo.checkpoint import load_model
    from lmdemo.rules import RULE_TOKENS, parse_rule, rule_atlas

    if args.reviews is not None and args.reviews < 0:
        raise UsageError(f"--reviews must be 0 (all) or more (got {args.reviews})")
    if args.text is not None and not args.text.is_file():
        raise UsageError(f"no such file: {args.text}")
    if args.rule and args.reviews is not None:
        raise UsageError("--reviews is for sentiment, which --rule does not score")
    rules = [parse_rule(written) for written in args.rule or []]
    began = time.perf_counter()
    trained = load_model(args.model, args.revision)
    reviews = 0 if rules else REVIEWS_PER_PART if args.reviews is None else args.reviews or None
    tokens = RULE_TOKENS if rules else PART_TOKENS
    choose, score = (file_texts(trained, args.text, tokens, reviews) if args.text is not None
                     else corpus_texts(trained, tokens, reviews))
    if rules:
        atlas = rule_atlas(trained, rules, read_parts(trained, choose, score))
    else:
        atlas = build_atlas(trained, choose, score)
    if not atlas["properties"]:
        raise UsageError(f"the text holds too little of any property to score: {choose.source} and {score.source}")
    written = write_atlas(trained.folder, atlas) if not rules and Path(args.model).expanduser().is_dir() else None
    if args.json:
        print(json.dumps(atlas))
    else:
        print(atlas_table(atlas))
        print(f"chosen on {choose.source}, scored on {score.source}; random: the best unit of a random model of "
              f"the same shape ({time.perf_counter() - began:.0f} s)")
        if written is not None:
            print(f"written: {written}")
    return 0


def _examples(args: argparse.Namespace) -> int:
    from lmdemo.checkpoint import example_prompts, load_model, write_examples
    from lmdemo.corpus import load_corpus

    config = load_model(args.model).config
    examples = example_prompts(load_corpus(config.replace(data=args.data) if args.data else config))
    if not examples:
        raise UsageError(f"the text of {args.model} ({config.data}) has no line to open a prompt with")
    print(f"written: {write_examples(args.model, examples)}")
    for example in examples:
        print(json.dumps(example, ensure_ascii=False))
    return 0


def _presets(args: argparse.Namespace) -> int:
    for name, values in PRESETS.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def _table(args: argparse.Namespace) -> int:
    from lmdemo.metrics import load_run
    from lmdemo.runs import models_table

    missing = [str(folder) for folder in args.models if not (folder / METRICS_FILE).is_file()]
    if missing:
        raise UsageError(f"no {METRICS_FILE} in {', '.join(missing)}")
    print(models_table(load_run(folder, name=str(folder)) for folder in args.models))
    return 0
