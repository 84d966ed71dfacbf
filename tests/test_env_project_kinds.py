"""Regression tests for the environment failure classes real repositories showed (issue 11),
each on a small repository built here, through the real environment stage and Docker:

- a flit project: wheels cannot hold files dated 1970 ("ZIP does not support timestamps before
  1980"), which the build context used to give every file;
- a setuptools-scm project that checks its own version at import: it got ``0.0.0`` (and before
  that "dubious ownership" from git), instead of the version of its nearest tag;
- a 2019 setup.py-only project: resolved as of its date, setuptools has no PEP 660 hook
  ("has no attribute 'build_editable'"), so ``setup.py develop`` must take over; it gets the
  Python of its time (3.9, bullseye) and its tests run;
- a project with a C extension: the first build fails for want of gcc, the compiler rung
  builds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
import pytest

from smelter.schemas import Candidate, Rejection
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.environment.builder import EnvironmentFn
from smelter.transforms.environment.config import EnvConfig
from tests._gitutil import Repo

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def make_pr(
    root: Path, name: str, *, base: Mapping[str, str], fix: Mapping[str, str],
    tests: Mapping[str, str], when: str, tag: str | None = None,
) -> Candidate:  # fmt: skip
    """A repository whose base commit holds ``base`` (tagged ``tag``), and a PR = ``fix`` (code)
    + ``tests`` (test files), merged at ``when``."""
    repo = Repo(root)
    sha = repo.commit("base", dict(base))
    if tag:
        repo.git("tag", tag)
    sha = repo.commit("later work", {"NOTES.txt": "after the tag\n"})  # describe: tag, not HEAD
    repo.write(dict(fix))
    patch = repo.git("diff")
    repo.git("checkout", "-q", ".")
    repo.write(dict(tests))
    repo.git("add", "-A")
    test_patch = repo.git("diff", "--cached")
    repo.git("reset", "-q", "--hard")
    return Candidate(
        instance_id=f"acme__{name}-1", repo=f"acme/{name}", repo_url=str(root), pull_number=1,
        base_commit=sha, merge_commit=sha, created_at=when, merged_at=when,
        problem_statement="x", patch=patch + "\n", test_patch=test_patch + "\n",
        code_files=sorted(fix), test_files=sorted(tests),
    )  # fmt: skip


@pytest.fixture(scope="module")
def stage(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvironmentFn]:
    cache = tmp_path_factory.mktemp("envkinds")
    config = EnvConfig(env_cache_dir=str(cache), env_base_source="local",
                       env_base_suites=("bullseye", "bookworm"))  # fmt: skip
    fn = EnvironmentFn(config)
    fn.setup()
    yield fn
    fn.teardown()


def build(stage: EnvironmentFn, c: Candidate) -> Candidate:
    (out,) = list(stage.process(c))
    out = getattr(out, "value", out)  # a rejection arrives as a TaggedOutput
    assert not isinstance(out, Rejection), f"{out.reason}: {out.detail}"
    assert out.environment is not None
    return out


def run_tests(client: docker.DockerClient, out: Candidate, files: list[str]) -> str:
    """The candidate's own tests in its image, offline, with the fix and the test patch."""
    env = out.environment
    assert env is not None
    # as validation does: a compiled extension is built again from the patched source
    rebuild = "if [ -f /opt/smelter/rebuild.sh ]; then sh /opt/smelter/rebuild.sh; fi && "
    script = (
        "git apply /p/fix.diff && git apply /p/test.diff && "
        + rebuild
        + " ".join(env.test_command + files)
    )
    res = eng.run_container(
        client, env.instance_image, ["sh", "-c", script], user=env.test_user or "root",
        workdir=env.workdir, timeout=300, network="none",
        files={"/p/fix.diff": out.patch, "/p/test.diff": out.test_patch},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return res.output


def release(client: docker.DockerClient, out: Candidate) -> None:
    assert out.environment is not None
    eng.remove_image(client, out.environment.instance_image)


SETUPTOOLS_PYPROJECT = (
    '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
)
TEST_ADD = "from {mod} import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def test_flit_project_builds(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_pr(
        tmp_path / "flitpkg", "flitpkg", when="2025-03-01T00:00:00Z",
        base={
            "pyproject.toml": (
                '[build-system]\nrequires = ["flit_core>=3.9,<4"]\n'
                'build-backend = "flit_core.buildapi"\n\n[project]\nname = "flitpkg"\n'
                'dynamic = ["version", "description"]\nrequires-python = ">=3.9"\n'
                '[project.optional-dependencies]\ntest = ["pytest"]\n'
            ),
            "flitpkg/__init__.py": '"""A flit package."""\n\n__version__ = "1.0"\n',
        },
        fix={"flitpkg/__init__.py": '"""A flit package."""\n\n__version__ = "1.0"\n\n\n'
                                    "def add(a, b):\n    return a + b\n"},
        tests={"tests/test_add.py": TEST_ADD.format(mod="flitpkg")},
    )  # fmt: skip
    out = build(stage, c)
    env = out.environment
    assert env is not None
    assert env.install_mode == "editable" and env.recipe == "extras-test"
    assert "1 passed" in run_tests(docker_client, out, ["tests/test_add.py"])
    release(docker_client, out)


