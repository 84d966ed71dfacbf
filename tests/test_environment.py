"""Environment stage: pure rendering, and real env + instance builds on a real Docker engine."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import docker
import pytest
from apache_beam.pvalue import TaggedOutput

from smelter.schemas import Candidate, Reason, Rejection
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.environment import builder as envmod
from smelter.transforms.environment import buildlog, check, dockerfiles
from smelter.transforms.environment import project as pj
from smelter.transforms.environment import recipe as rc
from smelter.transforms.environment.builder import EnvironmentFn
from smelter.transforms.environment.config import EnvConfig

CREATED = "2025-06-01T12:00:00Z"


# --------------------------------------------------------------------------- pure


def test_cutoffs() -> None:
    assert dockerfiles.instance_cutoff("2024-03-05T10:11:12+01:00") == "2024-03-05T09:11:12Z"
    assert dockerfiles.env_cutoff("2024-03-05T10:11:12Z", 1) == "2024-03-05"
    bucket = dockerfiles.env_cutoff("2024-03-05T10:11:12Z", 30)
    assert bucket <= "2024-03-05"
    # neighbours in one bucket share the cutoff, so they share the env image
    assert dockerfiles.env_cutoff("2024-03-06T00:00:00Z", 30) in (bucket, "2024-03-06")


def test_env_dockerfile_inlines_requirements_and_cutoff() -> None:
    text = dockerfiles.render_env_dockerfile(
        repo="o/r", recipe="extras-test", base_image="smelter/base:x",
        requirements=["attrs>=21", "pytest ; python_version>'3'"], cutoff="2024-01-01",
        with_ca=True,
    )  # fmt: skip
    assert "FROM smelter/base:x" in text
    assert (
        "uv pip install --exclude-newer 2024-01-01 'attrs>=21' "
        "'pytest ; python_version>'\"'\"'3'\"'\"''" in text
    )
    assert "COPY extra-ca.crt" in text and "SSL_CERT_FILE" in text
    assert "PATH=/opt/smelter/venv/bin:$PATH" in text
    plain = dockerfiles.render_env_dockerfile(
        repo="o/r", recipe="plain", base_image="b", requirements=["pytest"], cutoff=None,
        with_ca=False,
    )  # fmt: skip
    assert "exclude-newer" not in plain and "extra-ca" not in plain


def test_instance_dockerfile_installs_editable_with_extras_and_scm_version() -> None:
    text = dockerfiles.render_instance_dockerfile(
        repo="o/r", instance_id="o__r-1", base_commit="abc", env_image="smelter/env:e",
        installable=True, extras=["test"], cutoff="2024-01-01T00:00:00Z",
        install_env={"SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0"},
    )  # fmt: skip
    assert "FROM smelter/env:e" in text
    # offline and without build isolation (build requirements and dependencies are in the env
    # layer), then setup.py develop (old setuptools has no PEP 660 hook), then "failed" with
    # the project's own metadata; each names its mode
    cut = "--exclude-newer 2024-01-01T00:00:00Z"
    ways = [line.strip() for line in text.splitlines() if "install-mode" in line]
    assert ways[0] == (
        "RUN { { SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0 uv pip install --offline "
        f"--no-build-isolation {cut} -e '.[test]' && echo editable > /opt/smelter/install-mode; }}"
        " \\"
    )
    assert ways[1].startswith(
        "|| { SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0 python -c 'import setuptools; "
        "setuptools.setup()' develop --no-deps && echo legacy-develop > /opt/smelter/install-mode"
        " && { { SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0 uv build --offline"
    )
    assert ways[2].startswith(
        "|| { SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0 python -m pip install --no-index "
        "--no-build-isolation --no-deps -e '.[test]' && echo editable-pip > "
    )
    assert ways[3].startswith(
        "|| { echo failed > /opt/smelter/install-mode; { SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0"
        " uv build --offline --no-build-isolation --wheel"
    )
    # the PR's code runs as the test user, and the build has no network (see _ensure_instance)
    assert text.index("USER 1000:1000") < text.index("uv pip install") < text.index("USER root")
    # git trusts the test user's tree before anything (setuptools-scm) reads it
    assert text.index("safe.directory /testbed") < text.index("uv pip install")
    assert "python setup.py develop" in dockerfiles.render_instance_dockerfile(
        repo="o/r", instance_id="o__r-1", base_commit="abc", env_image="e", installable=True,
        extras=[], cutoff=None, install_env={}, has_setup_py=True,
    )  # fmt: skip
    bare = dockerfiles.render_instance_dockerfile(
        repo="o/r", instance_id="o__r-1", base_commit="abc", env_image="e", installable=False,
        extras=[], cutoff=None, install_env={}, source_paths=["/testbed/src", "/testbed"],
    )  # fmt: skip
    assert "ENV PYTHONPATH=/testbed/src:/testbed" in bare
    assert "RUN { echo none > /opt/smelter/install-mode ; }" in bare


def test_env_requirements_add_build_requirements_once() -> None:
    project = pj.project_metadata({"pyproject.toml": PYPROJECT})
    assert project.build_requires == ("setuptools>=61",)
    rung = rc.install_ladder({"pyproject.toml": PYPROJECT})[0]
    assert dockerfiles.env_requirements(rung, project) == [
        "pytest>=7",
        "pytest-timeout",
        "setuptools>=61",
        "pip",  # setuptools' develop and many setup.py scripts run `python -m pip`
    ]
    legacy = pj.project_metadata({"setup.py": "from setuptools import setup\nsetup()\n"})
    assert legacy.build_requires == ("setuptools>=40.8.0", "wheel")


def test_check_script_exit_codes() -> None:
    script = check.check_script(["pkg"], ["tests/test_a.py"], 2)
    assert "python -c 'import pkg' || exit 91" in script
    assert script.count("git apply") == 2
    assert "--collect-only" in script and "|| exit 93" in script
    assert "pytest" not in check.check_script(["pkg"], [], 0)


def test_check_collects_only_test_files_that_still_exist(tmp_path: Path) -> None:
    """Regression (pallets/itsdangerous#273): a PR that deletes a test module was rejected as
    collection_failed ("file or directory not found") on every rung and Python."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_kept.py").write_text("")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").write_text('#!/bin/sh\necho "$@" >> "$ARGS_LOG"\n')
    (shims / "python").chmod(0o755)
    script = check.check_script([], ["tests/test_gone.py", "tests/test_kept.py"], 0)
    script = script.replace(f"cd {dockerfiles.WORKDIR}", f"cd {tmp_path}")
    log = tmp_path / "args.log"
    env = {"PATH": f"{shims}:/usr/bin:/bin", "ARGS_LOG": str(log)}
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    called = log.read_text()
    assert "tests/test_kept.py" in called and "test_gone" not in called
    (tmp_path / "tests" / "test_kept.py").unlink()
    log.unlink()
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and not log.exists()  # nothing left to collect: no pytest


