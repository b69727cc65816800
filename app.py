"""Web demo: sample LSTM language models side by side at several temperatures and look inside.

    python app.py                                   # every model folder under checkpoints/
    python app.py --model runs/my-model --port 7861 # add a local folder or a Hub repo id

This file parses the arguments, loads the models, composes the page (`lmdemo.web.page.build_app`, one module
per tab under `lmdemo/web/`) and launches it; the language models themselves are the `lmdemo` library's.
"""

from __future__ import annotations

import os

from lmdemo.web.allocator import restart_with_returning_allocator

if __name__ == "__main__":
    restart_with_returning_allocator()  # first: it restarts the interpreter

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports or version checks: nothing phones home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's queue summarises its last 10,000 events (a pandas DataFrame, for its /monitoring page) after every
# event by default: more than half of a short event's server time (measured with bench/load.py). Every 1,000th.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
# And it keeps a record of each of those 10,000 events, small objects made over hours that outlive their visitors
# (copied into a list after every event); its /monitoring page is not ours: the last 100 suffice.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
# oneDNN keeps a compiled LSTM for every sequence length it has read (up to 1,024): prompts of a few hundred
# lengths held ~380 MB that never came back (bench measurement in docs/reliability.md); a few suffice.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from starlette.middleware import Middleware  # noqa: E402

from lmdemo.batching import DEFAULT_MAX_ROWS  # noqa: E402
from lmdemo.checkpoint import ModelLoadError  # noqa: E402
from lmdemo.space import MODELS_ENV, MODELS_FILE  # noqa: E402
from lmdemo.web import page, render  # noqa: E402
from lmdemo.web.forms import Limits  # noqa: E402
from lmdemo.web.gate import Gate, PageDoor, Serving  # noqa: E402
from lmdemo.web.jobs import TrainingLine  # noqa: E402
from lmdemo.web.page import build_app  # noqa: E402
from lmdemo.web.allocator import tune_malloc, without_jemalloc  # noqa: E402
from lmdemo.web.page_states import lean_pages  # noqa: E402
from lmdemo.web.registry import Models, NoModelsError, discover_models  # noqa: E402
from lmdemo.web.train_requests import TrainLimits  # noqa: E402
from lmdemo.web.uploads import UploadDoor, Uploads  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_THREADS = 40  # Gradio's worker threads besides one for every event the gate admits
TRAIN_SECONDS_ENV, NO_TRAIN_ENV, PROXY_HOPS_ENV = "LMDEMO_TRAIN_SECONDS", "LMDEMO_NO_TRAIN", "LMDEMO_PROXY_HOPS"


