"""Code examples in docs/ run in the suite, so they cannot drift (issue 32).

A fenced block is checked when the line right before its opening fence is a directive,
an HTML comment that the built site does not show:

    <!-- docs-test: run -->          a bash (or sh) block runs with `bash -e -o pipefail`,
                                     a python block with the suite's interpreter; it must
                                     exit 0
    <!-- docs-test: file PATH -->    the block's text is written to PATH (folders created)
    <!-- docs-test: append PATH -->  the block's text is added to the end of PATH
    <!-- docs-test: output -->       the block shows what the last run block printed: each
                                     of its lines (but blank and `...` lines) must appear in
                                     a line of that output, spaces collapsed

PATH is relative to the page's working folder. The checked blocks of a page run in order
in one temporary working folder, as a reader runs them from a checkout: it holds links to
the repository's npcs/, plugins/, training/ and examples/ (blocks read them and must never
write into them), the virtualenv's scripts come first on PATH and the state database is a
fresh file. Torch gets one thread: on two cores shared with other jobs, the default
thread count made the walkthrough's `persona-agents test` take 40 to 66 s instead of 6. A
failure names the page, the line of the block's opening fence, the block and its output.
Unmarked blocks (output shown for illustration, commands that need a server, a GPU or
hours) are left alone.

Every page is also checked for malformed directives and for indented fences: MkDocs'
fenced_code renders a fence only at the start of a line, so one inside a list item comes
out as a paragraph of backticks.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, cli_env

DOCS = REPO / "docs"
#: What a page's working folder links to (read-only for the blocks).
LINKED = ("npcs", "plugins", "training", "examples")
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
BLOCK_TIMEOUT_S = 300

_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class DocsExampleError(ValueError):
    """A page's docs-test directives are malformed; one `page:line: message` per problem."""


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # the opening fence's line, from 1
    language: str
    action: str  # run | file | append | output; "" for an unmarked block
    path: str  # for file and append
    text: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def parse_page(text: str, page: str) -> list[Block]:
    """Every fenced block of a page with its directive; DocsExampleError lists all mistakes."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    used_directives: set[int] = set()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        if opening["indent"]:
            # Python-Markdown's fenced_code (MkDocs) renders only fences at the start of a line:
            # an indented one, as in a list item, comes out as a paragraph of backticks.
            problems.append(
                f"docs/{page}:{i + 1}: an indented fence is not rendered as code; start it at the "
                "beginning of the line, outside the list"
            )
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        if end == len(lines):
            problems.append(f"docs/{page}:{i + 1}: the fence is never closed")
        language = info.split()[0].lower() if info else ""
        action, path = "", ""
        directive = _DIRECTIVE.match(lines[i - 1]) if i > 0 else None
        if directive:
            used_directives.add(i - 1)
            action, _, path = directive["body"].partition(" ")
            path = path.strip()
            problem = _directive_problem(action, path, language, blocks)
            if problem:
                problems.append(f"docs/{page}:{i}: {problem}")
        body = lines[i + 1 : end]
        blocks.append(Block(page, i + 1, language, action, path, "".join(line + "\n" for line in body)))
        i = end + 1
    for number, line in enumerate(lines):
        if _DIRECTIVE.match(line) and number not in used_directives:
            problems.append(f"docs/{page}:{number + 1}: a docs-test directive must be the line right before a fence")
    if problems:
        raise DocsExampleError("\n".join(problems))
    return blocks


def _directive_problem(action: str, path: str, language: str, earlier: list[Block]) -> str | None:
    if action not in ("run", "file", "append", "output"):
        return f"unknown docs-test action {action!r} (run, file PATH, append PATH, output)"
    if action == "run" and language not in RUN_LANGUAGES:
        return f"'run' needs a bash, sh or python block, not {language or 'a plain'!r} one"
    if action in ("file", "append") and (not path or Path(path).is_absolute() or ".." in Path(path).parts):
        return f"'{action}' needs a relative PATH inside the working folder, got {path!r}"
    if action in ("run", "output") and path:
        return f"'{action}' takes no argument, got {path!r}"
    if action == "output" and not any(b.action == "run" for b in earlier):
        return "'output' follows no 'run' block"
    return None


def _collapse(line: str) -> str:
    return " ".join(line.split())


def missing_output_lines(shown: str, printed: str) -> list[str]:
    """The lines of a shown output (but blank and `...` lines) that no printed line contains."""
    printed_lines = [_collapse(line) for line in printed.splitlines()]
    wanted = [_collapse(line) for line in shown.splitlines()]
    return [w for w in wanted if w and w != "..." and not any(w in line for line in printed_lines)]


def pages_with_examples() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md") if "docs-test:" in p.read_text(encoding="utf-8"))


# -- the extractor, without running anything ---------------------------------------------------

SAMPLE = """\
# A page

Some text.

<!-- docs-test: file game/npcs/a.yaml -->
```yaml
id: a
```

<!-- docs-test: run -->
```python
if True:
    print("indented")
```

<!-- docs-test: run -->
```bash
persona-agents npcs validate --npcs-dir game/npcs
```

<!-- docs-test: output -->
```
OK: 1 persona file(s) valid
...
```

````markdown
```yaml
not: a block of its own
```
````

