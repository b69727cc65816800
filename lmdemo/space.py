"""The web demo as a Hugging Face Space that pulls its weights from Hub model repos.

    python -m lmdemo push --all OWNER --space OWNER/NAME      # every shipped model as OWNER/<folder name>
    python -m lmdemo space OWNER/NAME --model OWNER/imdb-word --model OWNER/shakespeare-char

A Space folder holds the app's code (`app.py`, the `lmdemo` package), the run-time requirements only,
`models.txt` (the Hub repo ids the app serves) and a README whose front matter is the Space's
configuration. It holds no weights: its `preload_from_hub` makes the Space's build download the model
repos into the Space's Hugging Face cache, where `load_model` finds them by repo id. The Hub refuses
plain git files over 10 MB, so a folder with one is never uploaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, SpaceCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from lmdemo.checkpoint import MODEL_DIR, REQUIRED_FILES, hub_dataset, push_model
from lmdemo.config import PRESETS, Config
from lmdemo.metrics import CONFIG_FILE

ROOT = Path(__file__).resolve().parents[1]  # the lmdemo checkout whose app the Space runs
PACKAGE = "lmdemo"
APP_FILE = "app.py"
SHIPPED = "checkpoints"
# How a Space (or any server) tells app.py what to serve, besides its --model options: this file beside app.py,
# which a Space folder holds, and this environment variable (a Space variable), read by `lmdemo.web.registry`.
MODELS_FILE = "models.txt"  # one folder or Hub repo id a line
MODELS_ENV = "LMDEMO_MODELS"  # comma-separated folders or Hub repo ids
RUNTIME_REQUIREMENTS = "requirements-space.txt"  # what app.py needs; requirements.txt adds training and test tools
SPACE_REQUIREMENTS = "requirements.txt"  # the file a Space installs
SPACE_PACKAGES = "packages.txt"  # the Debian packages a Space installs, one a line
DEBIAN_PACKAGES = ("libjemalloc2",)  # the server's malloc (lmdemo/web/allocator.py)
CARD_FILE = "README.md"
PYTHON_VERSION = "3.11"
# pip on the Space takes torch from PyTorch's CPU index: PyPI's Linux wheel of the same version pulls several
# GB of CUDA libraries that CPU hardware never uses (the local set-up gets its CPU wheel elsewhere).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAX_FILE_BYTES = 10 * 1000 * 1000  # the Hub takes larger files only through LFS
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".onnx", ".gguf", ".npz")
SPACE_STYLE = dict(emoji="🔤", colorFrom="indigo", colorTo="pink", pinned=False,
                   short_description="Sample LSTM language models at several temperatures")  # 60 characters at most


class SpaceError(ValueError):
    """A Space that cannot be written or uploaded as asked: one line for the user."""


def check_repo_id(repo_id: str, what: str) -> str:
    """`repo_id` if it is a Hub id of the form OWNER/NAME."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SpaceError(f"{what} {repo_id!r} is not a Hub repo id: {str(error).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise SpaceError(f"{what} {repo_id!r} must be OWNER/NAME")
    return repo_id


def runtime_requirements(root: Path = ROOT) -> list[str]:
    """The pinned run-time requirements (`requirements-space.txt`), without comments."""
    path = root / RUNTIME_REQUIREMENTS
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def pinned_version(package: str, requirements: Sequence[str]) -> str:
    """The exact version `package==X` pins in `requirements` (the Space's sdk_version is gradio's)."""
    wanted = re.sub(r"[-_.]+", "-", package).lower()
    for line in requirements:
        name, sep, version = line.partition("==")
        if sep and re.sub(r"[-_.]+", "-", name.strip()).lower() == wanted:
            return version.strip()
    raise SpaceError(f"{RUNTIME_REQUIREMENTS} pins no exact version of {package}")


def space_card(space_id: str, models: Sequence[str], requirements: Sequence[str]) -> str:
    """The Space's README.md: its configuration as front matter, then what it serves and how it was made."""
    data = SpaceCardData(title=space_id.split("/")[1], sdk="gradio", sdk_version=pinned_version("gradio", requirements),
                         python_version=PYTHON_VERSION, app_file=APP_FILE, models=list(models),
                         preload_from_hub=list(models), tags=["lmdemo", "lstm", "language-model"], **SPACE_STYLE)
    served = "\n".join(f"- [{m}](https://huggingface.co/{m})" for m in models)
    command = f"python -m lmdemo space {space_id} " + " ".join(f"--model {m}" for m in models)
    body = f"""# {space_id.split("/")[1]}: LSTM language models, up close

Samples at several temperatures side by side, every token shaded by the probability the model gave it,
next-token bars, the LSTM's states and gates, and two models compared in bits per character: the web
demo of lmdemo, which trains word-, subword- and character-level LSTM language models. This Space holds
the demo's code and no weights.

## Models

{served}

`{MODELS_FILE}` lists them; `preload_from_hub` in the front matter downloads them into the Space's Hugging Face
cache when the Space is built, and the app loads them from there by repo id. A model that cannot be loaded is
left out with a notice at the top of the page; the others are served.

## Settings

- Hardware: CPU basic is enough (2 requests computed at once, the rest queued).
- `{MODELS_ENV}` (a Space variable): more models to serve, comma-separated folders or Hub repo ids.
- `HF_TOKEN` (a Space secret): needed only for private model repos.
- `HF_HUB_OFFLINE=1`: serve only what the build preloaded, never asking the Hub.

Written by `{command}` in a checkout of lmdemo; `{SPACE_REQUIREMENTS}` holds the app's run-time requirements only.
Every tab, the API (a `gradio_client` example per endpoint) and the demo's limits are described in lmdemo's
reference, `docs/web-demo.md` and `docs/reliability.md` in its repository.
"""
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def build_space(space_id: str, models: Sequence[str], out: str | Path, root: Path = ROOT) -> Path:
    """Write the Space folder for `space_id` serving the Hub model repos `models`; returns the folder.

    An existing `out` is replaced only when it is empty or a Space folder written before (it has app.py and
    models.txt), so a mistyped --out never wipes other files."""
    check_repo_id(space_id, "Space")
    models = list(dict.fromkeys(check_repo_id(m, "model") for m in models))
    if not models:
        raise SpaceError("a Space needs at least one --model (a Hub model repo id)")
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise SpaceError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not ((out / APP_FILE).is_file() and (out / MODELS_FILE).is_file()):
            raise SpaceError(f"{out} is not empty and not a Space folder written by lmdemo: choose another --out")
    requirements = runtime_requirements(root)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    # the whole package (modules and any files it ships), as the app imports it here
    shutil.copytree(root / PACKAGE, staging / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    shutil.copyfile(root / APP_FILE, staging / APP_FILE)
    (staging / SPACE_REQUIREMENTS).write_text(
        f"# The web demo's run-time requirements: {RUNTIME_REQUIREMENTS} of lmdemo.\n"
        f"# torch from PyTorch's CPU index, not PyPI's CUDA build.\n--extra-index-url {TORCH_CPU_INDEX}\n"
        + "\n".join(requirements) + "\n", encoding="utf-8")
    (staging / SPACE_PACKAGES).write_text("\n".join(DEBIAN_PACKAGES) + "\n", encoding="utf-8")
    (staging / MODELS_FILE).write_text("# The Hub model repos the app serves, one a line (app.py --models-file).\n"
                                       + "\n".join(models) + "\n", encoding="utf-8")
    (staging / CARD_FILE).write_text(space_card(space_id, models, requirements), encoding="utf-8")
    problems = space_problems(staging)
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        raise SpaceError(f"the Space folder would be refused or carry weights: {'; '.join(problems)}")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def space_problems(folder: Path) -> list[str]:
    """Why the Hub would refuse the folder as plain git files, or why it is not a weights-free Space."""
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{name} is {path.stat().st_size / 1e6:.1f} MB (over 10 MB)")
        if path.suffix in WEIGHT_SUFFIXES:
            problems.append(f"{name} holds weights")
    return problems


def read_models_file(path: Path) -> list[str]:
    """The models listed in a file: one folder or Hub repo id a line; blank lines and `#` comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def space_models(folder: Path) -> list[str]:
    """The model repo ids a Space folder serves, from its models.txt."""
    return read_models_file(folder / MODELS_FILE)


def upload_space(folder: str | Path, space_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the Space (a Gradio Space, kept if it exists) and upload the folder as one commit; returns the
    commit URL. Every model it lists must be a model repo the token can see, since the Space's build
    downloads them."""
    folder = Path(folder)
    check_repo_id(space_id, "Space")
    problems = space_problems(folder)
    if problems:
        raise SpaceError(f"not uploading {folder}: {'; '.join(problems)}")
    api = HfApi(token=token)
    try:
        missing = [m for m in space_models(folder) if not api.repo_exists(m, repo_type="model")]
        if missing:
            raise SpaceError(f"no model repo {', '.join(missing)} on the Hub (or not visible with this token): "
                             f"push it first with `python -m lmdemo push`")
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                                   commit_message="Deploy the lmdemo web demo",
                                   delete_patterns=["*.py", f"{PACKAGE}/*"])  # what lmdemo no longer has goes
    except SpaceError:
        raise
    except Exception as error:  # noqa: BLE001 - the Hub refused, or no network (HF_HUB_OFFLINE, no route): one line
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise SpaceError(f"cannot upload the Space {space_id}: {reason}") from None
    return str(commit.commit_url)


def shipped_models(root: Path = ROOT) -> list[Path]:
    """The model folders shipped under checkpoints/."""
    folder = root / SHIPPED
    return sorted(p.parent for p in folder.glob(f"*/{CONFIG_FILE}")) if folder.is_dir() else []


def push_models(folders: Sequence[Path], owner: str, space: str | None = None, private: bool = False,
                token: str | None = None) -> list[tuple[str, str]]:
    """Push each model folder as OWNER/<folder name> (a run's `model/` folder by its run's name) with its card
    (linking `space` when given); returns (repo id, commit URL) pairs. The card is written into a copy, so the
    folders are left as they are. A model named after a preset whose config names no Hub dataset (the shipped
    folders were trained on local copies) is pushed with the preset's dataset, which its card links."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", owner):
        raise SpaceError(f"owner {owner!r} is not a Hub user or organisation name")
    if space is not None:
        check_repo_id(space, "Space")
    if not folders:
        raise SpaceError("no model folders to push")
    pushed = []
    for folder in folders:
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise SpaceError(f"{folder} is not a model folder: missing {', '.join(missing)}")
        resolved = folder.resolve()
        repo_id = check_repo_id(f"{owner}/{resolved.parent.name if resolved.name == MODEL_DIR else resolved.name}",
                                "model")
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(shutil.copytree(folder, Path(scratch) / repo_id.split("/")[1]))
            _name_the_preset_dataset(copy, repo_id.split("/")[1])
            pushed.append((repo_id, push_model(copy, repo_id, private=private, token=token, space=space)))
    return pushed


def _name_the_preset_dataset(folder: Path, name: str) -> None:
    """Write the dataset of the preset called `name` into the folder's config.json when it names none."""
    dataset = PRESETS.get(name, {}).get("dataset_id")
    path = folder / CONFIG_FILE
    if dataset is None or hub_dataset(Config.load(path)) is not None:
        return
    values = json.loads(path.read_text(encoding="utf-8"))
    values["dataset_id"] = dataset
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
