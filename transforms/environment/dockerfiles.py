"""Pure rendering of the environment stage's Dockerfiles and the scripts they run.

Everything here is a pure function of its arguments (no Docker, no git), so the builder
(``builder``) and the tests share one source of truth for what goes into an image.

Deliberate choices:
- Rendered Dockerfiles inline every requirement line, so a task can be rebuilt from its record
  alone (plus the snapshot and the uv binary); ``frozen_requirements`` pins what was installed.
- Secrets never enter the rendered text: the index URL (which may carry credentials) is a build
  argument the builder passes, not Dockerfile text. The CA bundle is public material and is
  copied into the env layer so that builds verify TLS behind an intercepting proxy.
- Resolver cutoffs (``uv --exclude-newer``): the env layer's is the PR date rounded down to a
  day bucket (so neighbouring PRs share it), the instance layer's the exact PR date, and
  neither is earlier than the PR's Python had been usable (``resolver_cutoff``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from string import Template

from packaging.requirements import InvalidRequirement, Requirement

from smelter.schemas import Candidate
from smelter.transforms.dates import parse_utc, utc_iso
from smelter.transforms.environment import project as pj
from smelter.transforms.environment import pyversion as pyv
from smelter.transforms.environment import recipe as rc

WORKDIR = "/testbed"
TEST_USER = "smelter"


# --------------------------------------------------------------------------- resolver cutoffs


def env_cutoff(created_at: str, bucket_days: int) -> str:
    """The env layer's resolver cutoff: the PR's UTC date rounded down to a day bucket."""
    when = parse_utc(created_at)
    days = (when.date() - dt.date(1970, 1, 1)).days
    start = dt.date(1970, 1, 1) + dt.timedelta(days=days - days % max(1, bucket_days))
    return start.isoformat()


def instance_cutoff(created_at: str) -> str:
    """The instance layer's cutoff: the PR's own timestamp, RFC 3339 UTC."""
    return utc_iso(created_at)


def resolve_date(c: Candidate) -> str:
    """Dependencies resolve as of the merge: a PR branched long before it landed was made to
    work against what existed when it was merged, not when its first commit was written."""
    return c.merged_at or c.created_at


def resolver_cutoff(when: str, python: str) -> str:
    """The resolver's date for a PR on ``python``: the PR's date, but never before that Python
    had been out for ``pyversion.ADOPTION_LAG``. Packages from before an interpreter existed
    often break on it (setuptools of 2019 calls ``HTMLParser().unescape``, gone in 3.9; pytest
    of 2021 fails on 3.11's ``__spec__``), and no older interpreter can be had here, so an old
    PR resolves as of the earliest date its interpreter was usable."""
    floor = dt.datetime.combine(
        pyv.release_date(python) + pyv.ADOPTION_LAG, dt.time(), tzinfo=dt.UTC
    )
    return max(parse_utc(when), floor).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- Dockerfiles


def slug(text: str, limit: int = 60) -> str:
    """A Docker-repository-safe rendering of a repo or instance id."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "x"


def uv_flags(cutoff: str | None) -> str:
    return f"--exclude-newer {cutoff}" if cutoff else ""


def _template(name: str) -> Template:
    return Template(resources.files("smelter.dockerfiles").joinpath(name).read_text())


COMPILER_PACKAGES: tuple[str, ...] = ("gcc", "g++", "make", "libc6-dev", "python3-dev")
"""Debian packages of the compiler rung: enough to build a C extension for the suite's own
python3 (``python3-dev`` matches the base image's interpreter in every suite)."""


def render_env_dockerfile(
    *, repo: str, recipe: str, base_image: str, requirements: Sequence[str],
    cutoff: str | None, with_ca: bool, system_packages: Sequence[str] = (),
) -> str:  # fmt: skip
    ca_setup = (
        "COPY extra-ca.crt /usr/local/share/smelter/extra-ca.crt\n"
        "RUN cat /usr/local/share/smelter/extra-ca.crt >> /etc/ssl/certs/ca-certificates.crt\n"
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        if with_ca
        else "# (no extra CA bundle)"
    )
    system_setup = (
        "RUN apt-get update \\\n"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(shlex.quote(p) for p in system_packages)
        + " \\\n && rm -rf /var/lib/apt/lists/*"
        if system_packages
        else "# (no system packages)"
    )
    return _template("env.Dockerfile").substitute(
        repo=repo, recipe=recipe, base_image=base_image, ca_setup=ca_setup,
        exclude_newer_note=cutoff or "the build date (no cutoff)", uv_flags=uv_flags(cutoff),
        requirements=" ".join(shlex.quote(r) for r in requirements), system_setup=system_setup,
    )  # fmt: skip


INSTALL_MODE_FILE = "/opt/smelter/install-mode"
INSTALL_LOG_FILE = "/opt/smelter/install.log"
PR_METADATA_FILE = "/opt/smelter/pr-metadata.txt"
REBUILD_FILE = "/opt/smelter/rebuild.sh"  # validation runs it after the patches, when present
INSTALL_MODES = ("editable", "editable-pip", "legacy-develop", "none", "failed")
# Modes that install without dependencies: the project's metadata says what is missing.
UNCHECKED_MODES = ("editable-pip", "legacy-develop")
# Prints the METADATA of the wheel ``uv build`` wrote (its Requires-Dist lines are what the
# project asks for, computed by its own back end, offline).
_READ_METADATA = (
    "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/smelter-wheel/*.whl')[0]); "
    "print(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())"
)


def install_script(
    *, installable: bool, extras: Sequence[str], cutoff: str | None,
    install_env: Mapping[str, str], has_setup_py: bool, legacy_develop: bool = True,
    rebuild: bool = False,
) -> str:  # fmt: skip
    """The instance layer's install, as one shell command run offline as the test user: the
    first way that works wins and names itself in ``INSTALL_MODE_FILE``.

    1. editable, no build isolation: the env layer holds the build requirements and the
       dependencies, so nothing is downloaded (``--offline`` makes a missing one fail at once);
    2. ``setup.py develop`` (setuptools back ends only): setuptools older than 64 (what an old
       PR's date resolves to) has no PEP 660 hook ("has no attribute 'build_editable'"), but
       has always had ``develop``, which links the source tree into the venv just the same;
    3. pip's editable install, where uv is stricter than the back end (see below);
    4. otherwise ``failed``, and the project's metadata as its own back end computes it (a
       wheel built offline), so the missing dependency lines can go into a new env layer.
    """
    if not installable:
        return f"echo none > {INSTALL_MODE_FILE}"  # the source runs from PYTHONPATH
    target = "." + (f"[{','.join(extras)}]" if extras else "")
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(install_env.items()))
    cmd = (
        f"{prefix}uv pip install --offline --no-build-isolation {uv_flags(cutoff)} "
        f"-e {shlex.quote(target)}"
    ).replace("  ", " ")
    setup = "setup.py" if has_setup_py else "-c 'import setuptools; setuptools.setup()'"
    legacy = f"{prefix}python {setup} develop --no-deps"
    probe = (
        f"{{ {prefix}uv build --offline --no-build-isolation --wheel -o /tmp/smelter-wheel . "
        f"|| {prefix}python -m pip wheel --no-index --no-build-isolation --no-deps "
        f"-w /tmp/smelter-wheel . ; }} "
        f"&& python -c {shlex.quote(_READ_METADATA)} > {PR_METADATA_FILE}"
    )
    # pip where uv is stricter than the back end (uv refuses a pre-PEP 621 ``[project]`` table
    # such as old pdm's ``version = {from = ...}``); ``--no-deps``, so checked like develop.
    pip = (
        f"{prefix}python -m pip install --no-index --no-build-isolation --no-deps "
        f"-e {shlex.quote(target)}"
    )
    # ``develop --no-deps`` succeeds whatever is missing, so its dependencies are checked
    # against the metadata as well (``probe`` after it). Only setuptools has ``develop``: for
    # other back ends it would run setuptools on their pyproject.toml and bury their own error.
    develop = (
        f" || {{ {legacy} && echo legacy-develop > {INSTALL_MODE_FILE}"
        f" && {{ {probe} || true; }}; }} \\\n"
        if legacy_develop
        else ""
    )
    chain = (
        f"{{ {cmd} && echo editable > {INSTALL_MODE_FILE}; }} \\\n{develop}"
        f" || {{ {pip} && echo editable-pip > {INSTALL_MODE_FILE} && {{ {probe} || true; }}; }}"
        f" \\\n || {{ echo failed > {INSTALL_MODE_FILE}; {probe} || true; }}"
    )
    if not rebuild:
        return chain
    # A compiled extension is built at install time: a fix to its C source reaches the tests
    # only if validation builds it again after applying the patch (offline, as the test user).
    again = " || ".join([cmd, *([legacy] if legacy_develop else []), pip])
    return f"{chain}; \\\n echo {shlex.quote(again)} > {REBUILD_FILE}"