def test_failure_reason_from_build_error() -> None:
    run_err = eng.BuildFailed(
        "The command '/bin/sh -c uv pip install x' returned a non-zero code: 1", ""
    )
    assert buildlog.failure_reason(run_err) is Reason.INSTALL_FAILED
    assert buildlog.failure_reason(eng.BuildFailed("COPY failed", "")) is Reason.BUILD_FAILED


def test_recipe_memory_roundtrip(tmp_path: Path) -> None:
    memory = envmod.RecipeMemory(tmp_path)
    assert memory.get("o/r") is None
    memory.put("o/r", "tox-deps")
    assert memory.get("o/r") == "tox-deps"
    assert envmod.RecipeMemory(tmp_path).get("o/r") == "tox-deps"


def test_config_fields_have_help_and_distinct_names() -> None:
    from dataclasses import fields

    for f in fields(EnvConfig):
        # a field copied whole from another section ([registry], [paths]) keeps its own name
        assert f.name.startswith("env_") or f.metadata.get("from_section"), f.name
        assert f.metadata.get("help"), f.name


# --------------------------------------------------------------------------- real Docker

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinycalc"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = []
classifiers = ["Programming Language :: Python :: 3.11"]

[project.optional-dependencies]
test = ["pytest>=7"]

[tool.setuptools.packages.find]
where = ["src"]
"""

TEST_FILE = """\
from tinycalc import add


