"""Recipe inference: from a snapshot's files to a Python version, install ladder, test command.

Everything here is pure: functions take ``{path: text}`` of the files that matter (see
``RECIPE_FILES`` / ``wanted``) and the list of all paths, and return plain values, so the logic is
unit-tested on file contents without git or Docker.

Deliberate choices:
- The Python version is the one the project *says* it supports (classifiers, tox envlist, CI
  matrix), limited by ``requires-python`` and by the base images we have; with no hints, the
  newest allowed. Old projects get the oldest available base at or above their newest hint.
- The install ladder is a list of named rungs, cheapest-that-usually-works first: the package with
  its test extras, PEP 735 dependency groups, requirements-test/dev files, tox deps, the dev extra,
  everything together, the plain package + pytest. Each rung is a static list of requirement
  lines for the env layer (shared by every PR whose lines match) plus the extras the instance
  layer installs the package with, so a rung that resolves once resolves identically later.
- Requirement files are flattened here (``-r`` inlined, ``-e .``/local paths dropped): the env
  layer never sees the source, only dependency lines, so its hash is exactly what it installs.
- Projects versioned from git (setuptools-scm, hatch-vcs, versioneer, pbr, dynamic-versioning)
  are flagged so the instance layer sets a pretend version instead of needing tags.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

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
TEST_REQUIREMENT_NAMES = re.compile(
    r"(^|/)(requirements[-_.]?(test|tests|testing|dev|develop|ci)[^/]*|"
    r"(test|tests|testing|dev)[-_]?requirements[^/]*|requirements/(test|tests|testing|dev|ci)[^/]*)"
    r"\.(txt|in)$"
)
SCM_MARKERS = (
    "setuptools_scm",
    "setuptools-scm",
    "hatch-vcs",
    "hatch_vcs",
    "versioningit",
    "versioneer",
    "pbr",
    "poetry-dynamic-versioning",
    "dunamai",
)
NOT_PACKAGES = {
    "tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "bench",
    "scripts", "tools", "build", "dist", "site", "ci", "bin", "notebooks",
}  # fmt: skip

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


# --------------------------------------------------------------------------- parsing helpers


def _toml(files: Mapping[str, str]) -> dict:
    text = files.get("pyproject.toml")
    if not text:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _ini(text: str | None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    if text:
        with contextlib.suppress(configparser.Error):  # malformed counts as absent, no crash
            parser.read_string(text)
    return parser


def _ini_list(value: str) -> list[str]:
    """setup.cfg / tox.ini multi-line values, comments and blank lines dropped."""
    out = []
    for line in value.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _setup_py_kwargs(text: str | None) -> dict[str, object]:
    """Literal keyword arguments of the ``setup(...)`` call; non-literal ones are skipped."""
    if not text:
        return {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    out: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", ""))\
                in ("setup", "setuptools.setup"):  # fmt: skip
            for kw in node.keywords:
                if kw.arg:
                    with contextlib.suppress(ValueError, SyntaxError, TypeError):
                        out[kw.arg] = ast.literal_eval(kw.value)
    return out


def _valid_requirements(lines: Iterable[str]) -> list[str]:
    out = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            Requirement(line)
        except InvalidRequirement:
            continue
        out.append(line)
    return out


# --------------------------------------------------------------------------- project metadata


@dataclass(frozen=True)
class Project:
    """What the packaging metadata says, statically."""

    name: str | None
    installable: bool
    requires_python: str | None
    dependencies: tuple[str, ...]
    dependencies_dynamic: bool
    extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    classifier_versions: tuple[str, ...] = ()
    uses_scm_version: bool = False
    build_requires: tuple[str, ...] = ()  # PEP 517 build requirements (setuptools if legacy)


def project_metadata(files: Mapping[str, str]) -> Project:
    data = _toml(files)
    proj = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
    cfg = _ini(files.get("setup.cfg"))
    setup_kw = _setup_py_kwargs(files.get("setup.py"))
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}

    name = proj.get("name") or (cfg.get("metadata", "name", fallback=None)) or setup_kw.get("name")
    name = name or poetry.get("name")
    requires_python = (
        proj.get("requires-python")
        or cfg.get("options", "python_requires", fallback=None)
        or (setup_kw.get("python_requires") if isinstance(setup_kw.get("python_requires"), str)
            else None)
    )  # fmt: skip
    if requires_python is None and isinstance(poetry.get("dependencies", {}).get("python"), str):
        requires_python = _poetry_python(poetry["dependencies"]["python"])

    deps: list[str] = []
    dynamic = False
    extras: dict[str, tuple[str, ...]] = {}
    if "dependencies" in proj:
        deps = list(proj.get("dependencies") or [])
    elif "dependencies" in (proj.get("dynamic") or []):
        dynamic = True
    elif cfg.has_option("options", "install_requires"):
        deps = _ini_list(cfg.get("options", "install_requires"))
    elif "install_requires" in setup_kw and isinstance(setup_kw["install_requires"], list | tuple):
        deps = [str(d) for d in setup_kw["install_requires"]]  # type: ignore[union-attr]
    elif files.get("setup.py") and "install_requires" in files["setup.py"]:
        dynamic = True  # computed in setup.py: the instance install picks them up
    for key, value in (proj.get("optional-dependencies") or {}).items():
        extras[key] = tuple(value)
    if cfg.has_section("options.extras_require"):
        for key, value in cfg.items("options.extras_require"):
            extras.setdefault(key, tuple(_ini_list(value)))
    setup_extras = setup_kw.get("extras_require")
    if isinstance(setup_extras, dict):
        for key, value in setup_extras.items():
            if isinstance(value, list | tuple):
                extras.setdefault(str(key), tuple(str(v) for v in value))
    groups = _dependency_groups(data)

    classifiers = list(proj.get("classifiers") or [])
    classifiers += _ini_list(cfg.get("metadata", "classifiers", fallback=""))
    setup_classifiers = setup_kw.get("classifiers")
    if isinstance(setup_classifiers, list | tuple):
        classifiers += [str(c) for c in setup_classifiers]
    versions = sorted(
        {m.group(1) for c in classifiers if (m := re.search(r"Python :: (3\.\d+)\s*$", c))},
        key=_vkey,
    )
    blob = "\n".join(files.get(p, "") for p in ("pyproject.toml", "setup.cfg", "setup.py"))
    scm = any(marker in blob for marker in SCM_MARKERS)
    installable = bool(
        files.get("setup.py") or ("build-system" in data or proj) or cfg.has_section("metadata")
    )
    build = data.get("build-system", {}) if isinstance(data.get("build-system"), dict) else {}
    if "requires" in build:
        build_requires = _valid_requirements(str(x) for x in build.get("requires") or [])
    else:  # PEP 517's fallback for projects without a build-system table
        build_requires = ["setuptools>=40.8.0", "wheel"] if installable else []
    return Project(
        build_requires=tuple(build_requires),
        name=str(name) if name else None, installable=installable,
        requires_python=str(requires_python) if requires_python else None,
        dependencies=tuple(_valid_requirements(deps)), dependencies_dynamic=dynamic,
        extras=extras, groups=groups, classifier_versions=tuple(versions), uses_scm_version=scm,
    )  # fmt: skip


def _poetry_python(spec: str) -> str | None:
    """Poetry's ``^3.8`` / ``~3.9`` as a PEP 440 specifier (enough for version choice)."""
    spec = spec.strip()
    if m := re.fullmatch(r"\^(\d+)\.(\d+)(?:\.\d+)?", spec):
        return f">={m.group(1)}.{m.group(2)},<{int(m.group(1)) + 1}"
    if m := re.fullmatch(r"~(\d+)\.(\d+)(?:\.\d+)?", spec):
        return f">={m.group(1)}.{m.group(2)},<{m.group(1)}.{int(m.group(2)) + 1}"
    try:
        SpecifierSet(spec)
        return spec
    except InvalidSpecifier:
        return None


