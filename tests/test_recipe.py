"""Recipe inference and project metadata on file contents (pure; no git, no Docker)."""

from __future__ import annotations

import pytest

from smelter.transforms.environment import project as pj
from smelter.transforms.environment import recipe as r

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "Demo-Pkg"
requires-python = ">=3.9"
dependencies = ["attrs>=21", "click"]
classifiers = [
  "Programming Language :: Python :: 3.9",
  "Programming Language :: Python :: 3.10",
  "Programming Language :: Python :: 3.11",
]

[project.optional-dependencies]
test = ["pytest>=7", "hypothesis", "demo-pkg[extra]"]
dev = ["ruff", "demo-pkg[test]"]
extra = ["rich"]
"""

SETUP_CFG = """
[metadata]
name = oldpkg
classifiers =
    Programming Language :: Python :: 3.8
    Programming Language :: Python :: 3.9

[options]
python_requires = >=3.8
install_requires =
    requests>=2  # comment
    six

[options.extras_require]
testing =
    pytest
    mock
"""

SETUP_PY = """
from setuptools import setup
setup(
    name="legacy",
    python_requires=">=3.6, <3.10",
    install_requires=["simplejson"],
    extras_require={"tests": ["nose", "pytest"]},
    classifiers=["Programming Language :: Python :: 3.7"],
)
"""

WORKFLOW = """
jobs:
  test:
    strategy:
      matrix:
        os: [ubuntu-latest]
        python-version: ["3.10", "3.12"]
  lint:
    steps:
      - uses: actions/setup-python@v5
        with:
          python-version:
            - 3.13
            - "3.9"