def test_add():
    assert add(2, 3) == 5
"""


def _git(path: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@x",
           "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@x", "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(path)}  # fmt: skip
    return subprocess.run(["git", "-C", str(path), *args], env=env, check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def make_candidate(root: Path, repo: str, *, init_body: str, deps: str = "[]") -> Candidate:
    """A real repo: base commit with add(); the PR adds mul() and a test for it."""
    root.mkdir(parents=True)
    _git(root, "init", "-q", "--initial-branch=main")
    (root / "pyproject.toml").write_text(
        PYPROJECT.replace("dependencies = []", f"dependencies = {deps}")
    )
    (root / "src" / "tinycalc").mkdir(parents=True)
    (root / "src" / "tinycalc" / "__init__.py").write_text(init_body)
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(TEST_FILE)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    base = _git(root, "rev-parse", "HEAD").strip()
    with (root / "src" / "tinycalc" / "__init__.py").open("a") as f:
        f.write("\n\ndef mul(a, b):\n    return a * b\n")
    patch = _git(root, "diff")
    _git(root, "checkout", "-q", ".")
    with (root / "tests" / "test_calc.py").open("a") as f:
        f.write("\n\ndef test_mul():\n    from tinycalc import mul\n    assert mul(2, 3) == 6\n")
    test_patch = _git(root, "diff")
    _git(root, "checkout", "-q", ".")
    owner_repo = repo.replace("/", "__")
    return Candidate(
        instance_id=f"{owner_repo}-1", repo=repo, repo_url=str(root), pull_number=1,
        base_commit=base, merge_commit=base, created_at=CREATED, problem_statement="add mul",
        patch=patch, test_patch=test_patch, code_files=["src/tinycalc/__init__.py"],
        test_files=["tests/test_calc.py"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def stage(
    docker_client: docker.DockerClient,
    base_image: BaseImage,
    tmp_path_factory: pytest.TempPathFactory,
):
    cache = tmp_path_factory.mktemp("envcache")
    # recipes/locks/tmp go to this test's folder; the base image is the session's (already built)
    config = EnvConfig(env_cache_dir=str(cache), env_max_rungs=2, env_bootstrap_missing=True,
                       env_base_source="local")  # fmt: skip
    fn = EnvironmentFn(config)
    fn.setup()
    yield fn
    fn.teardown()


def _outcomes(fn: EnvironmentFn, c: Candidate) -> list:
    return list(fn.process(c))


def _no_leftover_check_containers(client: docker.DockerClient, instance_id: str) -> None:
    left = client.containers.list(
        all=True, filters={"label": [f"{eng.LABEL_KIND}={eng.KIND_CHECK}",
                                     f"{eng.LABEL_INSTANCE}={instance_id}"]},
    )  # fmt: skip
    assert left == []


@pytest.mark.docker
@pytest.mark.slow
def test_env_and_instance_build_then_cache_hit(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_candidate(tmp_path / "repo", "acme/tinycalc",
                       init_body="def add(a, b):\n    return a + b\n")  # fmt: skip
    (out,) = _outcomes(stage, c)
    assert isinstance(out, Candidate), out
    env = out.environment
    assert env is not None
    assert env.python_version == "3.11" and env.recipe == "extras-test"
    assert env.base_image.startswith("smelter/base:py3.11-bookworm-")
    assert env.env_image.startswith("smelter/env:acme-tinycalc-")
    assert any(r.lower().startswith("pytest==") for r in env.frozen_requirements)
    assert "-e file:///testbed" in env.frozen_requirements  # the project itself, editable
    assert env.exclude_newer == "2025-06-01T12:00:00Z"
    assert "--exclude-newer" in env.dockerfiles.env and env.test_user == "smelter"
    assert env.image_size_bytes and env.image_size_bytes > 100_000_000
    img = docker_client.images.get(env.instance_image)
    assert img.labels[eng.LABEL_KIND] == eng.KIND_INSTANCE
    # the image runs the repo's tests offline, as the test user
    res = eng.run_container(
        docker_client, env.instance_image,
        [*env.test_command, "tests/test_calc.py"], user=env.test_user, workdir=env.workdir,
        timeout=120,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 passed" in res.output
    _no_leftover_check_containers(docker_client, c.instance_id)

    # A second PR of the same repo with the same dependency lines: env image is reused.
    c2 = make_candidate(tmp_path / "repo2", "acme/tinycalc",
                        init_body="def add(a, b):\n    return b + a\n")  # fmt: skip
    (out2,) = _outcomes(stage, c2)
    assert isinstance(out2, Candidate), out2
    assert out2.environment.env_image == env.env_image
    assert out2.environment.env_cache_hit is True
    assert out2.environment.instance_image != env.instance_image
    print(f"first build {env.build_seconds:.1f}s (env hit {env.env_cache_hit}); "
          f"second {out2.environment.build_seconds:.1f}s (env hit True)")  # fmt: skip
    # Rebuilding the very same candidate is a pure cache hit: the same image, under a new
    # alias of this record's own (validation removes only that one).
    (again,) = _outcomes(stage, c)
    assert again.environment.instance_image != env.instance_image
    assert eng.content_tag(again.environment.instance_image) == eng.content_tag(env.instance_image)
    assert img.id == docker_client.images.get(again.environment.instance_image).id
    assert again.environment.env_cache_hit
    for image in (env.instance_image, out2.environment.instance_image,
                  again.environment.instance_image):  # fmt: skip
        eng.remove_image(docker_client, image)  # as validation does after its runs
    # With the last alias the content tag went too, and so did the image.
    for image in (env.instance_image, out2.environment.instance_image):
        assert not eng.image_exists(docker_client, eng.content_tag(image))
    assert not eng.image_exists(docker_client, img.id)


@pytest.mark.docker
@pytest.mark.slow
def test_unresolvable_dependency_is_rejected_with_log_tail(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_candidate(tmp_path / "broken", "acme/broken",
                       init_body="def add(a, b):\n    return a + b\n",
                       deps='["smelter-no-such-package-zzz>=1"]')  # fmt: skip
    (out,) = _outcomes(stage, c)
    assert isinstance(out, TaggedOutput), out
    rejection: Rejection = out.value
    assert rejection.stage == "environment"
    assert rejection.reason is Reason.INSTALL_FAILED
    assert "smelter-no-such-package-zzz" in rejection.detail
    assert "extras-test: install_failed" in rejection.detail
    _no_leftover_check_containers(docker_client, c.instance_id)


@pytest.mark.docker
@pytest.mark.slow
def test_package_that_does_not_import_is_rejected(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_candidate(tmp_path / "noimport", "acme/noimport",
                       init_body="import no_such_module_anywhere\n")  # fmt: skip
    (out,) = _outcomes(stage, c)
    assert isinstance(out, TaggedOutput), out
    assert out.value.reason is Reason.IMPORT_FAILED
    assert "no_such_module_anywhere" in out.value.detail
    _no_leftover_check_containers(docker_client, c.instance_id)
    # its instance images were removed (not kept by option)
    assert not docker_client.images.list(
        filters={"label": [f"{eng.LABEL_INSTANCE}={c.instance_id}"]}
    )


def test_config_replace_keeps_frozen() -> None:
    cfg = replace(EnvConfig(), env_max_rungs=1)
    assert cfg.env_max_rungs == 1


@pytest.mark.docker
@pytest.mark.slow
def test_env_cutoff_falls_back_to_the_pr_day_when_the_bucket_is_too_old(
    base_image: BaseImage, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # A ten-year bucket puts the env cutoff in 2019, before pytest 8.3.5 (March 2025) existed.
    config = EnvConfig(env_cache_dir=str(tmp_path / "cache"), env_base_source="local",
                       env_exclude_newer_bucket_days=3650, env_max_rungs=1)  # fmt: skip
    fn = EnvironmentFn(config)
    fn.setup()
    try:
        c = make_candidate(tmp_path / "repo", "acme/newdeps",
                           init_body="def add(a, b):\n    return a + b\n",
                           deps='["pytest>=8.3.5"]')  # fmt: skip
        c = c.model_copy(update={"created_at": "2025-03-05T08:00:00Z"})
        (out,) = list(fn.process(c))
    finally:
        fn.teardown()
    assert isinstance(out, Candidate), out
    env = out.environment
    assert "--exclude-newer 2025-03-05 " in env.dockerfiles.env
    assert any(r.startswith("pytest==8.3.") for r in env.frozen_requirements)
    eng.remove_image(docker_client, env.instance_image)


def test_stage_pickles_without_clients() -> None:
    import pickle

    fn = EnvironmentFn(EnvConfig(env_max_rungs=2))
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.STAGE == "environment" and not hasattr(clone, "_builder")


@pytest.mark.docker
def test_no_available_python_is_rejected_before_any_build(
    stage: EnvironmentFn, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = make_candidate(tmp_path / "old", "acme/old", init_body="def add(a, b):\n    return a + b\n")
    # rewrite requires-python at the base commit: only Python 2.7 / 3.6 allowed
    root = Path(c.repo_url)
    text = (root / "pyproject.toml").read_text().replace('">=3.9"', '">=2.7,<3.7"')
    (root / "pyproject.toml").write_text(text)
    _git(root, "commit", "-q", "-am", "old pythons only")
    c = c.model_copy(update={"base_commit": _git(root, "rev-parse", "HEAD").strip()})
    (out,) = list(stage.process(c))
    assert isinstance(out, TaggedOutput)
    assert out.value.reason is Reason.NO_PYTHON_VERSION
    assert "'>=2.7,<3.7'" in out.value.detail and "3.11" in out.value.detail
    assert docker_client.images.list(filters={"label": f"{eng.LABEL_REPO}=acme/old"}) == []


UV_BUILD_LOG = """\
Step 7/8 : RUN { uv pip install -e . ; }
 ---> Running in 69f185da51bc
