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
from packaging.version import InvalidVersion, Version

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

# What a back end's ``get_requires_for_build_editable`` adds to its build requirements: the env
# layer installs without build isolation, so these must be there ("No module named 'editables'"
# from hatchling: tox-dev/filelock).
EDITABLE_REQUIRES: dict[str, tuple[str, ...]] = {
    "hatchling.build": ("editables",),
    "pdm.pep517.api": ("editables",),
}
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
    """Keyword arguments of the ``setup(...)`` call that evaluate statically.

    Module-level names (``extras_require=EXTRAS_REQUIRE``, ``install_requires=deps + ["x"]``,
    ``setup(**kwargs)``) are resolved from the assignments before the call; anything computed
    at run time (file reads, function calls) is skipped, never executed.
    """
    if not text:
        return {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    names = _module_names(tree)
    out: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", ""))\
                in ("setup", "setuptools.setup"):  # fmt: skip
            for kw in node.keywords:
                value = _static_value(kw.value, names)
                if kw.arg:
                    if value is not _UNKNOWN:
                        out[kw.arg] = value
                elif isinstance(value, dict):  # setup(**kwargs)
                    out.update({str(k): v for k, v in value.items()})
    return out


_UNKNOWN = object()


def _module_names(tree: ast.Module) -> dict[str, object]:
    """Values of the names a setup.py assigns statically, in source order (top level and inside
    ``if``/``try`` blocks, later assignments winning as they would when run)."""
    names: dict[str, object] = {}

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                value = _static_value(stmt.value, names)
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = value
                    elif (
                        isinstance(target, ast.Subscript)  # EXTRAS["test"] = [...]
                        and isinstance(target.value, ast.Name)
                        and isinstance(names.get(target.value.id), dict)
                    ):
                        key = _static_value(target.slice, names)
                        if key is not _UNKNOWN and value is not _UNKNOWN:
                            names[target.value.id][key] = value  # type: ignore[index]
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if stmt.value is not None:
                    names[stmt.target.id] = _static_value(stmt.value, names)
            elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                names[stmt.target.id] = _combine(
                    names.get(stmt.target.id, _UNKNOWN), _static_value(stmt.value, names)
                )
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                _mutate(stmt.value, names)  # DEPS.append("x") / EXTRAS.update(...)
            elif isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)

    visit(tree.body)
    return names


def _mutate(call: ast.Call, names: dict[str, object]) -> None:
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return
    target = names.get(func.value.id)
    args = [_static_value(a, names) for a in call.args]
    if _UNKNOWN in args:
        return
    if isinstance(target, list) and func.attr in ("append", "extend") and len(args) == 1:
        target.append(args[0]) if func.attr == "append" else target.extend(args[0])  # type: ignore[arg-type]
    elif (
        isinstance(target, dict) and func.attr == "update" and len(args) == 1
        and isinstance(args[0], dict)
    ):  # fmt: skip
        target.update(args[0])


def _combine(left: object, right: object) -> object:
    """``left + right`` for the static values setup.py files concatenate (lists, strings)."""
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return [*left, *right]
    if isinstance(left, str) and isinstance(right, str):
        return left + right
    if isinstance(left, dict) and isinstance(right, dict):
        return {**left, **right}
    return _UNKNOWN


