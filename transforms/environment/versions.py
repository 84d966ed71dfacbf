"""SWE-bench's ``version`` and ``environment_setup_commit`` for smelter's tasks, as pure functions.

Deliberate choices:
- ``version`` is ``major.minor`` (``"3.0"``), as in the public SWE-bench datasets, where it
  groups the tasks that share an environment. It comes from the nearest tag reachable from
  ``base_commit`` (``GitRepo.nearest_tag``, the same lookup that gives git-versioned builds
  their ``scm_version``), read through ``recipe.version_from_tag``; a project without a usable
  tag falls back to a static ``version`` in pyproject.toml, setup.cfg or setup.py at that
  commit. Nothing is executed and no later tag counts. Empty only when neither exists.
- ``environment_setup_commit`` is computed over a set of tasks, not one: see
  ``setup_commits``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from packaging.version import InvalidVersion, Version

from smelter.schemas import Task
from smelter.transforms.dates import utc_iso
from smelter.transforms.environment import project as pj
from smelter.transforms.environment import recipe as rc


def major_minor(version: str | None) -> str:
    """``"3.0.1"`` / ``"3.0rc1"`` / ``"3"`` -> ``"3.0"``; ``""`` for anything not PEP 440."""
    if not version:
        return ""
    try:
        release = Version(version.strip()).release
    except InvalidVersion:
        return ""
    return f"{release[0]}.{release[1] if len(release) > 1 else 0}"


def static_version(files: Mapping[str, str]) -> str | None:
    """The literal version the packaging files at a commit state, or None.

    Read in the order a build back end would: PEP 621 ``[project] version``, Poetry's, setup.cfg
    ``[metadata] version`` (not ``attr:`` / ``file:``, which need the code), then a string
    ``setup(version=...)`` that evaluates statically. A dynamic version is None, never guessed.
    """
    data = pj._toml(files)
    project = data.get("project")
    tool = data.get("tool")
    poetry = tool.get("poetry") if isinstance(tool, dict) else None
    found = [
        project.get("version") if isinstance(project, dict) else None,
        poetry.get("version") if isinstance(poetry, dict) else None,
        pj._ini(files.get("setup.cfg")).get("metadata", "version", fallback=None),
        pj._setup_py_kwargs(files.get("setup.py")).get("version"),
    ]
    for value in found:
        if isinstance(value, str) and value.strip() and ":" not in value:
            return value.strip()
    return None


def project_version(tag: str | None, files: Mapping[str, str]) -> str:
    """SWE-bench's ``version`` of a task: the nearest tag's ``major.minor``, else the static
    version's, else ``""`` (the card says how many tasks have none)."""
    return major_minor(rc.version_from_tag(tag)) or major_minor(static_version(files))


def setup_group(task: Task) -> tuple[str, str]:
    """The tasks that share one environment: same repository and same env image.

    The repository is part of the key because the env layer holds dependency lines only, so
    two repositories with the same lines share an image, but a commit of one is no commit of
    the other.
    """
    return task.repo, task.environment.env_image


def setup_commits(tasks: Iterable[Task]) -> dict[str, str]:
    """instance_id -> ``environment_setup_commit``: per ``setup_group``, the ``base_commit`` of
    its earliest task (by ``created_at``, then ``instance_id``).

    Why this rule: the env layer never sees the source, only dependency lines, and every task
    of a group yields the same lines, so each of their base commits rebuilds the image; the
    choice only has to be one commit per image, and deterministic. The earliest task keeps it
    stable as a dataset grows forward in time (newer PRs join a group without changing its
    commit) and independent of build order, engine state or which machine built the image,
    which a label written by whichever build ran first would not be.
    """
    first: dict[tuple[str, str], Task] = {}
    members: list[Task] = list(tasks)
    for t in members:
        key = setup_group(t)
        best = first.get(key)
        if best is None or _age(t) < _age(best):
            first[key] = t
    return {t.instance_id: first[setup_group(t)].base_commit for t in members}


def _age(task: Task) -> tuple[str, str]:
    """Sort key of ``setup_commits``: ``created_at`` in one UTC form (offsets would compare
    wrongly as text), then ``instance_id`` for a tie."""
    try:
        when = utc_iso(task.created_at)
    except ValueError:
        when = task.created_at
    return when, task.instance_id


def with_setup_commits(tasks: Iterable[Task]) -> list[Task]:
    """The tasks with ``environment_setup_commit`` set by ``setup_commits``."""
    members = list(tasks)
    commits = setup_commits(members)
    return [
        t
        if t.environment_setup_commit == commits[t.instance_id]
        else t.model_copy(update={"environment_setup_commit": commits[t.instance_id]})
        for t in members
    ]


class SetupCommits(beam.PTransform):
    """Tasks -> the same tasks with ``environment_setup_commit`` from ``setup_commits``.

    A grouping step, not a stage: one task alone cannot know which commit its image group
    shares, and the rule rejects nothing.
    """

    def expand(self, tasks: Any) -> Any:
        return (
            tasks
            | "ByEnvironment" >> beam.Map(lambda t: (setup_group(t), t))
            | "Group" >> beam.GroupByKey()
            | "Assign" >> beam.FlatMap(lambda kv: with_setup_commits(kv[1]))
        )
