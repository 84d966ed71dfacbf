"""SWE-bench's ``version`` and ``environment_setup_commit``, and logs without escape sequences.

Versions are read from real git repositories through the environment stage's own lookups
(``GitRepo.nearest_tag``, ``read_recipe_files_at``); setup commits are assigned to tasks with
real diffs (tests/test_publish.py's repository), also through the Beam step; ANSI stripping
runs on colour output that pip, uv and pytest really print.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import docker
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from smelter.schemas import Candidate, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.git import GitRepo
from smelter.transforms.environment import versions as vers
from smelter.transforms.environment.builder import EnvironmentFn, read_recipe_files_at
from smelter.transforms.environment.buildlog import first_error_line
from smelter.transforms.util import strip_ansi, tail
from tests._calc_repo import git
from tests.test_environment import _git, make_candidate, stage  # noqa: F401  # fixture
from tests.test_publish import build_tasks

# --------------------------------------------------------------------------------- version


def test_major_minor() -> None:
    cases = {
        "3.0.1": "3.0",
        "3.0rc1": "3.0",
        "3": "3.0",
        "2.13.0.dev0": "2.13",
        "1!4.2.7": "4.2",
        "0.9.post1": "0.9",
        "": "",
        None: "",
        "unknown": "",
    }
    for given, want in cases.items():
        assert vers.major_minor(given) == want, given


def test_static_version_reads_only_literal_versions() -> None:
    assert vers.static_version({"pyproject.toml": '[project]\nversion = "1.4.2"\n'}) == "1.4.2"
    poetry = '[tool.poetry]\nname = "x"\nversion = "0.7.0"\n'
    assert vers.static_version({"pyproject.toml": poetry}) == "0.7.0"
    assert vers.static_version({"setup.cfg": "[metadata]\nversion = 2.1\n"}) == "2.1"
    # attr: / file: need the code: dynamic, never guessed
    attr = "[metadata]\nversion = attr: pkg.__version__\n"
    assert vers.static_version({"setup.cfg": attr}) is None
    setup = 'from setuptools import setup\nVERSION = "5.0.3"\nsetup(name="x", version=VERSION)\n'
    assert vers.static_version({"setup.py": setup}) == "5.0.3"
    dynamic = "from setuptools import setup\nsetup(name='x', version=read_version())\n"
    assert vers.static_version({"setup.py": dynamic}) is None
    assert vers.static_version({"pyproject.toml": "[project]\ndynamic = ['version']\n"}) is None


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def _version_at(repo: Path, commit: str) -> str:
    """What the environment stage computes for a candidate at ``commit``."""
    g = GitRepo(repo)
    files, _ = read_recipe_files_at(g, commit)
    return vers.project_version(g.nearest_tag(commit), files)


def test_version_at_base_commit_from_a_real_repository(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    bare = _commit(repo, {"pkg/__init__.py": ""}, "no version anywhere")
    static = _commit(
        repo, {"setup.py": "from setuptools import setup\nsetup(version='0.9.0.dev0')\n"}, "v"
    )
    released = _commit(repo, {"pkg/a.py": "A = 1\n"}, "release")
    git(repo, "tag", "v1.2.3")
    after_release = _commit(repo, {"pkg/b.py": "B = 1\n"}, "after the tag")
    later = _commit(repo, {"pkg/c.py": "C = 1\n"}, "later")
    git(repo, "tag", "-a", "release-2.0.0", "-m", "annotated, later")

    assert _version_at(repo, bare) == ""  # neither a tag nor a static version
    assert _version_at(repo, static) == "0.9"  # no tag yet: the static version
    assert _version_at(repo, released) == "1.2"  # the tag beats the static version
    assert _version_at(repo, after_release) == "1.2"  # a later tag never counts
    assert _version_at(repo, later) == "2.0"


@pytest.mark.docker
@pytest.mark.slow
def test_environment_stage_records_the_version(
    stage: EnvironmentFn,  # noqa: F811
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """The stage's own build: the static 0.1.0 of the pyproject, then a tag at base_commit."""
    c = make_candidate(tmp_path / "repo", "acme/tinycalc",
                       init_body="def add(a, b):\n    return a + b\n")  # fmt: skip
    images = []
    try:
        (out,) = list(stage.process(c))
        assert isinstance(out, Candidate) and out.environment is not None, out
        images.append(out.environment.instance_image)
        assert out.environment.project_version == "0.1"
        assert "\x1b" not in out.environment.build_log_tail
        _git(tmp_path / "repo", "tag", "v2.5.1", c.base_commit)
        (again,) = list(stage.process(c))
        assert isinstance(again, Candidate) and again.environment is not None, again
        images.append(again.environment.instance_image)
        assert again.environment.project_version == "2.5"
    finally:
        for image in images:
            eng.remove_image(docker_client, image)  # our aliases only, as validation does