\x1b[91mwarning\x1b[0m: `VIRTUAL_ENV=/opt/smelter/venv` is set
Using Python 3.9.2 environment at: /opt/smelter/venv
\x1b[91merror\x1b[0m: The build backend returned an error
  cause: Call to `setuptools.build_meta:__legacy__.get_requires_for_build_editable` failed

         [stderr]
         Traceback (most recent call last):
           File "<string>", line 14, in <module>
             unescape = getattr(html, 'unescape', html_parser.HTMLParser().unescape)
         AttributeError: 'HTMLParser' object has no attribute 'unescape'
Removing intermediate container 69f185da51bc
The command '/bin/sh -c { uv pip install -e . ; }' returned a non-zero code: 1
""" + "".join(f"echoed line {i} of a long command\n" for i in range(200))


def test_reject_detail_keeps_the_first_error_ahead_of_the_tail() -> None:
    """Regression: the detail kept the last 1,400 characters, which the echoed command filled."""
    detail = buildlog.reject_detail(UV_BUILD_LOG, "extras-test failed")
    assert detail.startswith("first error:\nerror: The build backend returned an error")
    assert "AttributeError: 'HTMLParser' object has no attribute 'unescape'" in detail
    assert "\x1b[" not in detail and detail.endswith("-- extras-test failed")
    assert len(detail) < 1600
    line = buildlog.first_error_line(UV_BUILD_LOG)
    assert line == "AttributeError: 'HTMLParser' object has no attribute 'unescape'"
    assert buildlog.first_error("Step 1/2 : RUN echo error: not this\nall good\n") == ""


def test_needs_compiler() -> None:
    assert buildlog.needs_compiler("error: command 'gcc' failed: No such file or directory")
    assert buildlog.needs_compiler("src/x.c:1:10: fatal error: Python.h: No such file or directory")
    assert buildlog.needs_compiler("unable to execute 'x86_64-linux-gnu-gcc': No such file")
    assert not buildlog.needs_compiler("No solution found when resolving dependencies")


def test_resolver_cutoff_is_the_merge_but_never_before_the_python_was_usable() -> None:
    assert dockerfiles.resolver_cutoff("2025-03-01T10:00:00Z", "3.11") == "2025-03-01T10:00:00Z"
    # Python 3.9 came out 2020-10-05: a 2019 PR resolves as of 90 days later
    assert dockerfiles.resolver_cutoff("2019-05-01T00:00:00Z", "3.9") == "2021-01-03T00:00:00Z"
    c = Candidate(
        instance_id="o__r-1", repo="o/r", repo_url="/x", pull_number=1, base_commit="a",
        merge_commit="b", created_at="2023-01-01T00:00:00Z", merged_at="2026-01-01T00:00:00Z",
        problem_statement="", patch="", test_patch="",
    )  # fmt: skip
    # Regression: a PR branched in 2023 and merged in 2026 resolved 2023 packages
    assert dockerfiles.resolve_date(c) == "2026-01-01T00:00:00Z"


def test_build_context_mtimes_are_zip_safe() -> None:
    """Regression: files dated 1970 in the build context broke every flit wheel ("ZIP does not
    support timestamps before 1980")."""
    import io
    import tarfile

    data = eng.tar_files({"a.py": "x = 1\n"})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        (member,) = tar.getmembers()
    assert member.mtime >= 315_532_800  # 1980-01-01
    assert data == eng.tar_files({"a.py": "x = 1\n"})  # still byte-stable


def test_recipe_files_come_from_git_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    """Regression: recipe inference followed a ``requirements-test.txt`` symlinked to a host file,
    whose lines became install lines (and would reach the task's Dockerfile and the index)."""
    from smelter.transforms.adapters.git import GitRepo

    secret = tmp_path / "host-secret.txt"
    secret.write_text("host-only-package==6.6.6\n")
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "--initial-branch=main")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "requirements-test.txt").symlink_to(secret)
    (root / "requirements-dev.txt").write_text("coverage\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    sha = _git(root, "rev-parse", "HEAD").strip()
    files, paths = envmod.read_recipe_files_at(GitRepo(root), sha)
    assert "requirements-test.txt" not in files and "requirements-test.txt" not in paths
    assert files["requirements-dev.txt"] == "coverage\n"
    lines = [x for rung in rc.install_ladder(files) for x in rung.requirements]
    assert "host-only-package==6.6.6" not in lines and "coverage" in lines


HATCH_LOG = """\
  × Failed to build `filelock @ file:///testbed`
  ├─▶ The build backend returned an error
  ╰─▶ Call to `hatchling.build.build_editable` failed (exit status: 1)
      [stderr]
      Traceback (most recent call last):
        File "<string>", line 11, in <module>
        File "/v/lib/python3.13/site-packages/hatchling/builders/wheel.py", line 550, in x
          from editables import EditableProject
      ModuleNotFoundError: No module named 'editables'
Traceback (most recent call last):
  File "<string>", line 1, in <module>
setuptools.errors.InvalidConfigError: License classifiers have been superseded
"""


def test_hatchling_gets_editables_and_its_own_error_is_the_first() -> None:
    """Regression (tox-dev/filelock): hatchling's editable build needs ``editables``, which a
    build without isolation lacked; and the reject named the error of a setuptools fallback
    that has no business running on a hatchling project."""
    pyproject = (
        '[build-system]\nrequires = ["hatchling", "hatch-vcs"]\n'
        'build-backend = "hatchling.build"\n[project]\nname = "fl"\ndynamic = ["version"]\n'
    )
    project = pj.project_metadata({"pyproject.toml": pyproject})
    assert project.build_requires == ("hatchling", "hatch-vcs", "editables")
    assert not project.setuptools_backend
    text = dockerfiles.render_instance_dockerfile(
        repo="o/r", instance_id="o__r-1", base_commit="abc", env_image="e", installable=True,
        extras=[], cutoff=None, install_env={}, legacy_develop=project.setuptools_backend,
    )  # fmt: skip
    assert "develop" not in text
    assert (
        buildlog.first_error_line(HATCH_LOG) == "ModuleNotFoundError: No module named 'editables'"
    )
    assert pj.project_metadata({"setup.py": "setup()"}).setuptools_backend
