"""The files a Markdown page shows: code blocks whose first line (or `title=`) names a path.

```python
# myapp/config.py          <- a block becomes the file myapp/config.py
```

Used by the tests that build an app from the README's Quickstart and from the docs, so the
documents cannot drift from what works.
"""

import re
from pathlib import Path

FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="(?P<path>[^"]+)"')
PATH_COMMENT = re.compile(r"^(?:#|//) (?P<path>[\w.-]+(?:/[\w.-]+)*\.?\w*)(?:\s.*)?$")


def section(markdown: str, heading: str) -> str:
    """The text under `heading` (a line like `## Quickstart`) up to the next heading of that level."""
    level = heading.split(" ", 1)[0]
    start = markdown.index(heading + "\n")
    following = re.compile(rf"^{re.escape(level)} ", re.MULTILINE).search(markdown, start + len(heading) + 1)
    return markdown[start : following.start() if following else len(markdown)]


def files_in(markdown: str) -> dict[str, str]:
    """`{path: content}` for every code block that names its file; later blocks win."""
    files: dict[str, str] = {}
    for block in FENCE.finditer(markdown):
        body = block.group("body")
        title = TITLE.search(block.group("info"))
        if title:
            files[title.group("path")] = body
            continue
        first, _, rest = body.partition("\n")
        named = PATH_COMMENT.match(first)
        if named and ("/" in named.group("path") or "." in named.group("path")):
            files[named.group("path")] = rest if block.group("lang") in ("bash", "sh", "dotenv") else body
    return files


def write_files(files: dict[str, str], root: Path) -> None:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def commands_in(markdown: str) -> list[str]:
    """The shell commands of the `bash` blocks that do not name a file, one per line, comments stripped."""
    commands = []
    for block in FENCE.finditer(markdown):
        if block.group("lang") not in ("bash", "sh"):
            continue
        lines = block.group("body").splitlines()
        if lines and PATH_COMMENT.match(lines[0]):
            continue
        for line in lines:
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands
