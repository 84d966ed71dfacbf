"""What swebench's harness runs for a task: its image name, Dockerfile and ``eval.sh``, and the
``swebench eval`` command line. Pure: the Docker side is ``publish.images``.

Deliberate choices:
- The harness image is our instance image under the name swebench derives
  (``harness_image_name``): the task's Dockerfile is ``FROM <our instance image>`` and at most a
  symlink, so building it needs no network.
- ``eval.sh`` is self-contained: no conda. Our images put their venv on PATH through the image
  ENV, which ``docker exec`` inherits; the script resets the test files (those of the test
  patch, plus any test file or ``conftest.py`` the candidate patch touched), applies the test
  patch from a heredoc, runs the validated test command with ``-rA`` (what ``parse_log_pytest``
  reads) on the files holding the graded tests, between swebench's start/end markers.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

from smelter.schemas import Task

# ----------------------------------------------------------------------------------- constants

WORKDIR = "/testbed"  # where swebench's harness applies patches (CONTAINER_WORKDIR)
START_MARKER = ">>>>> Start Test Output"
END_MARKER = ">>>>> End Test Output"
HARNESS_NAMESPACE = "swebench"


# --------------------------------------------------------------------------------- pure parts


def harness_image_name(instance_id: str, namespace: str = HARNESS_NAMESPACE) -> str:
    """The image name swebench derives for an instance (``swebench.task.checks.expected_image``).

    Docker Hub forbids ``__`` in names, hence swebench's ``_1776_``; ours must agree or its
    checks fail and its harness looks for an image nobody built.
    """
    key = f"sweb.eval.x86_64.{instance_id}:latest".lower()
    return f"{namespace}/{key}".replace("__", "_1776_")


def evaluate_argv(
    dataset: str | Path,
    predictions: str | Path | None = None,
    run_id: str = "smelter-gold",
    workers: int = 1,
) -> list[str]:
    """swebench 5.x's evaluation of an exported ``tasks.jsonl``, as argv (gold when no
    predictions file is given).

    ``swebench eval DATASET`` is ``swebench.harness.run_evaluation.main``: a local ``.jsonl``
    is read as is, each row's ``image`` is used when the engine has it (pulled otherwise) and
    only containers are removed afterwards. No ``--task-repo``: that makes swebench delete the
    images and rebuild them with ``docker buildx``, which engines without the plugin lack.
    """
    argv = ["swebench", "eval", str(dataset)]
    argv += ["--predictions", str(predictions)] if predictions else ["--gold"]
    return [*argv, "--run-id", run_id, "--workers", str(workers)]


def evaluate_command(dest: str | Path, predictions: str | Path | None = None) -> str:
    """The shell line that evaluates ``DEST/tasks.jsonl`` after ``smelter export OUT --dest
    DEST --harness-images``: what the export prints and the card shows."""
    return shlex.join(evaluate_argv(Path(dest) / "tasks.jsonl", predictions))


@dataclasses.dataclass(frozen=True)
class PatchedFile:
    path: str
    new: bool = False
    deleted: bool = False
    binary: bool = False  # git carried it as a binary hunk (a binary file, or not UTF-8 text)


_DIFF_HEADER = re.compile(r'^diff --git "?a/(.+?)"? "?b/(.+?)"?$')


def patched_files(patch: str) -> list[PatchedFile]:
    """Files a git diff touches, with whether each is created or deleted (binary hunks too)."""
    files: list[PatchedFile] = []
    current: dict[str, Any] | None = None
    for line in patch.splitlines():
        m = _DIFF_HEADER.match(line)
        if m:
            if current:
                files.append(PatchedFile(**current))
            current = {"path": m.group(2)}
        elif current is not None and line.startswith("new file mode"):
            current["new"] = True
        elif current is not None and line.startswith("deleted file mode"):
            current["deleted"] = True
        elif current is not None and line.startswith(("GIT binary patch", "Binary files ")):
            current["binary"] = True
    if current:
        files.append(PatchedFile(**current))
    return files


def graded_test_files(task: Task) -> list[str]:
    """The files holding the tests that grade the task (node id up to ``::``), sorted."""
    return sorted({t.split("::", 1)[0] for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS]})


def ungradable_tests(task: Task) -> list[str]:
    """Test ids ``parse_log_pytest`` cannot read back: it splits result lines on whitespace."""
    return [t for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS] if re.search(r"\s", t)]


def _heredoc_delimiter(body: str) -> str:
    n = 0
    while f"EOF_SMELTER_{n}" in body:
        n += 1
    return f"EOF_SMELTER_{n}"


def harness_test_argv(task: Task, workdir: str = WORKDIR) -> list[str]:
    """The validated test command, made to print what ``parse_log_pytest`` reads.

    ``-rA`` prints one ``STATUS node_id`` line per test; ``--rootdir`` makes node ids relative
    to the repository root as in validation (without an ini file pytest would root them at the
    common ancestor of the arguments); ``--continue-on-collection-errors`` keeps one broken
    module from hiding the other tests' results; no cache provider keeps the tree clean.
    """
    argv = list(task.environment.test_command) or ["python", "-m", "pytest"]
    if "-rA" not in argv:
        argv.append("-rA")
    if "no:cacheprovider" not in argv and "-pno:cacheprovider" not in argv:
        argv += ["-p", "no:cacheprovider"]
    if not any(a.startswith("--rootdir") for a in argv):
        argv.append(f"--rootdir={workdir}")
    if "--continue-on-collection-errors" not in argv:
        argv.append("--continue-on-collection-errors")
    return argv + graded_test_files(task)


def _drops_privileges(task: Task) -> bool:
    """Validation ran the tests as the source tree's owner unless its script says otherwise."""
    script = task.validation.test_script
    return not script or "setpriv" in script


