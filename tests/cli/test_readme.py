"""The README's and guides' commands run as written: every flag they give exists on the command
they give it to, and the seed-script commands in the README are the very ones
tests/cli/test_seed_commands.py runs end to end."""

import re
import shlex
from pathlib import Path

import pytest

from dalle2_md.cli import cli
from test_seed_commands import DECODER, GENERATE, PRIOR, TEST_DUMMY, TEST_OWN

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
SCRIPTS = {"test_micro_doppler.py": "check", "train_micro_doppler_decoder.py": "train-decoder",
           "train_micro_doppler_prior.py": "train-prior", "generate_micro_doppler.py": "generate"}


def commands(path: Path) -> list[list[str]]:
    """Each `dalle2-md ...` or `python <seed script> ...` line of the file's bash blocks, as tokens
    (continuation lines joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                tokens = shlex.split(part.strip(), comments=True)
                if tokens[:1] == [".venv/bin/dalle2-md"]:
                    tokens[0] = "dalle2-md"
                if tokens[:1] == ["dalle2-md"] or (tokens[:1] == ["python"] and tokens[1:2][0:1] and tokens[1] in SCRIPTS):
                    out.append(tokens)
    return out


def command_and_flags(tokens: list[str]):
    if tokens[0] == "python":
        name, rest = SCRIPTS[tokens[1]], tokens[2:]
    else:
        name, rest = tokens[1], tokens[2:]
    return cli.commands.get(name), name, [t.split("=")[0] for t in rest if t.startswith("--")]


def all_commands():
    found = [(path.relative_to(REPO).as_posix(), tokens) for path in DOCS for tokens in commands(path)]
    assert len(found) >= 15, "the README and guides lost their commands"
    return found


@pytest.mark.parametrize("where, tokens", all_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:3]))
def test_documented_flags_exist(where, tokens):
    command, name, flags = command_and_flags(tokens)
    assert command is not None, f"{where}: no command {name!r} in `{' '.join(tokens)}`"
    known = {"--help"}
    for param in command.params:
        known.update(getattr(param, "opts", []))
        known.update(getattr(param, "secondary_opts", []))
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where}: `{' '.join(tokens)}` gives {unknown}, which `{name}` does not take"


def test_readme_seed_commands_are_the_ones_the_end_to_end_tests_run():
    """Each command test_seed_commands runs is in the README as written (the README may add the
    flags the test adds too, as the prior's --clip_path)."""
    readme = [tokens for tokens in commands(REPO / "README.md") if tokens[0] == "python"]
    for command in (DECODER, PRIOR, GENERATE, TEST_DUMMY, TEST_OWN):
        seed = shlex.split(command.replace("\\\n", " "))
        assert any(tokens[:len(seed)] == seed for tokens in readme), command


def test_readme_keeps_the_two_commands_ci_runs():
    text = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_command = '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -q'
    assert test_command in text and test_command in ci
    assert ".venv/bin/pip install -e . && .venv/bin/dalle2-md demo" in text
    assert len(text.splitlines()) <= 200
