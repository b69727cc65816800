"""The docs cannot drift: every command in README.md and docs/*.md names only subcommands and options that the real
argument parsers know, and every Python example in them runs (the gradio_client ones against a real `python app.py`
on the shipped models)."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import free_port, serving

from lmdemo.cli import build_parser
from lmdemo.runs import dashboard_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Where a command starts, in a code block or inline code: the CLI (also under torchrun), the app, the dashboard, a bench.
COMMAND = re.compile(r"(?:python )?-m lmdemo\b|python app\.py\b|streamlit run\b|python bench/[\w-]+\.py\b")
# Inline code that names a CLI subcommand with options, as in `eval --split valid|test`: a `python -m lmdemo` command.
SUBCOMMAND = re.compile(r"^(?:train|eval|generate|push|space|export|atlas|presets|table) .*--")
FENCE = re.compile(r"^\s*```(\w*)")
EXAMPLE_URL = "http://127.0.0.1:7860/"  # the address the API examples are written for: `python app.py`'s default
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
       "PYTHONUNBUFFERED": "1"}
ENV.pop("LMDEMO_MODELS", None)


@dataclass(frozen=True)
class Snippet:
    """A piece of a page: a command (from a code block or inline code) or a Python code block, and where it is."""

    page: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _page_parts(page: Path) -> Iterator[tuple[str, int, str]]:
    """(kind, first line, text) of a page: each fenced block with its language, and the prose between them."""
    lines = page.read_text(encoding="utf-8").splitlines()
    kind, start, body = "prose", 1, []
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and kind == "prose":
            yield kind, start, "\n".join(body)
            kind, start, body = fence.group(1) or "text", number + 1, []
        elif line.strip() == "```" and kind != "prose":
            yield kind, start, "\n".join(body)
            kind, start, body = "prose", number + 1, []
        else:
            body.append(line)
    yield kind, start, "\n".join(body)


def commands() -> list[Snippet]:
    """Every command line of the pages: each line of a non-Python code block (backslash continuations joined) and
    each inline code span that holds one, from where the command starts."""
    found = []
    for page in PAGES:
        for kind, start, text in _page_parts(page):
            if kind == "python":
                continue
            if kind == "prose":
                pieces = [(start + text[:m.start()].count("\n"), m.group(1)) for m in re.finditer(r"`([^`]+)`", text)]
            else:
                pieces = [(start + i, line) for i, line in enumerate(text.replace("\\\n", " ").split("\n"))]
            for line, piece in pieces:
                match = COMMAND.search(piece)
                if match:
                    found.append(Snippet(page, line, " ".join(piece[match.start():].split())))
                elif kind == "prose" and SUBCOMMAND.match(piece):
                    found.append(Snippet(page, line, "python -m lmdemo " + " ".join(piece.split())))
                elif kind == "prose" and re.match(r"--[a-z]", piece):  # an option on its own, as in `--max-minutes`
                    found.append(Snippet(page, line, " ".join(piece.split())))
    return found


def python_examples() -> list[Snippet]:
    return [Snippet(page, start, text) for page in PAGES for kind, start, text in _page_parts(page) if kind == "python"]


@functools.cache
def app_options() -> frozenset[str]:
    """The options of app.py's real parser (app.py is a script, so it is loaded from its file)."""
    spec = importlib.util.spec_from_file_location("lmdemo_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(_options(module.build_parser()))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def _bench_options(script: Path) -> set[str]:
    """The option strings a bench script's argparse parser declares (read from its source: it builds it in main)."""
    calls = (node for node in ast.walk(ast.parse(script.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument")
    return {arg.value for call in calls for arg in call.args
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")} | {"-h", "--help"}


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # an unclosed quote in a placeholder: plain words are enough to find the options
        words = command.split()
    return [word.strip("[]") for word in words if word not in ("…", "...")]  # a placeholder is no subcommand


def _unknown_options(words: list[str], known: set[str]) -> list[str]:
    """The words that are options (`--x`, `--x=1`, `-x`; not `-0.9` or a lone `-`) that `known` lacks."""
    options = (word.split("=", 1)[0] for word in words if re.match(r"-[-a-zA-Z]", word))
    return [option for option in options if option not in known]


# Options of other tools that the pages name on their own: torchrun's, pip's (the Space's requirements file).
OTHER_TOOLS = {"--nproc_per_node", "--extra-index-url"}


@functools.cache
def every_option() -> frozenset[str]:
    """Every option any of the project's commands takes (each subcommand, the app, the dashboard, every bench
    script), Streamlit's settings and a few other tools': what an option named on its own in prose may be."""
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    import streamlit.config

    return frozenset(set().union(*(_options(sub) for sub in subcommands.values())) | app_options()
                     | _options(dashboard_parser()) | set().union(*map(_bench_options, (ROOT / "bench").glob("*.py")))
                     | {f"--{name}" for name in streamlit.config.get_config_options()} | OTHER_TOOLS)


def problems(command: str) -> list[str]:
    """What in one documented command the real parsers would refuse: an unknown subcommand, script or option."""
    words = _words(command)
    if not words:
        return []
    if words[0].startswith("--"):
        return [f"no command takes {option}" for option in _unknown_options(words, every_option())]
    if "lmdemo" in words[:3]:
        parser, rest = build_parser(), words[words.index("lmdemo") + 1:]
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        if not rest or rest[0].startswith("-"):
            return _unknown_options(rest, _options(parser))
        if rest[0] not in subcommands:
            return [f"unknown subcommand {rest[0]!r} of python -m lmdemo (known: {', '.join(subcommands)})"]
        return [f"{rest[0]}: unknown option {option}"
                for option in _unknown_options(rest[1:], _options(subcommands[rest[0]]))]
    if words[:2] == ["python", "app.py"]:
        return [f"app.py: unknown option {option}" for option in _unknown_options(words[2:], app_options())]
    rest = words[2:]  # a script's own words, then after `--` those it passes on (to the dashboard, or to app.py)
    own_words, passed_words = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
    if words[0] == "streamlit":
        import streamlit.config

        if not own_words:  # `streamlit run` named in prose
            return []

        script, settings = own_words[0], {f"--{name}" for name in streamlit.config.get_config_options()}
        found = [] if (ROOT / script).is_file() else [f"no such script {script}"]
        return found + [f"streamlit: unknown option {o}" for o in _unknown_options(own_words[1:], settings)] + [
            f"{script}: unknown option {o}" for o in _unknown_options(passed_words, _options(dashboard_parser()))]
    script = ROOT / words[1]
    if not script.is_file():
        return [f"no such script {words[1]}"]
    return [f"{words[1]}: unknown option {o}" for o in _unknown_options(own_words, _bench_options(script))] + [
        f"app.py (after --): unknown option {o}" for o in _unknown_options(passed_words, app_options())]


def test_every_documented_command_uses_real_subcommands_and_options():
    found = commands()
    assert len({snippet.page for snippet in found}) >= 5 and len(found) > 50, "the commands were not found"
    wrong = [f"{snippet.where}: {problem}\n    {snippet.text}"
             for snippet in found for problem in problems(snippet.text)]
    assert not wrong, "the docs name what the parsers do not know:\n" + "\n".join(wrong)


def test_the_checker_catches_an_unknown_option_or_subcommand():
    """The check can fail: made-up names are reported, real ones are not."""
    assert problems("python -m lmdemo train --preset x --hidden-size 8 --no-shift-windows") == []
    assert problems("python -m lmdemo train --hiden-size 8") == ["train: unknown option --hiden-size"]
    assert problems("python -m lmdemo sample m")[0].startswith("unknown subcommand 'sample'")
    assert problems("python app.py --prot 7861") == ["app.py: unknown option --prot"]
    assert problems("streamlit run dashboard/main.py --server.adress x -- --log y") == [
        "streamlit: unknown option --server.adress", "dashboard/main.py: unknown option --log"]
    assert problems("python bench/load.py --users 4 -- --concurency 1") == [
        "app.py (after --): unknown option --concurency"]
    assert problems("--max-prompt-chars") == [] and problems("--max-prompt-char") == ["no command takes --max-prompt-char"]


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory) -> Iterator[str]:
    """`python app.py` with its defaults (the shipped models), on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with serving([sys.executable, "app.py", "--port", str(port)], url, tmp_path_factory.mktemp("docs") / "app.log",
                 cwd=ROOT, env=ENV):
        yield url


EXAMPLES = python_examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_every_python_example_of_the_docs_runs(example, request, monkeypatch):
    """Each block runs as a reader would paste it, from the repository root; line numbers in a traceback are the
    page's own. The API examples talk to a real server in place of `python app.py`'s default address."""
    code = example.text
    if "gradio_client" in code:
        assert EXAMPLE_URL in code, f"{example.where}: an API example must use {EXAMPLE_URL}, the test's stand-in"
        code = code.replace(EXAMPLE_URL, request.getfixturevalue("shipped_server"))
    monkeypatch.chdir(ROOT)
    exec(compile("\n" * (example.line - 1) + code, str(example.page), "exec"), {"__name__": "__docs__"})


def test_the_pages_that_cards_and_the_code_name_exist():
    """Model cards and the Space's README send readers to docs/ pages by path: those pages must be there."""
    named = {name for path in (ROOT / "lmdemo").rglob("*.py")
             for name in re.findall(r"docs/[\w-]+\.md", path.read_text(encoding="utf-8"))}
    assert {"docs/models.md", "docs/web-demo.md"} <= named, named
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []
