"""Generate a new nft task package from ``templates/nft-task``.

    python scripts/new_task.py audio

writes ``packages/nft-audio`` (import ``nft.audio``, entry point ``audio = "nft.audio:modality"``)
and ``tests/audio/test_audio.py``. The generated package is a complete toy task that passes the
conformance suites; then follow ``docs/extending.md`` to replace its pieces. ``--root DIR``
writes into another checkout (the packaging tests generate into a temporary folder).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "nft-task"
PLACEHOLDER = "yourtask"
CAMEL_PLACEHOLDER = "YourTask"
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = {"core", "bench", "testing", "yourtask"}
TEXT_SUFFIXES = {".py", ".toml", ".md", ".txt", ".cfg", ".yaml", ".yml"}


def camel(name: str) -> str:
    """``point_sets`` -> ``PointSets`` (class-name prefix of the generated package)."""
    return "".join(part.capitalize() for part in name.split("_"))


def _render(text: str, name: str) -> str:
    return text.replace(CAMEL_PLACEHOLDER, camel(name)).replace(PLACEHOLDER, name)


def _copy_tree(source: Path, dest: Path, name: str, skip: tuple[str, ...] = ()) -> list[Path]:
    written = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or "__pycache__" in path.parts or relative.parts[0] in skip:
            continue
        target = dest / _render(str(relative), name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in TEXT_SUFFIXES:
            target.write_text(_render(path.read_text(encoding="utf-8"), name), encoding="utf-8")
        else:
            shutil.copyfile(path, target)
        written.append(target)
    return written


def generate(name: str, root: Path = REPO, template: Path = TEMPLATE) -> tuple[Path, Path]:
    """Write ``root/packages/nft-<name>`` and ``root/tests/<name>``; return both paths."""
    if not NAME.match(name) or name in RESERVED:
        raise ValueError(f"task name {name!r} must be a lowercase Python identifier (letters, digits, "
                         f"underscores) and not one of {sorted(RESERVED)}")
    package, tests = root / "packages" / f"nft-{name}", root / "tests" / name
    for path in (package, tests):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name or remove it")
    _copy_tree(template, package, name, skip=("tests",))
    _copy_tree(template / "tests", tests, name)
    return package, tests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the task's name: import nft.<name>, `nft attack --modality <name>`")
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to write into (default: this one)")
    args = parser.parse_args(argv)
    try:
        package, tests = generate(args.name, args.root)
    except (ValueError, FileExistsError) as err:
        print(f"new_task: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {package} and {tests}\n"
          f"next: pip install -e {package}[test] && python -m pytest {tests}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
