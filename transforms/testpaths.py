"""Which changed paths are tests, which are code, which are auxiliary (docs, changelog, assets).

Deliberate choices:
- Matching is on path components and file names, never substrings: ``pytest/``, ``latest.py``,
  ``contest.py`` and ``src/pkg/testing.py`` are code; ``testing/python/integration.py``,
  ``tests/data/fixture.bin`` and ``pkg/foo_test.py`` are tests (anything under a test directory
  belongs to the test side, so binary fixtures travel with ``test_patch``).
- Tests win over aux: ``tests/README.md`` is a test file (it lives with the tests).
- Aux files (changelog, docs, AUTHORS, README, license, images) are kept apart from the code
  patch so the training target is the code change. When in doubt a file is code: keeping a file
  in ``patch`` never breaks a task, dropping one the fix needs does. So ``.txt`` files, images
  and data outside docs directories (package data) are code, unless their stem says
  README/LICENSE/CHANGES…; ``requirements*.txt`` and stubs are always code.
- All of it is a frozen dataclass so users can adapt it per repository without code changes.
- The test rules users set (``[paths] test_dir_names`` / ``test_file_globs``, ``PathsConfig``)
  are one option pair read by every stage that splits paths: set per stage, a folder added in
  one place only gave the miner and the snapshot stage different splits of the same PR.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath


class PathKind(enum.StrEnum):
    TEST = "test"
    CODE = "code"
    AUX = "aux"


@dataclasses.dataclass(frozen=True)
class PathRules:
    """How paths are classified; every field is a tuple of names or glob patterns."""

    test_dir_names: tuple[str, ...] = field(
        default=("test", "tests", "testing"),
        metadata={"help": "directory names whose contents are test files"},
    )
    test_file_globs: tuple[str, ...] = field(
        default=("test_*.py", "*_test.py", "conftest.py"),
        metadata={"help": "file-name globs of test files (matched on the name, not the path)"},
    )
    aux_dir_names: tuple[str, ...] = field(
        default=("docs", "doc", "changelog.d", "changes", "newsfragments", ".github"),
        metadata={"help": "directory names whose contents are non-code (docs, news, CI)"},
    )
    aux_file_stems: tuple[str, ...] = field(
        default=(
            "changelog", "changes", "history", "news", "authors", "contributors", "readme",
            "license", "licence", "copying", "notice", "codeowners", "code_of_conduct",
            "contributing", "security", "citation", ".mailmap", "release_notes",
        ),
        metadata={"help": "file stems (case-insensitive) of non-code files"},
    )  # fmt: skip
    aux_suffixes: tuple[str, ...] = field(
        default=(".md", ".rst", ".adoc", ".asciidoc"),
        metadata={"help": "file suffixes (case-insensitive) of non-code (prose) files"},
    )
    code_file_globs: tuple[str, ...] = field(
        default=("requirements*.txt", "constraints*.txt", "*.pyi", "py.typed"),
        metadata={"help": "file-name globs that are code even if an aux rule matches"},
    )


DEFAULT_RULES = PathRules()


@dataclasses.dataclass(frozen=True)
class PathsConfig:
    """The ``[paths]`` options: which paths are tests, one setting for every stage.

    The miners (git and GitHub) and the snapshot stage each carry a copy (their ``test_paths``
    field, filled from this section by the option loader), so their caches key on it and a
    changed rule re-splits every PR the same way in all three.
    """

    test_dir_names: tuple[str, ...] = field(
        default=DEFAULT_RULES.test_dir_names,
        metadata={"help": "directory names whose contents are tests (any depth); used by the "
                          "miners and the snapshot split alike"},
    )  # fmt: skip
    test_file_globs: tuple[str, ...] = field(
        default=DEFAULT_RULES.test_file_globs,
        metadata={"help": "file-name globs of test files (matched on the name, not the path)"},
    )

    @property
    def rules(self) -> PathRules:
        return dataclasses.replace(
            DEFAULT_RULES, test_dir_names=self.test_dir_names, test_file_globs=self.test_file_globs
        )


# Metadata of a stage config's ``test_paths`` field: a copy of the ``[paths]`` section, set by
# the option loader; not a flag or key of that stage's own section.
FROM_PATHS_SECTION = {"from_section": "paths", "help": "test-path rules, from [paths]"}


def is_test_path(path: str, rules: PathRules = DEFAULT_RULES) -> bool:
    """True for a path inside a test directory or with a test file name."""
    parts = PurePosixPath(path).parts
    if any(p in rules.test_dir_names for p in parts[:-1]):
        return True
    return bool(parts) and any(fnmatchcase(parts[-1], g) for g in rules.test_file_globs)


def is_aux_path(path: str, rules: PathRules = DEFAULT_RULES) -> bool:
    """True for documentation, changelogs and other files that are not code (tests excluded)."""
    p = PurePosixPath(path)
    name = p.name
    if any(fnmatchcase(name, g) for g in rules.code_file_globs):
        return False
    if any(d in rules.aux_dir_names for d in p.parts[:-1]):
        return True
    stem = name.split(".", 1)[0].lower() if not name.startswith(".") else name.lower()
    if stem in rules.aux_file_stems:
        return True
    return p.suffix.lower() in rules.aux_suffixes


def classify_path(path: str, rules: PathRules = DEFAULT_RULES) -> PathKind:
    """test > aux > code: a file under tests/ is a test file whatever its type."""
    if is_test_path(path, rules):
        return PathKind.TEST
    if is_aux_path(path, rules):
        return PathKind.AUX
    return PathKind.CODE