def _dependency_groups(data: dict) -> dict[str, tuple[str, ...]]:
    """PEP 735 groups with ``include-group`` resolved."""
    raw = data.get("dependency-groups") or {}
    if not isinstance(raw, dict):
        return {}

    def resolve(name: str, seen: frozenset[str]) -> list[str]:
        out: list[str] = []
        for item in raw.get(name, []):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and item.get("include-group") not in seen:
                inc = str(item.get("include-group"))
                out += resolve(inc, seen | {inc})
        return out

    return {name: tuple(resolve(name, frozenset({name}))) for name in raw}


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


# --------------------------------------------------------------------------- python version


def python_hints(files: Mapping[str, str]) -> list[str]:
    """Python versions the project names (classifiers, tox envlist, CI matrix, .python-version)."""
    found = set(project_metadata(files).classifier_versions)
    tox = _ini(files.get("tox.ini"))
    envlist = tox.get("tox", "envlist", fallback="") or ""
    for token in re.findall(r"py(3)\.?(\d{1,2})", envlist):
        found.add(f"{token[0]}.{token[1]}")
    for m in re.finditer(r"\{([^}]*)\}", envlist):  # py3{9,10,11}
        if re.search(r"py3\{", envlist[max(0, m.start() - 3) : m.start() + 1]):
            found.update(f"3.{x.strip()}" for x in m.group(1).split(",") if x.strip().isdigit())
    for path, text in files.items():
        if path.startswith(".github/workflows/"):
            found.update(_workflow_versions(text))
    if (pv := files.get(".python-version")) and (pinned := re.match(r"\s*(3\.\d+)", pv)):
        found.add(pinned.group(1))
    return sorted((v for v in found if re.fullmatch(r"3\.\d+", v)), key=_vkey)


