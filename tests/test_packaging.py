"""The wheel's package list against the folders: a stage package missing from pyproject's
``packages`` works in the editable install of a checkout and is absent from a built wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_in_the_wheel() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {}
    for name, folder in setup["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            folders[".".join([name, *rel.parts])] = init.parent
    assert sorted(setup["packages"]) == sorted(folders)


def test_package_data_folders_exist() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setup["package-data"].items():
        top = max((n for n in setup["package-dir"] if f"{package}.".startswith(f"{n}.")), key=len)
        sub = package.removeprefix(top).strip(".")
        folder = ROOT / setup["package-dir"][top] / Path(*sub.split(".") if sub else ())
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: nothing matches {pattern}"