def eval_script(task: Task, workdir: str = WORKDIR) -> str:
    """The script swebench's harness runs in the container after applying the candidate patch.

    Self-contained (no conda): the image's ENV carries the venv. Test files are reset to
    ``base_commit`` first so a candidate patch cannot edit the tests that grade it, then the
    test patch is applied (``candidate_reset``: the test patch's files as SWE-bench does, and
    also every test file or ``conftest.py`` the candidate changed elsewhere, since pytest loads
    each ``conftest.py`` above a test file whether the test patch touched it or not). As in
    validation, the tests run as the owner of the source tree when
    that is not root (the harness runs everything as root, and a test of file permissions
    passes for a user and fails for root); the tree is chowned back to that owner first, since
    root applied the patches.

    The line before the end marker must be the test command: swebench records its ``$?``
    there to cross-check the log against the exit code. The markers appear once, as ``set -x``
    traces of ``:`` (an echo would print them twice and swebench slices at the first);
    ``exec 2>&1`` puts those traces in pytest's stream, so they bracket its output in order
    (Docker multiplexes stdout and stderr with no ordering promise).
    """
    touched = patched_files(task.test_patch)
    existing = [f.path for f in touched if not f.new]
    created = [f.path for f in touched if f.new]
    body = task.test_patch if task.test_patch.endswith("\n") else task.test_patch + "\n"
    eof = _heredoc_delimiter(body)
    reset = []
    if existing:
        reset.append(f"git checkout {task.base_commit} -- {shlex.join(existing)}")
    if created:
        reset.append(f"rm -f -- {shlex.join(created)}")
    as_owner = [
        'as_owner=""',
        'owner="$(stat -c %u:%g .)"',
        'if [ "$(id -u)" = 0 ] && [ "$owner" != 0:0 ] && command -v setpriv >/dev/null; then '
        'chown -R "$owner" . && as_owner="setpriv --reuid=${owner%:*} --regid=${owner#*:} '
        '--clear-groups env HOME=/tmp"; fi',
    ]
    run = shlex.join(harness_test_argv(task, workdir))
    lines = [
        "#!/bin/bash",
        "set -uxo pipefail",
        "exec 2>&1",
        f"cd {shlex.quote(workdir)}",
        f"git config --global --add safe.directory {shlex.quote(workdir)}",
        "git status",
        "git -c core.fileMode=false diff " + task.base_commit,
        *candidate_reset(task.base_commit),
        *reset,
        f"git apply --binary -v - <<'{eof}'\n{body}{eof}",
        "export PYTHONDONTWRITEBYTECODE=1",
        *(as_owner if _drops_privileges(task) else ['as_owner=""']),
        # compiled extensions are built again from the patched source, as in validation
        "if [ -f /opt/smelter/rebuild.sh ]; then $as_owner sh /opt/smelter/rebuild.sh; fi",
        f": '{START_MARKER}'",
        f"$as_owner {run}",
        f": '{END_MARKER}'",
        *reset,
    ]
    return "\n".join(lines) + "\n"