def build_parser() -> argparse.ArgumentParser:
    """The command line, without parsing it (tests/test_docs.py checks the docs' commands against it)."""
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Serve the LSTM language-model demo (Gradio).",
        epilog=f"Models: every folder with config.json under --checkpoints, then the lines of --models-file, then "
               f"each --model, then the comma-separated {MODELS_ENV} environment variable. A model is a local folder "
               f"written by `python -m lmdemo train` or a Hugging Face Hub repo id (HF_HUB_OFFLINE=1 uses the local "
               f"cache only). A model that cannot be loaded is skipped with a warning; none loading is an error.")
    parser.add_argument("--model", action="append", default=[], metavar="FOLDER_OR_REPO",
                        help="also serve this model folder or Hub repo id (repeatable)")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints",
                        help="folder of shipped model folders (default: checkpoints/ beside app.py)")
    parser.add_argument("--models-file", type=Path, default=ROOT / MODELS_FILE,
                        help=f"file listing models, one folder or Hub repo id a line (default: {MODELS_FILE} beside "
                             f"app.py, which a Space made by `python -m lmdemo space` has)")
    on_space = os.environ.get("SYSTEM") == "spaces"  # what Hugging Face Spaces set, as gradio checks
    host = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1")
    parser.add_argument("--host", default=host,
                        help="interface to listen on; 0.0.0.0 for all (default: $GRADIO_SERVER_NAME, else 0.0.0.0 "
                             "on a Hugging Face Space, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="requests computed at once, over all endpoints that run a model, apart from the batched "
                             "sampling requests (default: 2)")
    parser.add_argument("--decode", choices=("batched", "per-request"), default="batched",
                        help="batched: one decode loop per model advances every sampling request (Sample, Compare, "
                             "next-token bars, the Train tab's samples) one token per step together; per-request: "
                             "each decodes alone in a --concurrency slot, as before (kept to measure against; "
                             "default: batched)")
    parser.add_argument("--max-batch-rows", type=int, default=DEFAULT_MAX_ROWS,
                        help=f"batched: the most samples one step advances, and the most requests waiting to join; "
                             f"beyond that a request is told the server is busy (default: {DEFAULT_MAX_ROWS})")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="model computations that may wait for a turn, more are turned away; one address holds "
                             "at most a quarter of every line (default: 32)")
    hops = os.environ.get(PROXY_HOPS_ENV) or ("1" if os.environ.get("SPACE_ID") else "0")
    parser.add_argument("--proxy-hops", type=int, default=int(hops) if hops.isdigit() else -1, metavar="N",
                        help=f"trusted reverse proxies in front that each append to X-Forwarded-For: per-visitor "
                             f"limits key on the address the outermost one saw, the N-th entry from the right; 0 "
                             f"ignores the header (default: ${PROXY_HOPS_ENV}, else 1 when SPACE_ID is set, as on a "
                             f"Hugging Face Space, else 0); never more than the proxies really there, or clients "
                             f"choose their own address")
    parser.add_argument("--share", type=float, default=Serving.share, metavar="FRACTION",
                        help=f"of every line (events, model turns, reads, decode rows and places, pages), the most one "
                             f"client address may hold, at least one (default: {Serving.share:g})")
    parser.add_argument("--threads", type=int, help="torch threads per request (default: CPU cores / concurrency)")
    parser.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens,
                        help=f"most new tokens a request may ask for (default: {Limits.max_new_tokens})")
    parser.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens,
                        help=f"longer prompts keep their last this-many tokens (default: {Limits.max_prompt_tokens})")
    parser.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars,
                        help=f"longer prompts are refused with a message (default: {Limits.max_prompt_chars})")
    _train_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("port", "concurrency", "max_batch_rows", "queue_size", "threads", "max_new_tokens", "max_prompt_tokens",
                 "max_prompt_chars"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive (got {value})")
    if not 0 < args.share <= 1:
        parser.error(f"--share must be a fraction above 0 and at most 1 (got {args.share:g})")
    if args.proxy_hops < 0:
        parser.error(f"--proxy-hops (or ${PROXY_HOPS_ENV}) must be a whole number from 0 (got {args.proxy_hops})")
    _check_train_options(parser, args)
    return args



def _train_options(parser: argparse.ArgumentParser) -> None:
    """The Train tab's switches: the operator's caps and where runs live (a Space sets them through the environment)."""
    group = parser.add_argument_group("training in the app (the Train tab)")
    group.add_argument("--no-train", action="store_true", default=os.environ.get(NO_TRAIN_ENV, "") not in ("", "0"),
                       help=f"no Train tab: visitors cannot train models on this server (or set {NO_TRAIN_ENV}=1)")
    group.add_argument("--train-seconds", type=float,
                       default=os.environ.get(TRAIN_SECONDS_ENV) or TrainLimits.max_seconds,  # text: checked
                       help=f"the most seconds a visitor's training job may ask for (default: ${TRAIN_SECONDS_ENV} or "
                            f"{TrainLimits.max_seconds:g}); the page offers {TrainLimits.default_seconds:g} s")
    group.add_argument("--train-queue", type=int, default=TrainLimits.max_waiting,
                       help=f"training jobs that may wait for the one training slot; 0: a job runs only when the slot "
                            f"is free (default: {TrainLimits.max_waiting})")
    group.add_argument("--train-budget-per-hour", type=float, default=TrainLimits.budget_per_hour_s, metavar="SECONDS",
                       help=f"seconds of training one client address may take in any hour "
                            f"(default: {TrainLimits.budget_per_hour_s:g})")
    group.add_argument("--train-disk-mb", type=float, default=TrainLimits.disk_mb, metavar="MB",
                       help=f"the most the training folder may hold, texts, models and zips of every session; a job "
                            f"that could pass it is refused (default: {TrainLimits.disk_mb:g})")
    group.add_argument("--session-ttl", type=float, default=TrainLimits.session_ttl_s, metavar="SECONDS",
                       help=f"a session without a request or heartbeat this long ends: its job stops and its models, "
                            f"zips and uploads are deleted (default: {TrainLimits.session_ttl_s:g})")
    group.add_argument("--train-root", type=Path,
                       help="where the private training folder is made (default: the system's temporary folder); "
                            "it is deleted when the server stops, and a later server deletes it if this one is killed")


def _check_train_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.train_seconds >= TrainLimits.min_seconds:  # also refuses nan
        parser.error(f"--train-seconds must be at least {TrainLimits.min_seconds:g} (got {args.train_seconds:g})")
    if args.train_queue < 0:
        parser.error(f"--train-queue must not be negative (got {args.train_queue})")
    if not args.train_budget_per_hour >= min(args.train_seconds, TrainLimits.default_seconds):
        parser.error(f"--train-budget-per-hour must hold at least one job of the page's default length "
                     f"(got {args.train_budget_per_hour:g})")
    for name in ("train_disk_mb", "session_ttl"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name):g})")


