"""Recipe inference: from a snapshot's files to an install ladder and a test command.

Everything here is pure: functions take ``{path: text}`` of the files that matter (see
``RECIPE_FILES`` / ``wanted``) and the list of all paths, and return plain values, so the logic is
unit-tested on file contents without git or Docker. What the packaging metadata says (the
project's name, dependencies, extras, Python versions) is read in ``project``; this module turns
it, and the requirement files, into ways to install the project.

Deliberate choices:
- The install ladder is a list of named rungs, cheapest-that-usually-works first: the package with
  its test extras, PEP 735 dependency groups, requirements-test/dev files, tox deps, the dev extra,
  everything together, the plain package + pytest. Each rung is a static list of requirement
  lines for the env layer (shared by every PR whose lines match) plus the extras the instance
  layer installs the package with, so a rung that resolves once resolves identically later.
- Requirement files are flattened here (``-r`` inlined, ``-e .``/local paths dropped): the env
  layer never sees the source, only dependency lines, so its hash is exactly what it installs.
- Projects versioned from git (``Project.uses_scm_version``) get a pretend version from
  ``scm_environment`` instead of needing tags.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from smelter.transforms.environment import project as pj

RECIPE_VERSION = "recipe_v1"

# Files recipe inference reads (glob patterns on repository paths).
RECIPE_FILES: tuple[str, ...] = (
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "tox.ini",
    "requirements*.txt",
    "requirements/*.txt",
    "requirements/*.in",
    "*requirements*.txt",
    "test-requirements*.txt",
    "dev-requirements*.txt",
    "constraints*.txt",
    ".github/workflows/*.yml",
    ".github/workflows/*.yaml",
    ".python-version",
)

TEST_EXTRAS = ("test", "tests", "testing")
DEV_EXTRAS = ("dev", "develop", "development")
# Requirement files by role, from the words of their path (``requirements/tests.txt``,
# ``test-requirements.in``, ``requirements-dev.txt``); files of other roles (docs, typing, lint,
# build) are never installed: pinned files for different purposes conflict with each other.
REQUIREMENT_ROLES: tuple[tuple[str, frozenset[str]], ...] = (
    ("test", frozenset({"test", "tests", "testing"})),
    ("ci", frozenset({"ci"})),
    ("dev", frozenset({"dev", "develop", "development"})),
)
OTHER_ROLE_WORDS = frozenset({
    "doc", "docs", "documentation", "typing", "mypy", "lint", "linting", "style", "build",
    "release", "publish", "deploy", "benchmark", "benchmarks", "bench", "pre", "commit",
    "precommit", "tox", "nox", "coverage", "pip", "setuptools", "types", "examples",
})  # fmt: skip

TEST_COMMAND: tuple[str, ...] = (
    "python", "-m", "pytest",
    "-rA",  # a summary line for every test, for humans reading the log
    "--tb=short",
    "-p", "no:cacheprovider",  # no .pytest_cache: runs must not influence one another
    "-p", "no:randomly",  # stable order when pytest-randomly is installed
)  # fmt: skip
"""argv the validation stage runs; it appends ``--junitxml=<file>`` and the test files."""


def wanted(path: str) -> bool:
    """Whether recipe inference needs this repository file."""
    return any(fnmatch.fnmatch(path, pattern) for pattern in RECIPE_FILES)


# --------------------------------------------------------------------------- requirements files


def flatten_requirements(
    path: str, files: Mapping[str, str], _seen: frozenset = frozenset()
) -> list[str]:
    """Requirement lines of ``path`` with ``-r`` includes inlined; editable/local lines dropped."""
    text = files.get(path)
    if text is None or path in _seen:
        return []
    base = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"^(-r|--requirement)\s*=?\s*(\S+)", line):
            out += flatten_requirements(_join(base, m.group(2)), files, _seen | {path})
            continue
        if line.startswith(("-", ".", "/")) or "file:" in line:
            continue  # -e ., -c constraints, --index-url, local paths: not env-layer material
        out += pj._valid_requirements([line])
    return out


def _join(base: str, rel: str) -> str:
    parts: list[str] = [p for p in base.split("/") if p]
    for p in rel.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return "/".join(parts)


def requirement_role(path: str) -> str | None:
    """``test``, ``ci`` or ``dev`` for a requirement file of that purpose, else None."""
    if not re.search(r"\.(txt|in)$", path) or "requirement" not in path.lower():
        return None
    words = set(re.split(r"[^a-z0-9]+", path.lower().rsplit(".", 1)[0]))
    if words & OTHER_ROLE_WORDS:
        return None
    for role, names in REQUIREMENT_ROLES:
        if words & names:
            return role
    return None


def requirement_files(files: Mapping[str, str], role: str) -> list[str]:
    """Files of ``role``, each on its own: a pinned ``.txt`` before its unpinned ``.in``
    (exact versions of that day first; the looser spec when the pins do not resolve)."""
    found = [p for p in files if requirement_role(p) == role]
    return sorted(found, key=lambda p: (p.rsplit(".", 1)[0], not p.endswith(".txt")))


def test_requirement_files(files: Mapping[str, str]) -> list[str]:
    return requirement_files(files, "test")


def base_requirements(files: Mapping[str, str]) -> list[str]:
    """A root ``requirements.txt``: the runtime dependencies of projects whose packaging
    computes them at run time (or that have no packaging at all)."""
    return flatten_requirements("requirements.txt", files) if "requirements.txt" in files else []


def tox_deps(files: Mapping[str, str]) -> list[str]:
    tox = pj._ini(files.get("tox.ini"))
    if not tox.has_section("testenv"):
        return []
    out: list[str] = []
    for line in pj._ini_list(tox.get("testenv", "deps", fallback="")):
        line = re.sub(r"^[\w,{}.-]+:\s*", "", line) if re.match(r"^[\w,{}.-]+:\s", line) else line
        if m := re.match(r"^-r\s*\{toxinidir\}/(\S+)", line):
            out += flatten_requirements(m.group(1), files)
        elif not line.startswith("-"):
            out += pj._valid_requirements([line])
    return out


# --------------------------------------------------------------------------- the ladder


@dataclass(frozen=True)
class Rung:
    """One way to install the project: env-layer requirement lines + instance-layer extras."""

    name: str
    requirements: tuple[str, ...]  # installed in the env layer, besides the project's own deps
    extras: tuple[str, ...] = ()  # the project is installed as `-e .[extras]`


def _with_pytest(lines: Iterable[str]) -> tuple[str, ...]:
    """The lines plus pytest, and pytest-timeout so one hanging test fails alone (validation
    passes ``--timeout`` when the plugin imports); neither added when the lines name it."""
    out = [_relax_old_pytest(line) for line in dict.fromkeys(lines)]
    names = set()
    for line in out:
        with contextlib.suppress(InvalidRequirement):
            names.add(Requirement(line).name.lower())
    for tool in ("pytest", "pytest-timeout"):
        if tool not in names:
            out.append(tool)
    return tuple(out)


OLDEST_PYTEST = "4.6"
"""The oldest pytest validation drives (``--rootdir``, ``-o junit_family``, JUnit node ids)."""


def _relax_old_pytest(line: str) -> str:
    """A pin of pytest older than ``OLDEST_PYTEST`` (``pytest==3.0.7`` in a 2017 requirements
    file) becomes ``pytest>=4.6``: such a pytest neither runs on the Pythons available here nor
    takes the flags validation needs, and test semantics are stable across these versions."""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line
    if pj._norm(req.name) != "pytest" or req.marker is not None:
        return line
    pins = [s.version for s in req.specifier if s.operator in ("==", "<", "<=", "~=")]
    with contextlib.suppress(InvalidVersion):
        if pins and min(Version(v.rstrip(".*")) for v in pins) < Version(OLDEST_PYTEST):
            return f"pytest>={OLDEST_PYTEST}"
    return line


def conflicting_pins(lines: Iterable[str]) -> list[str]:
    """Packages pinned (``==``) to two different versions: no resolver can satisfy such lines,
    so their rung is not worth a build."""
    pins: dict[str, set[str]] = {}
    for line in lines:
        with contextlib.suppress(InvalidRequirement):
            req = Requirement(line)
            for spec in req.specifier:
                if spec.operator == "==" and not req.marker:
                    pins.setdefault(pj._norm(req.name), set()).add(spec.version)
    return sorted(name for name, versions in pins.items() if len(versions) > 1)


def _pinned(lines: Iterable[str]) -> bool:
    return any("==" in line for line in lines)


def install_ladder(files: Mapping[str, str]) -> list[Rung]:
    """Every applicable rung, in the order they are tried (before per-repo memory reorders it).

    Each requirement file is a rung of its own, test files first: merging files written for
    different purposes pins one package to two versions. ``everything`` merges only unpinned
    sources, for the same reason.
    """
    p = pj.project_metadata(files)
    own = list(p.dependencies)
    if p.dependencies_dynamic or not p.installable:
        own += [x for x in base_requirements(files) if not _self_reference(x, p.name)]
    rungs: list[Rung] = []
    test_extras = tuple(e for e in p.extras if e.lower() in TEST_EXTRAS)
    dev_extras = tuple(e for e in p.extras if e.lower() in DEV_EXTRAS)

    def extra_lines(names: Iterable[str]) -> list[str]:
        lines: list[str] = []
        for n in names:
            lines += [x for x in p.extras.get(n, ()) if not _self_reference(x, p.name)]
        return pj._valid_requirements(lines)

    def file_rungs(role: str) -> list[Rung]:
        out = []
        for path in requirement_files(files, role):
            lines = [x for x in flatten_requirements(path, files) if not _self_reference(x, p.name)]
            if lines and not conflicting_pins(own + lines):
                out.append(Rung(f"requirements:{path}", _with_pytest(own + lines)))
        return out

    if test_extras:
        rungs.append(Rung("extras-test", _with_pytest(own + extra_lines(test_extras)), test_extras))
    group_names = [g for g in p.groups if g.lower() in TEST_EXTRAS + DEV_EXTRAS]
    group_lines = pj._valid_requirements(x for g in group_names for x in p.groups[g])
    if group_names:
        rungs.append(Rung("dependency-groups", _with_pytest(own + group_lines)))
    rungs += file_rungs("test")
    tox = tox_deps(files)
    if tox:
        rungs.append(Rung("tox-deps", _with_pytest(own + tox)))
    if dev_extras:
        rungs.append(Rung("extras-dev", _with_pytest(own + extra_lines(dev_extras)), dev_extras))
    rungs += file_rungs("ci") + file_rungs("dev")
    loose = [
        x for f in (*requirement_files(files, "test"), *requirement_files(files, "dev"))
        if not _pinned(flatten_requirements(f, files)) for x in flatten_requirements(f, files)
    ]  # fmt: skip
    if len(rungs) > 1:
        everything = own + extra_lines(test_extras + dev_extras) + group_lines + loose + tox
        everything = [x for x in everything if not _self_reference(x, p.name)]
        rungs.append(Rung("everything", _with_pytest(everything), test_extras + dev_extras))
    rungs.append(Rung("plain", _with_pytest(own)))
    return _distinct(rungs)


def _distinct(rungs: Sequence[Rung]) -> list[Rung]:
    """Rungs with the same lines and extras build the same images: keep the first."""
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    out = []
    for r in rungs:
        key = (tuple(sorted(r.requirements)), r.extras)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _self_reference(line: str, name: str | None) -> bool:
    """``mypkg[test]`` inside mypkg's own extras: installed via extras, not the env layer."""
    try:
        return bool(name) and pj._norm(Requirement(line).name) == pj._norm(str(name))
    except InvalidRequirement:
        return False