SCM_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "scmpkg"
dynamic = ["version"]
requires-python = ">=3.9"

[project.optional-dependencies]
test = ["pytest"]

[tool.setuptools_scm]
"""
SCM_INIT = """\
from importlib.metadata import version

# Like a test runner whose plugins need it to be >= 2: a made-up 0.0.0 must not pass.
if int(version("scmpkg").split(".")[0]) < 2:
    raise ImportError(f"scmpkg {version('scmpkg')} is too old for its own plugins")
"""


def test_scm_project_gets_the_version_of_its_nearest_tag(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_pr(
        tmp_path / "scmpkg", "scmpkg", when="2025-03-01T00:00:00Z", tag="v2.3.0",
        base={"pyproject.toml": SCM_PYPROJECT, "src/scmpkg/__init__.py": SCM_INIT},
        fix={"src/scmpkg/__init__.py": SCM_INIT + "\n\ndef add(a, b):\n    return a + b\n"},
        tests={"tests/test_add.py": TEST_ADD.format(mod="scmpkg")},
    )  # fmt: skip
    out = build(stage, c)
    env = out.environment
    assert env is not None
    assert env.scm_version == "2.3.0"
    assert "SETUPTOOLS_SCM_PRETEND_VERSION=2.3.0" in env.pre_install
    res = eng.run_container(
        docker_client, env.instance_image,
        ["python", "-c", "import importlib.metadata as m; print(m.version('scmpkg'))"],
        workdir=env.workdir, timeout=60, network="none",
    )  # fmt: skip
    assert res.exit_code == 0 and res.output.strip() == "2.3.0", res.output
    assert "1 passed" in run_tests(docker_client, out, ["tests/test_add.py"])
    release(docker_client, out)


OLD_SETUP_PY = """\
from setuptools import setup

TESTS_REQUIRE = ["pytest"]
EXTRAS = {"test": TESTS_REQUIRE}

setup(
    name="oldpkg",
    version="0.3",
    packages=["oldpkg"],
    extras_require=EXTRAS,
    classifiers=["Programming Language :: Python :: 3.6"],
)
"""


def test_2019_setup_py_project_builds_with_python_39_and_legacy_develop(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_pr(
        tmp_path / "oldpkg", "oldpkg", when="2019-05-01T00:00:00Z",
        base={"setup.py": OLD_SETUP_PY, "oldpkg/__init__.py": "VALUE = 1\n"},
        fix={"oldpkg/__init__.py": "VALUE = 1\n\n\ndef add(a, b):\n    return a + b\n"},
        tests={"tests/test_add.py": TEST_ADD.format(mod="oldpkg")},
    )  # fmt: skip
    out = build(stage, c)
    env = out.environment
    assert env is not None
    assert env.python_version == "3.9" and env.python_candidates[0] == "3.9"
    # extras_require=EXTRAS, a module-level name, was read: the test extra is the rung
    assert env.recipe == "extras-test"
    # setuptools of May 2019 has no build_editable: setup.py develop linked the source instead
    assert env.install_mode == "legacy-develop"
    setuptools = [r for r in env.frozen_requirements if r.lower().startswith("setuptools==")]
    assert setuptools and int(setuptools[0].split("==")[1].split(".")[0]) < 64
    # no package of May 2019 is asked to run on 3.9: it resolves as of 3.9's release + 90 days
    assert env.exclude_newer == "2021-01-03T00:00:00Z"
    assert [a.outcome for a in env.attempts][-1] == "ok"
    assert "1 passed" in run_tests(docker_client, out, ["tests/test_add.py"])
    release(docker_client, out)


C_SETUP_PY = """\
from setuptools import Extension, setup

setup(
    name="cpkg",
    version="1.0",
    packages=["cpkg"],
    ext_modules=[Extension("cpkg._speed", ["cpkg/_speed.c"])],
    extras_require={"test": ["pytest"]},
)
"""
# The same project with its extension declared in a helper module: nothing in setup.py says
# it compiles, so the first build goes without a compiler and fails for want of one.
HIDDEN_C_SETUP_PY = """\
import sys

sys.path.insert(0, ".")
from setuptools import setup

from build_helpers import options

setup(name="cpkg", version="1.0", packages=["cpkg"], **options())
"""
BUILD_HELPERS = """\
from setuptools import Extension


def options():
    return {"ext_modules": [Extension("cpkg._speed", ["cpkg/_speed.c"])],
            "extras_require": {"test": ["pytest"]}}