# ------------------------------------------------------------------ environment_setup_commit


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> list[Task]:
    """Three tasks with real base commits: 1 and 3 share an env image, 2 has its own."""
    _, made = build_tasks(tmp_path_factory.mktemp("repo"))
    images = ["smelter/env:aaaa", "smelter/env:bbbb", "smelter/env:aaaa"]
    out = []
    for t, image in zip(made, images, strict=True):
        env = t.environment.model_copy(update={"env_image": image})
        out.append(t.model_copy(update={"environment": env}))
    assert len({t.base_commit for t in out}) == 3
    return out


def test_tasks_of_one_env_image_share_the_setup_commit(tasks: list[Task]) -> None:
    one, two, three = tasks
    commits = vers.setup_commits(tasks)
    assert commits[one.instance_id] == commits[three.instance_id] == one.base_commit  # earliest
    assert commits[two.instance_id] == two.base_commit
    assert commits[one.instance_id] != commits[two.instance_id]
    assert vers.setup_commits(reversed(tasks)) == commits  # order of arrival does not matter


def test_setup_commit_is_stable_when_a_later_task_joins(tasks: list[Task]) -> None:
    one = tasks[0]
    later = tasks[2].model_copy(update={"instance_id": "acme__calc-99", "created_at": "2030-01-01"})
    assert vers.setup_commits([*tasks, later])[later.instance_id] == one.base_commit
    # an earlier one becomes the group's commit; offsets compare as instants, not as text
    earlier = tasks[2].model_copy(
        update={"instance_id": "acme__calc-0", "created_at": "2023-11-11T11:00:00+05:00"}
    )
    assert vers.setup_commits([*tasks, earlier])[one.instance_id] == tasks[2].base_commit


def test_same_env_image_in_another_repository_is_another_environment(tasks: list[Task]) -> None:
    other = tasks[2].model_copy(
        update={"repo": "other/calc", "instance_id": "other__calc-1", "created_at": "2000-01-01"}
    )
    commits = vers.setup_commits([*tasks, other])
    assert commits[tasks[0].instance_id] == tasks[0].base_commit
    assert commits[other.instance_id] == other.base_commit


def test_setup_commits_beam_step(tasks: list[Task]) -> None:
    expected = [(t.instance_id, c) for t, c in zip(tasks, [tasks[0].base_commit,
                tasks[1].base_commit, tasks[0].base_commit], strict=True)]  # fmt: skip
    with BeamTestPipeline() as p:
        got = (
            p
            | beam.Create(tasks)
            | vers.SetupCommits()
            | beam.Map(lambda t: (t.instance_id, t.environment_setup_commit))
        )
        assert_that(got, equal_to(expected))


# --------------------------------------------------------------------------------- ANSI


PKG = "no-such-pkg-smelter"


def _coloured(argv: list[str], tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env |= {"FORCE_COLOR": "1", "CLICOLOR_FORCE": "1", "PY_COLORS": "1",
            "UV_CACHE_DIR": str(tmp_path / "uv-cache")}  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    return proc.stdout + proc.stderr


def test_strip_ansi_on_real_pip_uv_and_pytest_output(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    (tmp_path / "test_x.py").write_text("def test_fails():\n    assert 1 == 2\n")
    logs = {
        "pip": _coloured([sys.executable, "-m", "pip", "install", "--no-index", PKG], tmp_path),
        "uv": _coloured(
            [str(bin_dir / "uv"), "pip", "install", "--offline", "--python", sys.executable, PKG],
            tmp_path,
        ),
        "pytest": _coloured(
            [sys.executable, "-m", "pytest", "--color=yes", "-p", "no:cacheprovider", "test_x.py"],
            tmp_path,
        ),
    }
    words = {"pip": "ERROR: ", "uv": "error: ", "pytest": "assert 1 == 2"}
    for tool, log in logs.items():
        assert "\x1b[" in log, f"{tool} printed no colour: the test proves nothing"
        clean = strip_ansi(log)
        assert "\x1b" not in clean and words[tool] in clean, tool
        assert "\x1b" not in tail(log, 120) and len(tail(log, 120)) <= 121, tool
    # the environment stage's first-error line reads the same words
    assert first_error_line(logs["uv"]).startswith("error: ")


def test_strip_ansi_sequences_beyond_colours() -> None:
    link = "\x1b]8;;https://docs.astral.sh\x1b\\docs\x1b]8;;\x1b\\ and \x1b]0;title\x07done"
    assert strip_ansi(link) == "docs and done"
    assert strip_ansi("\x1b[2K\x1b[1G\x1b[?25lResolved\x1b(B\x1b[m 3 packages") == (
        "Resolved 3 packages"
    )
    assert strip_ansi("plain [1m text ]") == "plain [1m text ]"  # no ESC: untouched
