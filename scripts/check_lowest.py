"""Check that the lowest-versions environment really runs the floors pyproject.toml declares.

    python scripts/check_lowest.py constraints/lowest.txt

For every package pinned in the constraints file: the installed version is the pin, and,
for our own dependencies, the pin is the lower bound pyproject.toml declares. Exits 1 with
one line per mismatch.
"""

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(constraints_path: str) -> int:
    pins: dict[str, str] = {}
    for line in Path(constraints_path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, pinned = line.split("==")
            pins[canonicalize_name(name)] = pinned.strip()
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    floors = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator == ">=":
                floors[canonicalize_name(requirement.name)] = specifier.version
    problems = []
    for name, pinned in pins.items():
        installed = version(name)
        if installed != pinned:
            problems.append(f"{name}: {installed} installed, constraints pin {pinned}")
        floor = floors.get(name)
        if floor is not None and not re.fullmatch(re.escape(floor) + r"(\.0)*", pinned):
            problems.append(f"{name}: pyproject.toml declares >={floor}, constraints pin {pinned}")
    for name in floors.keys() - pins.keys():
        problems.append(f"{name}: pyproject.toml declares a floor the lowest run does not pin")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
