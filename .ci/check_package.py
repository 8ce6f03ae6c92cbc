"""Check that the built wheel and sdist hold what an install needs.

Usage: check_package.py DIST_DIR. Exits 1 naming every missing file.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def required() -> list[str]:
    """Return the package files that both archives must contain."""
    package = ROOT / "klerk_django"
    migrations = sorted((package / "migrations").glob("*.py"))
    names = ["py.typed", "apps.py", "tasks_backend.py"]
    names += [f"migrations/{path.name}" for path in migrations]
    return [f"klerk_django/{name}" for name in names]


def wheel_names(dist: Path) -> set[str]:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def sdist_names(dist: Path) -> set[str]:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        # Members sit under a "name-version/" directory.
        return {name.split("/", 1)[-1] for name in archive.getnames()}


def main(dist: Path) -> int:
    problems = []
    for kind, names in (("wheel", wheel_names(dist)), ("sdist", sdist_names(dist))):
        missing = [name for name in required() if name not in names]
        problems += [f"{kind} lacks {name}" for name in missing]

    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"wheel and sdist hold all {len(required())} required files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