def _static_value(node: ast.expr, names: Mapping[str, object]) -> object:
    """The value of a literal expression, with names looked up in ``names``; ``_UNKNOWN`` for
    anything that would need running code."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = names.get(node.id, _UNKNOWN)
        return _copy(value)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items: list[object] = []
        for elt in node.elts:
            if isinstance(elt, ast.Starred):
                inner = _static_value(elt.value, names)
                if not isinstance(inner, list | tuple):
                    return _UNKNOWN
                items.extend(inner)
                continue
            value = _static_value(elt, names)
            if value is _UNKNOWN:
                return _UNKNOWN
            items.append(value)
        return items
    if isinstance(node, ast.Dict):
        out: dict[object, object] = {}
        for k, v in zip(node.keys, node.values, strict=True):
            value = _static_value(v, names)
            if k is None:  # {**OTHER}
                if not isinstance(value, dict):
                    return _UNKNOWN
                out.update(value)
                continue
            key = _static_value(k, names)
            if key is _UNKNOWN or value is _UNKNOWN:
                return _UNKNOWN
            out[key] = value
        return out
    if isinstance(node, ast.Subscript):  # EXTRAS["tests"]
        container, key = _static_value(node.value, names), _static_value(node.slice, names)
        if isinstance(container, dict) and key in container:
            return container[key]  # type: ignore[index]
        return _UNKNOWN
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.BitOr):
        return _combine(_static_value(node.left, names), _static_value(node.right, names))
    if (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
        and node.func.id == "dict"
    ):  # fmt: skip  # dict(test=[...], docs=[...])
        kwargs: dict[object, object] = {}
        for kw in node.keywords:
            value = _static_value(kw.value, names)
            if value is _UNKNOWN:
                return _UNKNOWN
            if kw.arg is None:
                if not isinstance(value, dict):
                    return _UNKNOWN
                kwargs.update(value)
            else:
                kwargs[kw.arg] = value
        return kwargs
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("list", "tuple", "sorted", "set")
        and len(node.args) == 1
        and not node.keywords
    ):
        inner = _static_value(node.args[0], names)
        return list(inner) if isinstance(inner, list | tuple) else _UNKNOWN
    return _UNKNOWN


def _copy(value: object) -> object:
    """A container copy, so mutating a name's value later never changes an earlier use."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


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
    build_backend: str = "setuptools.build_meta:__legacy__"

    @property
    def setuptools_backend(self) -> bool:
        """Whether ``setup.py develop`` is a way to install it (never for hatchling & co.)."""
        return self.build_backend.startswith("setuptools.")


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
    backend = str(build.get("build-backend") or "setuptools.build_meta:__legacy__")
    build_requires += [x for x in EDITABLE_REQUIRES.get(backend, ()) if x not in build_requires]
    return Project(
        build_backend=backend,
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
    if _norm(req.name) != "pytest" or req.marker is not None:
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
                    pins.setdefault(_norm(req.name), set()).add(spec.version)
    return sorted(name for name, versions in pins.items() if len(versions) > 1)


def _pinned(lines: Iterable[str]) -> bool:
    return any("==" in line for line in lines)


def install_ladder(files: Mapping[str, str]) -> list[Rung]:
    """Every applicable rung, in the order they are tried (before per-repo memory reorders it).

    Each requirement file is a rung of its own, test files first: merging files written for
    different purposes pins one package to two versions. ``everything`` merges only unpinned
    sources, for the same reason.
    """
    p = project_metadata(files)
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
        return _valid_requirements(lines)

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
    group_lines = _valid_requirements(x for g in group_names for x in p.groups[g])
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


NATIVE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".pyx", ".pxd")
NATIVE_BACKENDS = ("mesonpy", "scikit_build_core", "setuptools_rust", "maturin", "cmake")


def builds_native_code(files: Mapping[str, str], paths: Iterable[str]) -> bool:
    """Whether the project compiles an extension of its own. An optional one (markupsafe's
    speedups) builds quietly without a compiler and its tests then skip or fail on both
    sides, so such a project gets the compiler from its first build."""
    setup = files.get("setup.py", "")
    backend = str(_toml(files).get("build-system", {}).get("build-backend", ""))
    declared = "Extension(" in setup or "ext_modules" in setup or "cythonize" in setup
    declared = declared or any(b in backend for b in NATIVE_BACKENDS)
    if not declared:
        return False
    return any(
        p.endswith(NATIVE_SUFFIXES) and p.split("/", 1)[0] not in NOT_PACKAGES for p in paths
    ) or any(b in backend for b in NATIVE_BACKENDS)