def _training(args: argparse.Namespace, models: Models, gate: Gate) -> TrainingLine | None:
    """The server's training slot and queue, unless --no-train. Gradio's cache (uploads, the zips it serves) is
    made a folder of the training folder's, so it is this server's alone and goes with it."""
    if args.no_train:
        return None
    limits = TrainLimits(max_seconds=args.train_seconds, max_waiting=args.train_queue,
                         default_seconds=min(TrainLimits.default_seconds, args.train_seconds),
                         budget_per_hour_s=args.train_budget_per_hour, disk_mb=args.train_disk_mb,
                         session_ttl_s=args.session_ttl)
    training = TrainingLine(models, limits, args.train_root, cache=os.environ.get("GRADIO_TEMP_DIR") or None,
                            admission=gate.admission)
    os.environ["GRADIO_TEMP_DIR"] = str(training.cache)
    return training


def _stop_on_sigterm() -> None:
    """SIGTERM (a Space restart, `docker stop`) ends the server like Ctrl-C: Gradio closes it, then main cleans up."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    try:
        models = Models(discover_models(args.checkpoints, args.model, models_file=args.models_file), skip_broken=True)
    except (NoModelsError, ModelLoadError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    for name, reason in models.skipped.items():
        print(f"app.py: warning: skipped {name}: {reason}", file=sys.stderr, flush=True)
    if (advice := without_jemalloc()) is not None:
        print(f"app.py: note: {advice}", file=sys.stderr, flush=True)
    limits = Limits(max_prompt_chars=args.max_prompt_chars, max_prompt_tokens=args.max_prompt_tokens,
                    max_new_tokens=args.max_new_tokens)
    _stop_on_sigterm()
    gate = Gate(Serving(args.concurrency, args.queue_size, args.decode, args.max_batch_rows, args.proxy_hops,
                        args.share, args.session_ttl))
    training = _training(args, models, gate)
    uploads = training.uploads if training else Uploads(gate.admission, ROOT, max_file_bytes=0)  # none taken
    try:
        page.answer_missing_optional_imports()
        app = build_app(models, limits, training, gate)
        # Gradio's queue hands every event to a worker at once (no event has a concurrency limit): the gate admits
        # it there, fairly per address; the queue's own bound is only a backstop beyond the gate's
        app.queue(default_concurrency_limit=None, max_size=2 * gate.serving.events)
        upload_cap = dict(max_file_size=training.limits.max_upload_bytes) if training else {}
        # an admitted event waits for its turn or its decode loop in a worker thread: one each, and some to spare
        doors = [Middleware(PageDoor, gate=gate), Middleware(UploadDoor, uploads=uploads, gate=gate)]
        app.launch(server_name=args.host, server_port=args.port, theme=page.theme(), css=render.CSS, ssr_mode=False,
                   footer_links=["api"], max_threads=gate.serving.events + DEFAULT_THREADS,
                   app_kwargs=dict(middleware=doors, lifespan=lean_pages), **upload_cap)
    except KeyboardInterrupt:
        pass
    finally:
        if training is not None:
            training.close()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is cleaned up by now; Gradio's daemon threads may still be inside torch, and finalising the
    # interpreter under them aborts the process (std::terminate), so the exit skips finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