def missing_requirements(
    metadata: str, installed: Iterable[str], extras: Sequence[str], python: str
) -> list[str]:
    """``Requires-Dist`` lines of ``metadata`` (for ``extras`` and ``python`` on Linux) whose
    package is not among ``installed`` names: what a new env layer must add."""
    have = {pj._norm(n) for n in installed}
    env = {
        "python_version": python, "python_full_version": f"{python}.0", "os_name": "posix",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
    }  # fmt: skip
    out: list[str] = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.removeprefix("Requires-Dist:").strip())
        except InvalidRequirement:
            continue
        wanted = req.marker is None or any(
            req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)
        )
        if wanted and pj._norm(req.name) not in have:
            req.marker = None
            out.append(str(req))
    return list(dict.fromkeys(out))


def frozen_names(frozen: str) -> list[str]:
    """Package names of ``uv pip freeze`` output (``name==v``, ``name @ url``, ``-e ...``)."""
    names = []
    for line in frozen.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==|@)", line.strip())
        if m:
            names.append(m.group(1))
    return names


def render_instance_dockerfile(
    *, repo: str, instance_id: str, base_commit: str, env_image: str, installable: bool,
    extras: Sequence[str], cutoff: str | None, install_env: Mapping[str, str],
    source_paths: Sequence[str] = (), has_setup_py: bool = False, legacy_develop: bool = True,
    rebuild: bool = False,
) -> str:  # fmt: skip
    install = install_script(
        installable=installable, extras=extras, cutoff=cutoff, install_env=install_env,
        has_setup_py=has_setup_py, legacy_develop=legacy_develop, rebuild=rebuild,
    )  # fmt: skip
    source_env = (
        f"ENV PYTHONPATH={':'.join(source_paths)}"
        if source_paths
        else "# (installed into the venv; no PYTHONPATH needed)"
    )
    return _template("instance.Dockerfile").substitute(
        repo=repo, instance_id=instance_id, base_commit=base_commit, env_image=env_image,
        source_env=source_env, install=install,
    )  # fmt: skip


def env_requirements(rung: rc.Rung, project: pj.Project) -> list[str]:
    """The env layer's lines: the rung's, plus the build requirements not already named, plus
    pip: a uv venv has none, and setuptools' own ``develop`` (since 80) and many setup.py
    scripts shell out to ``python -m pip``."""
    lines = list(rung.requirements)
    for req in project.build_requires:
        if req not in lines:
            lines.append(req)
    named = set()
    for line in lines:
        with contextlib.suppress(InvalidRequirement):
            named.add(pj._norm(Requirement(line).name))
    if "pip" not in named:
        lines.append("pip")
    return lines


def pythonpath(paths: Iterable[str]) -> list[str]:
    """``PYTHONPATH`` of a project that is not installed: the tree, after its ``src`` if any."""
    has_src = any(p.startswith("src/") for p in paths)
    return [f"{WORKDIR}/src", WORKDIR] if has_src else [WORKDIR]


def logical_lines(dockerfile: str) -> list[str]:
    """Dockerfile instructions with backslash continuations joined."""
    out: list[str] = []
    buf = ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].rstrip() + " "
            continue
        out.append((buf + line.strip()).strip())
        buf = ""
    return [o for o in out if o]