def order_ladder(rungs: Sequence[Rung], remembered: str | None) -> list[Rung]:
    """The remembered rung of this repository first, the rest in ladder order."""
    first = [r for r in rungs if r.name == remembered]
    return first + [r for r in rungs if r.name != remembered]


# --------------------------------------------------------------------------- checks


def collectable_test_files(test_files: Iterable[str]) -> list[str]:
    """Touched test modules pytest can collect (conftest and data files are not modules)."""
    out = []
    for path in test_files:
        stem = path.rsplit("/", 1)[-1]
        if stem.endswith(".py") and (stem.startswith("test_") or stem.endswith("_test.py")):
            out.append(path)
    return sorted(set(out))


def scm_environment(project: pj.Project, version: str = "0.0.0") -> dict[str, str]:
    """Variables that let git-versioned projects install from a snapshot with no tags."""
    if not project.uses_scm_version:
        return {}
    env = {
        "SETUPTOOLS_SCM_PRETEND_VERSION": version,  # setuptools-scm and hatch-vcs
        "PBR_VERSION": version,
        "POETRY_DYNAMIC_VERSIONING_BYPASS": version,
        "VERSIONINGIT_VERSION": version,  # harmless where unused
    }
    if project.name:
        suffix = re.sub(r"[-.]", "_", pj._norm(project.name)).upper()
        env[f"SETUPTOOLS_SCM_PRETEND_VERSION_FOR_{suffix}"] = version
    return env


def version_from_tag(tag: str | None) -> str | None:
    """The PEP 440 version a release tag names (``v2.3.1``, ``pluggy-1.0.0``, ``release-4.2``),
    or None. Git-versioned projects get it instead of a made-up ``0.0.0``, which a project
    checking its own version (``pytest>=2`` in its plugins) refuses."""
    if not tag:
        return None
    m = re.search(r"(\d+(?:\.\d+)+(?:[.-]?(?:a|b|rc|post|dev)\.?\d+)*)$", tag.strip())
    m = m or re.search(r"(\d+(?:\.\d+)+)", tag)  # 2.0.0-beta.1: its release part
    if not m:
        return None
    try:
        return str(Version(m.group(1)))
    except InvalidVersion:
        return None
