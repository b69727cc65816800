"""The web demo as a Hugging Face Space: the folder `python -m lmdemo space` writes, the app served from it
with a Hub cache filled the way the Space's build fills it, a missing model skipped, and the exact
huggingface_hub calls of the upload paths (recorded, never sent: this machine has no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from servers import free_port, serving

from lmdemo import cli
from lmdemo.checkpoint import REQUIRED_FILES, ModelLoadError
from lmdemo.web.registry import Models, NoModelsError, discover_models
from lmdemo.space import (MAX_FILE_BYTES, RUNTIME_REQUIREMENTS, SpaceError, runtime_requirements, shipped_models,
                          space_problems)

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD = {"someone/tiny-shakespeare": "char_model", "someone/ptb-tiny": "word_model"}
SPACE = "someone/lmdemo-demo"
# What the Hub's Space configuration allows (huggingface.co/docs/hub/spaces-config-reference).
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
TEST_TOOLS = ("pytest", "playwright")


# -- the Space folder ------------------------------------------------------------------------------------
def make_space(tmp_path: Path, models: list[str], capsys: pytest.CaptureFixture) -> Path:
    """`python -m lmdemo space SPACE --model ... --out ... --dry-run`, as a user types it."""
    out = tmp_path / "space"
    argv = ["space", SPACE, *[a for m in models for a in ("--model", m)], "--out", str(out), "--dry-run"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Space folder: {out}" in printed and "dry run: nothing uploaded" in printed
    return out


def space_config(folder: Path):
    from huggingface_hub import SpaceCard

    return SpaceCard.load(folder / "README.md").data


def fill_hub_cache(cache: Path, preload: list[str], folders: dict[str, Path]) -> None:
    """What `preload_from_hub` leaves in the Space's Hugging Face cache: each listed repo that exists as a
    snapshot of its files under models--OWNER--NAME, with refs/main naming the commit."""
    for entry in preload:
        repo_id = entry.split()[0]
        if repo_id not in folders:
            continue  # not on the Hub: nothing to download
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folders[repo_id], repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)


def space_env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("LMDEMO_MODELS", "SYSTEM", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        env.pop(name, None)
    return env


def page_config(url: str) -> dict:
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        return json.load(response)


def components(config: dict, kind: str) -> list[dict]:
    return [c.get("props", {}) for c in config["components"] if c.get("type") == kind]


def model_choices(config: dict) -> list[str]:
    picker = next(p for p in components(config, "dropdown") if p.get("label") == "Model")
    return [choice[1] if isinstance(choice, list) else choice for choice in picker["choices"]]


def test_the_space_folder_is_a_gradio_space_with_code_and_no_weights(tmp_path, capsys):
    import gradio

    models = list(GOOD)
    folder = make_space(tmp_path, models, capsys)
    config = space_config(folder)
    assert config.sdk == "gradio" and config.app_file == "app.py" and config.python_version == "3.11"
    assert config.sdk_version == gradio.__version__  # the gradio the tests run is the one the Space gets
    assert config.models == models and config.preload_from_hub == models
    assert config.title and config.emoji and config.pinned is False
    assert config.colorFrom in COLORS and config.colorTo in COLORS
    assert 0 < len(config.short_description) <= 60
    assert (folder / "models.txt").read_text().split("\n")[1:] == [*models, ""]

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert (folder / "packages.txt").read_text() == "libjemalloc2\n"  # the server's malloc, from Debian
    assert {"README.md", "app.py", "models.txt", "packages.txt", "requirements.txt", "lmdemo/__init__.py", "lmdemo/checkpoint.py",
            "lmdemo/web/__init__.py", "lmdemo/web/page.py", "lmdemo/web/registry.py"} <= set(files)
    assert not any(name.startswith(("checkpoints/", "runs/", "tests/")) or "__pycache__" in name for name in files)
    assert all((folder / name).stat().st_size <= MAX_FILE_BYTES for name in files)
    assert not any(name.endswith((".safetensors", ".bin", ".pt")) for name in files)
    assert space_problems(folder) == []
    assert (folder / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()

    installed = [line for line in (folder / "requirements.txt").read_text().splitlines()
                 if line and not line.startswith(("#", "--"))]
    assert installed == runtime_requirements() and "torch==2.13.0" in installed
    assert not any(line.startswith(TEST_TOOLS + ("streamlit", "datasets")) for line in installed)


def test_requirements_split_runtime_from_tools():
    """requirements.txt still installs everything (the runtime file, training and the test tools); the
    Space's file has the runtime only, pinned exactly, and README's front matter agrees on gradio."""
    local = (ROOT / "requirements.txt").read_text().splitlines()
    assert f"-r {RUNTIME_REQUIREMENTS}" in local
    assert all(any(line.startswith(f"{tool}==") for line in local) for tool in TEST_TOOLS)
    runtime = runtime_requirements()
    assert all("==" in line for line in runtime) and not any(line.startswith(TEST_TOOLS) for line in runtime)
    assert "torch==2.13.0" in runtime
    gradio = next(line.split("==")[1] for line in runtime if line.startswith("gradio=="))
    from huggingface_hub import metadata_load

    assert metadata_load(ROOT / "README.md")["sdk_version"] == gradio


def test_space_app_serves_the_preloaded_hub_models(tmp_path, capsys, char_model, word_model):
    """`python app.py` in the Space folder, offline, with the cache the build would leave: every listed model
    is served by its repo id and /generate answers."""
    from gradio_client import Client

    folder = make_space(tmp_path, list(GOOD), capsys)
    cache = tmp_path / "hub"
    fill_hub_cache(cache, space_config(folder).preload_from_hub,
                   {"someone/tiny-shakespeare": char_model, "someone/ptb-tiny": word_model})
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    with serving([sys.executable, "app.py", "--port", str(port)], url, log, cwd=folder, env=space_env(cache)):
        config = page_config(url)
        assert model_choices(config) == list(GOOD)
        assert not any("Not served" in str(p.get("value")) for p in components(config, "markdown"))
        client = Client(url, verbose=False)
        for name, prompt in (("someone/tiny-shakespeare", "ROMEO:\n"), ("someone/ptb-tiny", "the company said")):
            samples, prompt_view, status, *_ = client.predict(name, prompt, "0.5, 1", 20, 0, 1.0, "3", "", False,
                                                              api_name="/generate")
            assert status.startswith("**Done**") and "bits/char" in prompt_view and samples.count("lm-text") >= 2
    assert "app.py: warning" not in log.read_text()


def test_space_app_skips_a_missing_model_with_a_notice(tmp_path, capsys, char_model):
    """One good and one missing model: the good one serves, the log has one line and the page a notice."""
    from gradio_client import Client

    folder = make_space(tmp_path, ["someone/tiny-shakespeare", "someone/missing"], capsys)
    cache = tmp_path / "hub"
    fill_hub_cache(cache, space_config(folder).preload_from_hub, {"someone/tiny-shakespeare": char_model})
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    with serving([sys.executable, "app.py", "--port", str(port)], url, log, cwd=folder, env=space_env(cache)):
        config = page_config(url)
        assert model_choices(config) == ["someone/tiny-shakespeare"]
        notices = [str(p.get("value")) for p in components(config, "markdown") if "Not served" in str(p.get("value"))]
        assert len(notices) == 1 and "`someone/missing`" in notices[0] and "not in the local Hugging Face cache" \
            in notices[0]
        samples, _, status, *_ = Client(url, verbose=False).predict(
            "someone/tiny-shakespeare", "ROMEO:\n", "0.8", 20, 0, 1.0, "1", "", False, api_name="/generate")
        assert status.startswith("**Done**")
    warnings = [line for line in log.read_text().splitlines() if "app.py: warning" in line]
    assert warnings == ["app.py: warning: skipped someone/missing: no model folder at someone/missing, and as a Hub "
                        "repo it is not in the local Hugging Face cache and the Hub cannot be reached (offline?)"]
    assert "Traceback" not in log.read_text()


def test_space_app_without_any_loadable_model_exits_with_one_line(tmp_path, capsys):
    folder = make_space(tmp_path, ["someone/missing", "someone/gone"], capsys)
    done = subprocess.run([sys.executable, "app.py"], cwd=folder, env=space_env(tmp_path / "empty-cache"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("app.py: error: no model could be loaded (someone/missing: ")
    assert "someone/gone: " in done.stderr


def test_building_a_space_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["space", "not-a-space-id", "--model", "someone/a", "--dry-run", "--out", str(tmp_path / "a")]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    assert cli.main(["space", SPACE, "--model", "bad id!", "--dry-run", "--out", str(tmp_path / "b")]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert cli.main(["space", SPACE, "--model", "someone/a", "--dry-run", "--out", str(taken)]) == 2
    assert "not a Space folder" in capsys.readouterr().err and (taken / "notes.txt").read_text() == "mine"
    # a Space folder written before is replaced
    again = make_space(tmp_path, ["someone/a"], capsys)
    make_space(tmp_path, ["someone/b"], capsys)
    assert space_config(again).models == ["someone/b"]


def test_space_problems_name_big_files_and_weights(tmp_path):
    (tmp_path / "lmdemo").mkdir()
    with (tmp_path / "big.txt").open("wb") as big:
        big.truncate(MAX_FILE_BYTES + 1)
    (tmp_path / "lmdemo" / "model.safetensors").write_bytes(b"x")
    problems = space_problems(tmp_path)
    assert len(problems) == 2 and "big.txt is 10.0 MB (over 10 MB)" in problems[0]
    assert "lmdemo/model.safetensors holds weights" in problems[1]
    with pytest.raises(SpaceError, match="over 10 MB"):
        from lmdemo.space import upload_space

        upload_space(tmp_path, SPACE)  # refused before any Hub call


# -- the served models, in-process ------------------------------------------------------------------------
def test_models_file_and_skipping_broken_models(tmp_path, char_model):
    listed = tmp_path / "models.txt"
    listed.write_text("# served\nsomeone/a\n\n  someone/b  # the second\n")
    found = discover_models(tmp_path / "none", [str(char_model)], environ={}, models_file=listed)
    assert list(found) == ["someone/a", "someone/b", "shakespeare-tiny"]
    with pytest.raises(NoModelsError, match="list them in .*absent.txt"):
        discover_models(tmp_path / "none", [], environ={}, models_file=tmp_path / "absent.txt")

    broken = tmp_path / "broken"
    shutil.copytree(char_model, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    sources = {"good": str(char_model), "broken": str(broken), "someone/gone": "someone/gone"}
    with pytest.raises(ModelLoadError):
        Models(sources)  # without skip_broken a bad model is an error, as before
    models = Models(sources, skip_broken=True)
    assert models.names == ["good"] and list(models.skipped) == ["broken", "someone/gone"]
    assert "cannot load the model" in models.skipped["broken"]
    from lmdemo.generation import SettingsError

    with pytest.raises(SettingsError, match="not served"):
        models.generator("broken")
    with pytest.raises(NoModelsError, match="no model could be loaded"):
        Models({"broken": str(broken)}, skip_broken=True)


def test_preferred_models_are_found_by_their_hub_name(char_model, word_model):
    """The page opens on the preferred models when a Space serves them as OWNER/NAME."""
    models = Models({"someone/shakespeare-char": str(char_model), "someone/imdb-word": str(word_model)})
    assert models.default == "someone/imdb-word"
    assert models.compare_pair == ("someone/imdb-word", "someone/shakespeare-char")


# -- the upload paths: the exact huggingface_hub calls, recorded --------------------------------------------
class Commit:
    def __init__(self, url: str):
        self.commit_url = url


@pytest.fixture
def hub(monkeypatch):
    """HfApi's network methods replaced by recorders; `hub.missing` lists repos that do not exist."""
    from huggingface_hub import HfApi

    class Recorder:
        calls: list[tuple] = []
        missing: set[str] = set()
        uploaded: dict[str, dict[str, bytes]] = {}

    def repo_exists(self, repo_id, *, repo_type=None, **kwargs):
        Recorder.calls.append(("repo_exists", self.token, repo_id, dict(repo_type=repo_type, **kwargs)))
        return repo_id not in Recorder.missing

    def create_repo(self, repo_id, **kwargs):
        Recorder.calls.append(("create_repo", self.token, repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        Recorder.calls.append(("upload_folder", self.token, kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        Recorder.uploaded[kwargs["repo_id"]] = {p.relative_to(folder).as_posix(): p.read_bytes()
                                                for p in folder.rglob("*") if p.is_file()}
        return Commit(f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}")

    for name, method in (("repo_exists", repo_exists), ("create_repo", create_repo),
                         ("upload_folder", upload_folder)):
        monkeypatch.setattr(HfApi, name, method)
    Recorder.calls, Recorder.missing, Recorder.uploaded = [], set(), {}
    return Recorder


def test_space_upload_creates_a_gradio_space_and_uploads_the_folder(tmp_path, capsys, hub):
    out = tmp_path / "space"
    argv = ["space", SPACE, "--model", "someone/a", "--model", "someone/b", "--out", str(out), "--token", "hf_test"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"https://huggingface.co/{SPACE}/commit/{COMMIT}"
    assert hub.calls == [
        ("repo_exists", "hf_test", "someone/a", dict(repo_type="model")),
        ("repo_exists", "hf_test", "someone/b", dict(repo_type="model")),
        ("create_repo", "hf_test", SPACE, dict(repo_type="space", space_sdk="gradio", private=False, exist_ok=True)),
        ("upload_folder", "hf_test", SPACE, dict(repo_id=SPACE, repo_type="space", folder_path=out,
                                                 commit_message="Deploy the lmdemo web demo",
                                                 delete_patterns=["*.py", "lmdemo/*"])),
    ]
    sent = hub.uploaded[SPACE]
    assert {"README.md", "app.py", "models.txt", "requirements.txt", "lmdemo/space.py"} <= set(sent)
    assert max(len(data) for data in sent.values()) <= MAX_FILE_BYTES

    hub.calls.clear()
    hub.missing.add("someone/b")
    assert cli.main([*argv, "--private"]) == 2
    assert "no model repo someone/b on the Hub" in capsys.readouterr().err
    assert [call[0] for call in hub.calls] == ["repo_exists", "repo_exists"]  # nothing created or uploaded


def test_space_upload_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """The real huggingface_hub path as far as this machine goes: offline, the first Hub call is refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert cli.main(["space", SPACE, "--model", "someone/a", "--out", str(tmp_path / "s"), "--token", "hf_x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmdemo: error: cannot upload the Space {SPACE}: ") and err.count("\n") == 1


def test_push_all_publishes_every_shipped_model_with_cards_linking_space_and_dataset(hub, capsys):
    from huggingface_hub import ModelCard

    from lmdemo.config import PRESETS

    shipped = shipped_models()
    assert shipped, "checkpoints/ ships models"
    before = {folder: (folder / "README.md").read_bytes() for folder in shipped}
    assert cli.main(["push", "--all", "someone", "--space", SPACE, "--token", "hf_test"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [call[:3] for call in hub.calls] == [
        (kind, "hf_test", f"someone/{folder.name}") for folder in shipped for kind in ("create_repo", "upload_folder")]
    for folder, (create, upload) in zip(shipped, zip(hub.calls[::2], hub.calls[1::2])):
        repo_id = f"someone/{folder.name}"
        assert create[3] == dict(private=False, exist_ok=True)
        sent_from = upload[3].pop("folder_path")
        assert upload[3] == dict(repo_id=repo_id, commit_message="Upload lmdemo model")
        assert Path(sent_from).resolve() != folder.resolve()  # a copy: the card is not written into checkpoints/
        sent = hub.uploaded[repo_id]
        assert set(REQUIRED_FILES) <= set(sent)
        card = sent["README.md"].decode()
        assert f"(https://huggingface.co/spaces/{SPACE})" in card and f"load_model('{repo_id}')" in card
        dataset = PRESETS.get(folder.name, {}).get("dataset_id")
        if dataset:  # a shipped model is named after its preset, which names the Hub dataset
            assert ModelCard(card).data.datasets == [dataset]
            assert f"(https://huggingface.co/datasets/{dataset})" in card
        assert f"{repo_id}: https://huggingface.co/{repo_id}/commit/{COMMIT}" in printed
    assert {folder: (folder / "README.md").read_bytes() for folder in shipped} == before


def test_push_needs_a_folder_and_repo_or_all(capsys):
    assert cli.main(["push"]) == 2
    assert "or --all OWNER" in capsys.readouterr().err
    assert cli.main(["push", "checkpoints/imdb-word", "--all", "someone"]) == 2
    assert "takes no model folder" in capsys.readouterr().err