# smelter's default test-path rules (``testpaths.PathRules``) as git pathspecs: a candidate's
# changes to tracked files there go back to base_commit; untracked files it added go only when
# they are Python test modules or conftest.py (an image may hold built files in a test folder).
TEST_DIR_PATHSPECS = tuple(f":(glob)**/{d}/**" for d in ("test", "tests", "testing"))
TEST_FILE_PATHSPECS = tuple(f":(glob)**/{g}" for g in ("test_*.py", "*_test.py", "conftest.py"))


def candidate_reset(base_commit: str) -> list[str]:
    """Shell lines that undo a candidate patch's changes to tests and ``conftest.py`` files.

    SWE-bench resets only the test patch's files; a candidate could still add a
    ``tests/conftest.py`` (or edit one the test patch leaves alone) with a hook that turns
    failures into passes. Tracked files in test folders or named like tests are checked out
    from ``base_commit`` (modified and deleted ones); untracked test modules and conftest.py
    files are removed. Reading the paths NUL-separated keeps any byte in a name intact.
    """
    tracked = shlex.join([*TEST_DIR_PATHSPECS, *TEST_FILE_PATHSPECS])
    files = shlex.join(TEST_FILE_PATHSPECS)
    base = shlex.quote(base_commit)
    return [
        f"git diff --name-only --no-renames -z {base} -- {tracked}"
        f" | xargs -0 -r git checkout {base} --",
        f"git ls-files -z --others -- {files} | xargs -0 -r rm -f --",
    ]


HARNESS_GITATTRIBUTES = "harness.gitattributes"
HARNESS_GITATTRIBUTES_PATH = "/etc/smelter-harness.gitattributes"


def harness_gitattributes(task: Task) -> str:
    """``-diff`` for every file the patches carry as binary hunks ("" when there is none).

    swebench's harness logs ``git diff`` after applying a patch and decodes it as strict UTF-8,
    so a repository with a Latin-1 source file crashes the run before any test. Marked
    ``-diff``, git prints "Binary files differ" for those files instead; nothing else changes
    (``git apply`` ignores the attribute).
    """
    paths = sorted(
        {f.path for p in (task.patch, task.test_patch) for f in patched_files(p) if f.binary}
    )
    return "".join(f"/{p} -diff\n" for p in paths)


def harness_dockerfile(task: Task) -> str:
    """The task repo's Dockerfile: our instance image under swebench's name, nothing rebuilt.

    swebench's harness applies patches in /testbed as root. Our images keep the source there
    (``Environment.workdir``); one that does not gets a symlink, the only RUN line ever
    emitted, so the usual Dockerfile builds without network. Tasks with binary hunks get
    ``harness_gitattributes`` as git's global attributes file (COPY from the task directory,
    which is the build context, and git's environment-variable config: still no RUN).
    """
    env = task.environment
    lines = [
        f"# Instance image built by smelter (recipe {env.recipe}, env {env.env_hash}); rebuild",
        "# it from the environment block in task.yaml. This file only names it for swebench's",
        "# harness, which runs as root in /testbed.",
        f"FROM {env.instance_image}",
        "USER root",
    ]
    if env.workdir.rstrip("/") != WORKDIR:
        lines.append(f"RUN ln -sfn {shlex.quote(env.workdir)} {WORKDIR}")
    if harness_gitattributes(task):
        lines += [
            f"COPY {HARNESS_GITATTRIBUTES} {HARNESS_GITATTRIBUTES_PATH}",
            "ENV GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.attributesFile "
            f"GIT_CONFIG_VALUE_0={HARNESS_GITATTRIBUTES_PATH}",
        ]
    lines.append(f"WORKDIR {WORKDIR}")
    return "\n".join(lines) + "\n"