def _workflow_versions(text: str) -> set[str]:
    """Versions under ``python-version``/``python`` keys, inline lists and block lists alike."""
    found: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)-?\s*(python-version|python_version|python)\s*:(.*)$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(3)
        found.update(re.findall(r"(?<![\d.])(3\.\d{1,2})(?![\d])", rest))
        if rest.strip() == "":
            for follow in lines[i + 1 :]:
                fm = re.match(r"^(\s*)-\s*(.*)$", follow)
                if not fm or len(fm.group(1)) < indent:
                    break
                found.update(re.findall(r"(?<![\d.])(3\.\d{1,2})(?![\d])", fm.group(2)))
    return found


def allows(requires_python: str | None, version: str) -> bool:
    """Whether ``requires-python`` admits ``X.Y`` (any patch release of it)."""
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True  # unparseable: let the build decide
    return any(spec.contains(f"{version}.{patch}", prereleases=True) for patch in (0, 2, 99))


def choose_python(files: Mapping[str, str], available: Sequence[str]) -> str | None:
    """The base Python for this snapshot, or None when no available version is allowed."""
    project = project_metadata(files)
    allowed = sorted((v for v in available if allows(project.requires_python, v)), key=_vkey)
    if not allowed:
        return None
    hints = python_hints(files)
    named = [v for v in allowed if v in hints]
    if named:
        return named[-1]
    if hints:
        newest = _vkey(hints[-1])
        above = [v for v in allowed if _vkey(v) >= newest]
        return above[0] if above else allowed[-1]
    return allowed[-1]


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
        out += _valid_requirements([line])
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


def test_requirement_files(files: Mapping[str, str]) -> list[str]:
    return sorted(p for p in files if TEST_REQUIREMENT_NAMES.search(p))


def tox_deps(files: Mapping[str, str]) -> list[str]:
    tox = _ini(files.get("tox.ini"))
    if not tox.has_section("testenv"):
        return []
    out: list[str] = []
    for line in _ini_list(tox.get("testenv", "deps", fallback="")):
        line = re.sub(r"^[\w,{}.-]+:\s*", "", line) if re.match(r"^[\w,{}.-]+:\s", line) else line
        if m := re.match(r"^-r\s*\{toxinidir\}/(\S+)", line):
            out += flatten_requirements(m.group(1), files)
        elif not line.startswith("-"):
            out += _valid_requirements([line])
    return out


# --------------------------------------------------------------------------- the ladder


@dataclass(frozen=True)
class Rung:
    """One way to install the project: env-layer requirement lines + instance-layer extras."""

    name: str
    requirements: tuple[str, ...]  # installed in the env layer, besides the project's own deps
    extras: tuple[str, ...] = ()  # the project is installed as `-e .[extras]`


