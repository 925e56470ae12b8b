"""The README serves a new user: it is short, every `adactrl` command in it parses with the CLI as
written, every repository file it names exists, and the quick commands (`infer`, `--help`) run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adactrl.cli import build_parser, normalise_flags
from adactrl.controller import Controller, ControllerConfig, save_controller
from adactrl.models.embedded import EmbeddedVLM

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 250
QUICK = ("infer", "--help")
"""A command line that names one of these runs in the test; the others (training, sweeps,
searches: minutes each) are parsed only."""


def readme_commands() -> list[str]:
    """The command lines of the README's ```bash blocks, continuations joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def adactrl_argv(line: str) -> list[str] | None:
    words = shlex.split(line)
    for prefix in (["adactrl"], [".venv/bin/adactrl"], ["python", "-m", "adactrl.cli"]):
        if words[: len(prefix)] == prefix:
            return words[len(prefix) :]
    return None


def test_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_the_readme_shows_both_commands_and_the_tour():
    commands = readme_commands()
    assert "make train" in " ".join(commands) and "make test" in " ".join(commands)
    names = [argv[0] for argv in map(adactrl_argv, commands) if argv]
    assert {"evaluate", "infer", "train", "tune"} <= set(names)


def test_every_adactrl_command_in_the_readme_parses():
    parser = build_parser()
    parsed = 0
    for line in readme_commands():
        argv = adactrl_argv(line.split(" -- ", 1)[0]) or adactrl_argv(line)
        if argv is None:
            continue
        parser.parse_args(normalise_flags(parser, argv))  # argparse exits on a bad flag
        parsed += 1
    assert parsed >= 5


def test_every_repository_path_in_the_readme_exists():
    paths = {word for line in readme_commands() for word in shlex.split(line)
             if re.match(r"^(cluster|tune_configs|examples|benchmarks|scripts)/", word)}  # fmt: skip
    paths |= set(re.findall(r"\]\(((?:docs|cluster|tune_configs)/[^)]+)\)", README.read_text()))
    assert paths and not [p for p in paths if not (REPO / p).exists()]


@pytest.fixture
def tour_dir(tmp_path, shipped_model: EmbeddedVLM) -> Path:
    """A working directory as after `make train`: the examples, and a controller checkpoint at
    outputs/train/best_model.pt (untrained: the test checks the command, not the training)."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    controller = Controller(ControllerConfig(d_model=shipped_model.hidden_size, seed=0), shipped_model.knob_space)
    (tmp_path / "outputs" / "train").mkdir(parents=True)
    save_controller(tmp_path / "outputs" / "train" / "best_model.pt", controller)
    return tmp_path


def test_the_quick_readme_commands_run_as_written(tour_dir):
    quick = [argv for argv in map(adactrl_argv, readme_commands()) if argv and any(q in argv for q in QUICK)]
    assert quick, "the README should show at least one quick command (infer)"
    for argv in quick:
        run = subprocess.run([sys.executable, "-m", "adactrl.cli", *argv], cwd=tour_dir, capture_output=True,
                             text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        assert run.returncode == 0, f"{shlex.join(argv)} failed:\n{run.stderr}"
        if argv[0] == "infer":
            assert "answer:" in run.stdout and "total" in run.stdout
