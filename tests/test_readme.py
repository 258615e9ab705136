"""The README's code works as written: its Python blocks run, its TOML parses, its shell commands have
valid syntax and only flags that their programs accept (the slow ones, installs and servers, are not run)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def commands() -> list[str]:
    """Every shell command: the lines of the bash blocks (continuations joined, comments dropped) and the
    inline ones of the text (`` `.venv/bin/…` ``)."""
    found = re.findall(r"`(\.venv/bin/[^`\s]+ [^`\n]+)`", README.read_text())
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def run_python(code: str, cwd: Path, *path: Path) -> None:
    """``code`` in a fresh interpreter in ``cwd``, importing from ``path`` then the repository."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*path, ROOT])), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_readme_has_the_blocks_this_test_knows():
    assert len(blocks("python")) == 5 and len(blocks("toml")) == 2 and len(commands()) >= 15


def test_the_library_snippets_run_as_written(tmp_path):
    for code in blocks("python"):
        path = re.match(r"# (explainers/methods/\w+\.py)\n", code)
        if path is None:
            run_python(code, tmp_path)


def test_the_plugin_example_is_a_working_explainer_file(tmp_path):
    """Dropped as written into a copy of ``explainers/methods/``, it registers and computes maps."""
    [code] = [c for c in blocks("python") if c.startswith("# explainers/methods/")]
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "explainers", tmp_path / "explainers", ignore=skip)
    (tmp_path / code.splitlines()[0][2:]).write_text(code)
    run_python(
        "import torch, explainers\n"
        "from tests.test_methods import synthetic_capture\n"
        "assert 'cls_max' in explainers.list_explainers()\n"
        "maps = explainers.compute(synthetic_capture(), 'cls_max', start_layer=1, power=2.0)\n"
        "assert maps.shape == (3, 2, 3) and bool((maps >= 0).all())\n",
        tmp_path, tmp_path,
    )


def test_the_toml_blocks_parse():
    plugin, secrets = (tomllib.loads(toml) for toml in blocks("toml"))
    assert plugin["project"]["entry-points"]["explainers.methods"]["cls_max"]
    assert {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"} <= set(
        secrets["auth"])  # the keys st.login needs
    assert secrets["auth"]["redirect_uri"].endswith("/oauth2callback") and secrets["access"]["admins"]


@pytest.mark.parametrize("command", commands())
def test_shell_commands_have_valid_syntax(command):
    assert subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0, command


def program_calls() -> list[list[str]]:
    """The calls of this project's programs: ``.venv/bin/python -m explainers …``, ``.venv/bin/python
    <script>.py …`` and ``.venv/bin/streamlit run …``."""
    calls = []
    for command in commands():
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            words = words[1:] if words and "=" in words[0] else words  # HF_HUB_OFFLINE=1 …
            module = words[:3] == [".venv/bin/python", "-m", "explainers"]
            script = words[:1] == [".venv/bin/python"] and words[1].endswith(".py")
            if module or script or words[:2] == [".venv/bin/streamlit", "run"]:
                calls.append(words)
    return calls


def test_every_command_uses_the_venvs_programs():
    for command in commands():
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            words = words[1:] if words and "=" in words[0] else words
            assert words[0] not in ("python", "pip", "streamlit", "pytest"), f"bare {words[0]}: {command}"


@pytest.mark.parametrize("words", program_calls(), ids=lambda words: " ".join(words[:4]))
def test_program_flags_exist(words):
    """Each flag is accepted: the command line's own parser for ``-m explainers``, the program's --help
    for the scripts and ``streamlit run``."""
    if words[:3] == [".venv/bin/python", "-m", "explainers"]:
        from explainers.cli import build_parser

        build_parser().parse_args(words[3:])  # exits (a test failure) on an unknown flag or a bad choice
        return
    if words[0].endswith("streamlit"):
        program = [sys.executable, "-m", "streamlit", "run"]
    else:
        program = [sys.executable, words[1]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    usage = subprocess.run([*program, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 0, usage.stderr[-2000:]
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in usage.stdout, f"{flag} is not an option of {' '.join(words[:2])}"