def _with_pytest(lines: Iterable[str]) -> tuple[str, ...]:
    out = list(dict.fromkeys(lines))
    names = set()
    for line in out:
        with contextlib.suppress(InvalidRequirement):
            names.add(Requirement(line).name.lower())
    if "pytest" not in names:
        out.append("pytest")
    return tuple(out)


def install_ladder(files: Mapping[str, str]) -> list[Rung]:
    """Every applicable rung, in the order they are tried (before per-repo memory reorders it)."""
    p = project_metadata(files)
    own = list(p.dependencies)
    rungs: list[Rung] = []
    test_extras = tuple(e for e in p.extras if e.lower() in TEST_EXTRAS)
    dev_extras = tuple(e for e in p.extras if e.lower() in DEV_EXTRAS)

    def extra_lines(names: Iterable[str]) -> list[str]:
        lines: list[str] = []
        for n in names:
            lines += [x for x in p.extras.get(n, ()) if not _self_reference(x, p.name)]
        return _valid_requirements(lines)

    if test_extras:
        rungs.append(Rung("extras-test", _with_pytest(own + extra_lines(test_extras)), test_extras))
    group_names = [g for g in p.groups if g.lower() in TEST_EXTRAS + DEV_EXTRAS]
    group_lines = _valid_requirements(x for g in group_names for x in p.groups[g])
    if group_names:
        rungs.append(Rung("dependency-groups", _with_pytest(own + group_lines)))
    req_files = test_requirement_files(files)
    req_lines = [x for f in req_files for x in flatten_requirements(f, files)]
    if req_lines:
        rungs.append(Rung("requirements-files", _with_pytest(own + req_lines)))
    tox = tox_deps(files)
    if tox:
        rungs.append(Rung("tox-deps", _with_pytest(own + tox)))
    if dev_extras:
        rungs.append(Rung("extras-dev", _with_pytest(own + extra_lines(dev_extras)), dev_extras))
    if len(rungs) > 1:
        everything = own + extra_lines(test_extras + dev_extras) + group_lines + req_lines + tox
        rungs.append(Rung("everything", _with_pytest(everything), test_extras + dev_extras))
    rungs.append(Rung("plain", _with_pytest(own)))
    return rungs


def _self_reference(line: str, name: str | None) -> bool:
    """``mypkg[test]`` inside mypkg's own extras: installed via extras, not the env layer."""
    try:
        return bool(name) and _norm(Requirement(line).name) == _norm(str(name))
    except InvalidRequirement:
        return False


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def order_ladder(rungs: Sequence[Rung], remembered: str | None) -> list[Rung]:
    """The remembered rung of this repository first, the rest in ladder order."""
    first = [r for r in rungs if r.name == remembered]
    return first + [r for r in rungs if r.name != remembered]


# --------------------------------------------------------------------------- checks


def import_names(paths: Iterable[str], project_name: str | None = None) -> list[str]:
    """Top-level importable packages of the source tree (src layout or flat), best guess first."""
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "src" and parts[2] == "__init__.py":
            found.add(parts[1])
        elif len(parts) == 2 and parts[1] == "__init__.py" and parts[0] not in NOT_PACKAGES:
            found.add(parts[0])
        elif len(parts) == 2 and parts[0] == "src" and parts[1].endswith(".py"):
            found.add(parts[1][:-3])
    found = {f for f in found if f.isidentifier() and not f.startswith(("_", "."))}
    guess = _norm(project_name).replace("-", "_") if project_name else ""
    return sorted(found, key=lambda n: (n != guess, n))


def collectable_test_files(test_files: Iterable[str]) -> list[str]:
    """Touched test modules pytest can collect (conftest and data files are not modules)."""
    out = []
    for path in test_files:
        stem = path.rsplit("/", 1)[-1]
        if stem.endswith(".py") and (stem.startswith("test_") or stem.endswith("_test.py")):
            out.append(path)
    return sorted(set(out))


def scm_environment(project: Project, version: str = "0.0.0") -> dict[str, str]:
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
        suffix = re.sub(r"[-.]", "_", _norm(project.name)).upper()
        env[f"SETUPTOOLS_SCM_PRETEND_VERSION_FOR_{suffix}"] = version
    return env