"""
C_SOURCE = """\
#include <Python.h>
static PyObject *twice(PyObject *self, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    return PyLong_FromLong(2 * v);
}
static PyMethodDef methods[] = {{"twice", twice, METH_O, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }
"""


C_SOURCE_FIXED = C_SOURCE.replace(
    'static PyMethodDef methods[] = {{"twice", twice, METH_O, ""}, ',
    "static PyObject *add(PyObject *self, PyObject *args) {\n"
    "    long a, b;\n"
    '    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;\n'
    "    return PyLong_FromLong(a + b);\n"
    "}\n"
    'static PyMethodDef methods[] = {{"twice", twice, METH_O, ""}, '
    '{"add", add, METH_VARARGS, ""}, ',
)


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "hidden"])
def test_c_extension_gets_the_compiler_rung(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path, declared: bool
) -> None:
    """A project whose setup.py declares an extension gets a compiler from its first build (an
    optional one would otherwise build without it, quietly); one whose build fails for want of
    a compiler gets the same rung again with one."""
    init = "from cpkg._speed import twice\n"
    setup = {"setup.py": C_SETUP_PY} if declared else {
        "setup.py": HIDDEN_C_SETUP_PY, "build_helpers.py": BUILD_HELPERS}  # fmt: skip
    c = make_pr(
        tmp_path / "cpkg", "cpkg", when="2025-03-01T00:00:00Z",
        base={**setup, "cpkg/__init__.py": init, "cpkg/_speed.c": C_SOURCE,
              "pyproject.toml": SETUPTOOLS_PYPROJECT},
        # the fix is in the C source: its tests pass only once the extension is built again
        fix={"cpkg/_speed.c": C_SOURCE_FIXED,
             "cpkg/__init__.py": "from cpkg._speed import add, twice\n"},
        tests={"tests/test_add.py": TEST_ADD.format(mod="cpkg")},
    )  # fmt: skip
    out = build(stage, c)
    env = out.environment
    assert env is not None
    assert "gcc" in env.system_packages and "python3-dev" in env.system_packages
    assert "apt-get install" in env.dockerfiles.env
    assert "/opt/smelter/rebuild.sh" in env.dockerfiles.instance  # validation rebuilds after
    steps = [(a.rung, a.outcome) for a in env.attempts]
    if declared:
        assert steps == [("extras-test+compiler", "ok")]
    else:  # the plain rung failed for want of a compiler, then the same rung with one worked
        assert steps == [("plain", "install_failed"), ("plain+compiler", "ok")]
        assert env.attempts[0].error  # the first error line of the failed build is recorded
    assert "1 passed" in run_tests(docker_client, out, ["tests/test_add.py"])
    release(docker_client, out)


DYNAMIC_SETUP_PY = """\
from setuptools import setup

setup(
    name="dynpkg",
    version="1.0",
    packages=["dynpkg"],
    install_requires=open("deps.in").read().split(),  # computed: no static reader sees it
    extras_require={"test": ["pytest"]},
)
"""


def test_dependencies_only_setup_py_knows_get_a_new_env_layer(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The instance layer builds offline; what the project's own back end asks for and the env
    layer lacks goes into a new env layer (dependency lines only), never network for PR code."""
    init = "import six\n"
    c = make_pr(
        tmp_path / "dynpkg", "dynpkg", when="2025-03-01T00:00:00Z",
        base={"setup.py": DYNAMIC_SETUP_PY, "deps.in": "six\n", "dynpkg/__init__.py": init,
              "pyproject.toml": SETUPTOOLS_PYPROJECT},
        fix={"dynpkg/__init__.py": init + "\n\ndef add(a, b):\n    return a + b\n"},
        tests={"tests/test_add.py": TEST_ADD.format(mod="dynpkg")},
    )  # fmt: skip
    out = build(stage, c)
    env = out.environment
    assert env is not None
    assert env.recipe == "extras-test+pr-deps", env.attempts
    assert "six" in env.dockerfiles.env  # the env layer installs it, from the index
    assert any(r.lower().startswith("six==") for r in env.frozen_requirements)
    assert env.install_mode == "editable"
    assert "1 passed" in run_tests(docker_client, out, ["tests/test_add.py"])
    release(docker_client, out)


DIALING_SETUP_PY = """\
import socket
from setuptools import setup

for _ in range(3):  # a hostile build: phone home, quietly
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    except OSError:
        pass

setup(name="dialpkg", version="1.0", packages=["dialpkg"], extras_require={{"test": ["pytest"]}})
"""


def test_pull_request_code_cannot_reach_the_host_during_the_build(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Regression: the instance layer ran the PR's setup.py with the host network (it connected
    to a listener on 127.0.0.1 26 times)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    hits: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            hits.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        c = make_pr(
            tmp_path / "dialpkg", "dialpkg", when="2025-03-01T00:00:00Z",
            base={"setup.py": DIALING_SETUP_PY.format(port=port), "dialpkg/__init__.py": "",
                  "pyproject.toml": SETUPTOOLS_PYPROJECT},
            fix={"dialpkg/__init__.py": "def add(a, b):\n    return a + b\n"},
            tests={"tests/test_add.py": TEST_ADD.format(mod="dialpkg")},
        )  # fmt: skip
        out = build(stage, c)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert hits == []  # the build ran the setup.py (the package installed) but reached nothing
    assert out.environment is not None and out.environment.install_mode == "editable"
    release(docker_client, out)