```bash
make demo   # not marked: never run
```
"""


def test_the_extractor_reads_directives_lines_and_nested_fences():
    blocks = parse_page(SAMPLE, "sample.md")
    assert [(b.line, b.language, b.action, b.path) for b in blocks] == [
        (6, "yaml", "file", "game/npcs/a.yaml"),
        (11, "python", "run", ""),
        (17, "bash", "run", ""),
        (22, "", "output", ""),
        (27, "markdown", "", ""),
        (33, "bash", "", ""),
    ]
    assert blocks[0].text == "id: a\n"
    assert blocks[1].text == 'if True:\n    print("indented")\n'
    assert blocks[4].text == "```yaml\nnot: a block of its own\n```\n"  # a longer fence holds a shorter one
    assert blocks[1].where == "docs/sample.md:11"


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("<!-- docs-test: run -->\n\n```bash\nls\n```\n", "must be the line right before a fence"),
        ("<!-- docs-test: execute -->\n```bash\nls\n```\n", "unknown docs-test action 'execute'"),
        ("<!-- docs-test: run -->\n```yaml\na: 1\n```\n", "'run' needs a bash, sh or python block, not 'yaml'"),
        ("<!-- docs-test: file -->\n```yaml\na: 1\n```\n", "'file' needs a relative PATH"),
        ("<!-- docs-test: append ../outside.yaml -->\n```yaml\na: 1\n```\n", "'append' needs a relative PATH"),
        ("<!-- docs-test: file /tmp/a.yaml -->\n```yaml\na: 1\n```\n", "'file' needs a relative PATH"),
        ("<!-- docs-test: output -->\n```\nOK\n```\n", "'output' follows no 'run' block"),
        ("<!-- docs-test: run now -->\n```bash\nls\n```\n", "'run' takes no argument"),
        ("<!-- docs-test: run -->\n```bash\nls\n", "the fence is never closed"),
        ("- a list item:\n  ```bash\n  ls\n  ```\n", "an indented fence is not rendered as code"),
    ],
)
def test_the_extractor_names_each_mistake_with_its_line(mistake, message):
    with pytest.raises(DocsExampleError) as error:
        parse_page("# Page\n\n" + mistake, "bad.md")
    assert message in str(error.value)
    # the directive's line (line 3), or the fence's (line 4)
    line = 4 if "never closed" in message or "indented" in message else 3
    assert str(error.value).startswith(f"docs/bad.md:{line}: ")


def test_output_lines_must_appear_in_what_was_printed():
    printed = "Loading...\nOK:   1 persona file(s) valid in mygame/npcs\n  [PASS] turn 1: reply matches\n"
    assert missing_output_lines("OK: 1 persona file(s) valid in mygame/npcs\n...\n\n[PASS] turn 1", printed) == []
    assert missing_output_lines("[FAIL] turn 1\nOK: 1", printed) == ["[FAIL] turn 1"]


def test_every_page_parses_and_the_walkthrough_is_checked_end_to_end():
    # Every page: its directives are well formed and no fence is indented (which would not render).
    blocks = {page.name: parse_page(page.read_text(encoding="utf-8"), page.name) for page in DOCS.glob("*.md")}
    walkthrough = blocks["first-npc.md"]
    runs = [b for b in walkthrough if b.action == "run"]
    written = {b.path for b in walkthrough if b.action in ("file", "append")}
    assert {
        "mygame/npcs/_defaults.yaml",
        "mygame/npcs/beekeeper_orchard.yaml",
        "mygame/npcs/lore/wickham.yaml",
        "mygame/npcs/tests/beekeeper_orchard.yaml",
    } <= written
    commands = " ".join(b.text for b in runs)
    for command in ("npcs validate", "index-lore", "lore search", "persona-agents test", "run-dialogue"):
        assert command in commands, f"the walkthrough runs no `{command}`"
    # Every command a reader runs and every file a reader writes on that page is checked.
    unchecked = [b.where for b in walkthrough if not b.action and b.language in ("bash", "sh", "python", "yaml")]
    assert unchecked == [], f"blocks of the walkthrough that the suite does not check: {unchecked}"


# -- running the pages' checked blocks ------------------------------------------------------------


def _working_folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    return work


def _environment(tmp_path: Path) -> dict[str, str]:
    env = cli_env(
        PERSONA_AGENTS_DB=f"sqlite:///{tmp_path / 'state.db'}",
        PERSONA_AGENTS_TORCH_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    for name in ("PERSONA_AGENTS_NPCS_DIR", "PERSONA_AGENTS_LOAD_PLUGINS", "PERSONA_AGENTS_DEBUG"):
        env.pop(name, None)
    return env


def _run_block(block: Block, work: Path, env: dict[str, str]) -> str:
    interpreter = RUN_LANGUAGES[block.language]
    command = (
        ["bash", "-e", "-o", "pipefail", "-c", block.text]
        if interpreter == "bash"
        else [sys.executable, "-c", block.text]
    )
    try:
        result = subprocess.run(
            command,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"{block.where}: the {block.language} block ran over {BLOCK_TIMEOUT_S} s\n{block.text}"
            f"--- output ---\n{error.stdout or ''}{error.stderr or ''}"
        )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(
            f"{block.where}: the {block.language} block exited {result.returncode}\n--- block ---\n"
            f"{block.text}--- output ---\n{output}"
        )
    return output


def run_page(page: str, tmp_path: Path) -> None:
    blocks = parse_page((DOCS / page).read_text(encoding="utf-8"), page)
    work, env = _working_folder(tmp_path), _environment(tmp_path)
    printed = ""
    for block in blocks:
        if block.action in ("file", "append"):
            target = work / block.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a" if block.action == "append" else "w", encoding="utf-8") as out:
                out.write(block.text)
        elif block.action == "run":
            printed = _run_block(block, work, env)
        elif block.action == "output":
            missing = missing_output_lines(block.text, printed)
            assert not missing, (
                f"{block.where}: the shown output has lines the command did not print: {missing}\n"
                f"--- printed ---\n{printed}"
            )


@pytest.mark.model
@pytest.mark.subprocess
@pytest.mark.parametrize("page", pages_with_examples())
def test_the_checked_blocks_of_the_page_run(page: str, tmp_path: Path):
    run_page(page, tmp_path)
