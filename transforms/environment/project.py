"""What a snapshot's packaging files say about the project, read statically.

Everything here is pure: functions take ``{path: text}`` of the files that matter (see
``recipe.wanted``) and the list of all paths, and return plain values, so the logic is
unit-tested on file contents without git or Docker. ``recipe`` turns what is found here into
the install ladder.

Deliberate choices:
- Nothing a project ships is executed: ``setup.py`` is read with ``ast``, and only the values
  that evaluate statically (literals, names assigned before the call) count; anything computed
  at run time is left to the instance layer's install.
- The Python version is the one the project *says* it supports (classifiers, tox envlist, CI
  matrix), limited by ``requires-python`` and by the base images we have; with no hints, the
  newest allowed. Old projects get the oldest available base at or above their newest hint.
- Projects versioned from git (setuptools-scm, hatch-vcs, versioneer, pbr, dynamic-versioning)
  are flagged (``Project.uses_scm_version``) so the instance layer sets a pretend version
  instead of needing tags.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

# What a back end's ``get_requires_for_build_editable`` adds to its build requirements: the env
# layer installs without build isolation, so these must be there ("No module named 'editables'"
# from hatchling: tox-dev/filelock).
EDITABLE_REQUIRES: dict[str, tuple[str, ...]] = {
    "hatchling.build": ("editables",),
    "pdm.pep517.api": ("editables",),
}
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


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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


# --------------------------------------------------------------------------- source tree


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