"""


def test_project_metadata_from_pyproject() -> None:
    p = pj.project_metadata({"pyproject.toml": PYPROJECT})
    assert p.name == "Demo-Pkg" and p.installable
    assert p.requires_python == ">=3.9"
    assert p.dependencies == ("attrs>=21", "click")
    assert set(p.extras) == {"test", "dev", "extra"}
    assert p.classifier_versions == ("3.9", "3.10", "3.11")
    assert not p.uses_scm_version


def test_project_metadata_from_setup_cfg_and_setup_py() -> None:
    cfg = pj.project_metadata({"setup.cfg": SETUP_CFG, "setup.py": "import setuptools\n"})
    assert cfg.name == "oldpkg" and cfg.requires_python == ">=3.8"
    assert cfg.dependencies == ("requests>=2", "six")
    assert cfg.extras["testing"] == ("pytest", "mock")
    legacy = pj.project_metadata({"setup.py": SETUP_PY})
    assert legacy.requires_python == ">=3.6, <3.10"
    assert legacy.dependencies == ("simplejson",)
    assert legacy.extras == {"tests": ("nose", "pytest")}
    assert legacy.classifier_versions == ("3.7",)


def test_dynamic_dependencies_are_flagged() -> None:
    text = '[project]\nname = "x"\ndynamic = ["dependencies", "version"]\n'
    assert pj.project_metadata({"pyproject.toml": text}).dependencies_dynamic


def test_python_hints_from_tox_and_ci_matrix() -> None:
    files = {
        "tox.ini": "[tox]\nenvlist = py38, py39-django{32,40}, py3{10,11}\n",
        ".github/workflows/ci.yml": WORKFLOW,
    }
    assert pj.python_hints(files) == ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


@pytest.mark.parametrize(
    ("files", "available", "expected"),
    [
        ({"pyproject.toml": PYPROJECT}, ["3.9", "3.11", "3.13"], "3.11"),  # newest named
        ({"pyproject.toml": PYPROJECT}, ["3.13"], "3.13"),  # >=3.9 allows it
        ({"setup.py": SETUP_PY}, ["3.9", "3.11", "3.13"], "3.9"),  # <3.10
        ({"setup.py": SETUP_PY}, ["3.11", "3.13"], None),  # nothing allowed
        ({"setup.cfg": SETUP_CFG}, ["3.11", "3.13"], "3.11"),  # oldest at/above newest hint
        ({}, ["3.9", "3.11"], "3.11"),  # no hints: newest
        ({"pyproject.toml": '[project]\nname="x"\nrequires-python = ">=3.11.4"\n'},
         ["3.11"], "3.11"),  # a patch-level bound still admits the minor version
        ({"pyproject.toml": '[tool.poetry]\nname="p"\n[tool.poetry.dependencies]\n'
                            'python = "^3.8"\n'}, ["3.11", "3.13"], "3.13"),
    ],
)  # fmt: skip
def test_choose_python(files: dict[str, str], available: list[str], expected: str | None) -> None:
    assert pj.choose_python(files, available) == expected


def test_flatten_requirements_inlines_includes_and_drops_local_lines() -> None:
    files = {
        "requirements/test.txt": "-r base.txt\npytest>=7  # pinned\n-e .\n--index-url x\n./local\n",
        "requirements/base.txt": "# base\nrequests==2.31\n-c ../constraints.txt\n",
    }
    assert r.flatten_requirements("requirements/test.txt", files) == ["requests==2.31", "pytest>=7"]


def test_install_ladder_order_and_contents() -> None:
    files = {
        "pyproject.toml": PYPROJECT,
        "requirements-dev.txt": "coverage\n",
        "tox.ini": "[testenv]\ndeps =\n    pytest-mock\n    py39: importlib-metadata\n",
    }
    ladder = r.install_ladder(files)
    assert [g.name for g in ladder] == [
        "extras-test", "tox-deps", "extras-dev", "requirements:requirements-dev.txt",
        "everything", "plain",
    ]  # fmt: skip
    first = ladder[0]
    assert first.extras == ("test",)
    # own deps + test extra; the self-reference demo-pkg[extra] is left to the instance layer
    assert first.requirements == ("attrs>=21", "click", "pytest>=7", "hypothesis",
                                  "pytest-timeout")  # fmt: skip
    assert ladder[1].requirements == ("attrs>=21", "click", "pytest-mock", "importlib-metadata",
                                      "pytest", "pytest-timeout")  # fmt: skip
    assert ladder[3].requirements == ("attrs>=21", "click", "coverage", "pytest",
                                      "pytest-timeout")  # fmt: skip
    assert ladder[-1].requirements == ("attrs>=21", "click", "pytest", "pytest-timeout")
    assert r.order_ladder(ladder, "tox-deps")[0].name == "tox-deps"
    assert [g.name for g in r.order_ladder(ladder, "gone")] == [g.name for g in ladder]


def test_dependency_groups_rung() -> None:
    text = (
        '[project]\nname = "g"\ndependencies = []\n[dependency-groups]\n'
        'test = ["pytest", {include-group = "typing"}]\ntyping = ["mypy"]\n'
    )
    ladder = r.install_ladder({"pyproject.toml": text})
    assert [g.name for g in ladder] == ["dependency-groups", "plain"]
    assert ladder[0].requirements == ("pytest", "mypy", "pytest-timeout")


def test_import_names_and_test_files() -> None:
    paths = ["src/demo_pkg/__init__.py", "src/demo_pkg/core.py", "tests/__init__.py",
             "docs/conf.py", "other/__init__.py", "setup.py"]  # fmt: skip
    assert pj.import_names(paths, "Demo-Pkg") == ["demo_pkg", "other"]
    touched = ["tests/test_core.py", "tests/conftest.py", "tests/data/x.json", "pkg/a_test.py"]
    assert r.collectable_test_files(touched) == ["pkg/a_test.py", "tests/test_core.py"]


def test_scm_environment_only_for_git_versioned_projects() -> None:
    scm = pj.project_metadata(
        {
            "pyproject.toml": PYPROJECT.replace(
                'requires = ["setuptools>=61"]',
                'requires = ["setuptools>=61", "setuptools-scm>=8"]',
            )
        }
    )
    env = r.scm_environment(scm, "1.2.3")
    assert env["SETUPTOOLS_SCM_PRETEND_VERSION"] == "1.2.3"
    assert env["SETUPTOOLS_SCM_PRETEND_VERSION_FOR_DEMO_PKG"] == "1.2.3"
    assert r.scm_environment(pj.project_metadata({"pyproject.toml": PYPROJECT})) == {}


def test_wanted_files() -> None:
    for path in ("pyproject.toml", "requirements-test.txt", "requirements/dev.txt",
                 ".github/workflows/ci.yml", "tox.ini"):  # fmt: skip
        assert r.wanted(path), path
    assert not r.wanted("src/pkg/setup.py") and not r.wanted("README.md")


def test_test_command_leaves_junit_and_files_to_validation() -> None:
    assert r.TEST_COMMAND[:3] == ("python", "-m", "pytest")
    assert "no:cacheprovider" in r.TEST_COMMAND
    assert not any(a.startswith("--junit") for a in r.TEST_COMMAND)


# --------------------------------------------------------------------------- issue 11 classes


def test_extras_in_a_module_level_variable_are_read() -> None:
    """Regression: ``extras_require=EXTRAS_REQUIRE`` was skipped, so test extras were missed."""
    setup_py = (
        "from setuptools import setup\n"
        "TESTS = ['pytest>=6', 'hypothesis']\n"
        "EXTRAS_REQUIRE = {'tests': TESTS + ['coverage'], 'docs': ['sphinx']}\n"
        "EXTRAS_REQUIRE['dev'] = EXTRAS_REQUIRE['tests'] + ['tox']\n"
        "install = ['six']\n"
        "install.append('attrs')\n"
        "kw = dict(name='varpkg', install_requires=install)\n"
        "setup(extras_require=EXTRAS_REQUIRE, long_description=open('README').read(), **kw)\n"
    )
    p = pj.project_metadata({"setup.py": setup_py})
    assert p.name == "varpkg" and p.dependencies == ("six", "attrs")
    assert p.extras["tests"] == ("pytest>=6", "hypothesis", "coverage")
    assert p.extras["dev"] == ("pytest>=6", "hypothesis", "coverage", "tox")
    first = r.install_ladder({"setup.py": setup_py})[0]
    assert first.name == "extras-test" and first.extras == ("tests",)
    assert "hypothesis" in first.requirements and "sphinx" not in first.requirements


def test_code_that_would_run_is_never_evaluated() -> None:
    setup_py = "import os\nDEPS = os.environ['X'].split()\nsetup(install_requires=DEPS)\n"
    assert pj.project_metadata({"setup.py": setup_py}).dependencies == ()


def test_requirement_files_of_different_purposes_are_never_merged() -> None:
    """Regression: every requirements/*.txt went into one install, so pinned files for
    different purposes pinned one package twice (jinja2==3.1.4 and ==3.1.2)."""
    files = {
        "pyproject.toml": '[project]\nname = "p"\ndependencies = ["click"]\n',
        "requirements/tests.txt": "pytest==8.3.2\njinja2==3.1.4\n",
        "requirements/tests.in": "pytest\njinja2\n",
        "requirements/docs.txt": "sphinx==7.4.7\njinja2==3.1.2\n",
        "requirements/typing.txt": "mypy==1.11.1\n",
        "requirements/dev.txt": "-r docs.txt\n-r tests.txt\ntox==4.16.0\n",
    }
    ladder = r.install_ladder(files)
    names = [g.name for g in ladder]
    # tests.txt on its own, then its unpinned .in; dev.txt includes docs.txt and tests.txt,
    # which pin jinja2 twice: no resolver can satisfy it, so it is not worth a build
    assert names[:2] == [
        "requirements:requirements/tests.txt",
        "requirements:requirements/tests.in",
    ]
    assert "requirements:requirements/dev.txt" not in names
    for rung in ladder:
        assert not r.conflicting_pins(rung.requirements), rung
    assert "sphinx==7.4.7" not in ladder[0].requirements
    assert ladder[0].requirements == ("click", "pytest==8.3.2", "jinja2==3.1.4", "pytest-timeout")
    assert r.requirement_role("requirements/docs.txt") is None
    assert r.requirement_role("requirements-test.txt") == "test"
    assert r.requirement_role("test-requirements.in") == "test"
    assert r.requirement_role("requirements/ci.txt") == "ci"
    assert r.requirement_role("requirements/typing-tests.txt") is None
    assert r.requirement_role("docs/requirements.txt") is None


def test_version_from_tag() -> None:
    cases = {
        "v2.3.1": "2.3.1", "pluggy-1.0.0": "1.0.0", "release-4.2": "4.2", "1.0rc1": "1.0rc1",
        "v8.0.0.dev1": "8.0.0.dev1", "2.0.0-beta.1": "2.0.0", "latest": None, None: None,
    }  # fmt: skip
    for tag, version in cases.items():
        assert r.version_from_tag(tag) == version, tag


def test_pytest_pins_too_old_to_drive_are_relaxed() -> None:
    """Regression (mahmoud/boltons, 2019): requirements-test.txt pins pytest==3.0.7, which runs on
    no Python here and refuses validation's flags ("unrecognized arguments: --rootdir")."""
    rung = r.install_ladder({"requirements-test.txt": "pytest==3.0.7\npytest-cov==2.5.1\n"})[0]
    assert rung.requirements == ("pytest>=4.6", "pytest-cov==2.5.1", "pytest-timeout")
    for kept in ("pytest==8.3.2", "pytest>=7", "pytest<9", "pytest; python_version < '3'"):
        assert r._relax_old_pytest(kept) == kept
    assert r._relax_old_pytest("pytest<4") == "pytest>=4.6"
