"""Two runs sharing one Docker engine build and validate the same candidate: neither may delete
the instance image the other is about to run (regression: validation removed the shared
content-hash tag, and the second run was rejected with ``infrastructure``, image missing).

The environment stage runs for real (two ``EnvironmentFn``, each with its own owner token, as
two ``smelter run`` processes would have), and so does validation with image removal on.
"""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest

from smelter.schemas import Candidate, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.environment.builder import EnvironmentFn
from smelter.transforms.environment.config import EnvConfig
from smelter.transforms.errors import Rejected
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.images import kept_tag
from smelter.transforms.validate.validate import ValidateFn, Validator
from tests.test_environment import make_candidate

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

# Removal on (the default); one run per side is enough to grade this candidate.
VALIDATE = ValidateConfig(
    validate_timeout_seconds=300, validate_reruns_before=1, validate_reruns_after=1,
    validate_keep_instance_images=False,
)  # fmt: skip
F2P = ["tests/test_calc.py::test_mul"]


def _candidate(tmp_path: Path) -> Candidate:
    c = make_candidate(tmp_path / "repo", "acme/tinycalc",
                       init_body="def add(a, b):\n    return a + b\n")  # fmt: skip
    # Its own instance id: the images this test makes are told apart by their label.
    return c.model_copy(update={"instance_id": "acme__tinycalc-owners"})


def _stage(tmp_path: Path) -> EnvironmentFn:
    """One run's environment stage: owner token made in __init__, as for a pickled DoFn."""
    config = EnvConfig(
        env_cache_dir=str(tmp_path / "envcache"), env_max_rungs=1, env_base_source="local"
    )
    fn = EnvironmentFn(config)
    fn.setup()
    return fn


def _left(client: docker.DockerClient, instance_id: str) -> list[str]:
    """Every tag (or id) of an image built for ``instance_id`` that is still on the engine."""
    images = client.images.list(filters={"label": f"{eng.LABEL_INSTANCE}={instance_id}"})
    return [t for img in images for t in (img.tags or [img.short_id])]


def _kept_content_tag_only(client: docker.DockerClient, instance_id: str, content: str) -> None:
    """Every alias went; the validated task's image stays under its content tag and its kept
    tag (what ``smelter export --harness-images`` builds on), and the test then removes it."""
    left = _left(client, instance_id)
    for tag in left:
        eng.remove_image(client, tag)
    assert sorted(left) == [content, kept_tag(content)]


def test_two_runs_validating_one_candidate_keep_each_others_image(
    docker_client: docker.DockerClient, base_image: BaseImage, tmp_path: Path
) -> None:
    cand = _candidate(tmp_path)
    assert _left(docker_client, cand.instance_id) == []
    stages = [_stage(tmp_path), _stage(tmp_path)]
    built: list[Candidate | None] = [None, None]
    outcomes: list[Task | Rejected | BaseException | None] = [None, None]
    both_built = threading.Barrier(2, timeout=900)
    first_validated = threading.Event()

    def run(i: int) -> None:
        try:
            (out,) = list(stages[i].run(cand))
            built[i] = out
            both_built.wait()
            if i == 1:  # validate after the other run has validated (and removed its image)
                first_validated.wait(timeout=900)
            try:
                outcomes[i] = Validator(docker_client, VALIDATE).validate(out)
            except Rejected as r:
                outcomes[i] = r
        except BaseException as e:  # reported by the assertions below
            outcomes[i] = e
            both_built.abort()
        finally:
            if i == 0:
                first_validated.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for fn in stages:
            fn.teardown()
    for i, got in enumerate(outcomes):
        detail = got.detail if isinstance(got, Rejected) else got
        assert isinstance(got, Task), f"run {i} did not validate: {detail}"
        assert got.FAIL_TO_PASS == F2P and got.PASS_TO_PASS == ["tests/test_calc.py::test_add"]
    a, b = (c.environment.instance_image for c in built if c and c.environment)
    # One image content (built once, then reused), held through two different aliases.
    assert a != b and eng.content_tag(a) == eng.content_tag(b)
    assert {eng.owner_of(a), eng.owner_of(b)} == {stages[0]._owner, stages[1]._owner}
    # The tasks name the stable content tag, never a run's alias: identical across runs.
    assert {t.environment.instance_image for t in outcomes if isinstance(t, Task)} == {
        eng.content_tag(a)
    }
    # Both removed their alias; the task's image stays under its content and kept tags.
    content = eng.content_tag(a)
    assert sorted(_left(docker_client, cand.instance_id)) == [content, kept_tag(content)]

    # A third run on the same engine reuses the kept image and validates again, and its
    # validation cache key is the one the first two runs had: cached outcomes hit across runs.
    third = _stage(tmp_path)
    try:
        (again,) = list(third.run(cand))
    finally:
        third.teardown()
    assert again.environment is not None and eng.owner_of(again.environment.instance_image)
    keyed = ValidateFn(VALIDATE)
    assert {keyed.cache_key(c) for c in (*built, again)} == {keyed.cache_key(built[0])}
    task = Validator(docker_client, VALIDATE).validate(again)
    assert task.FAIL_TO_PASS == F2P
    _kept_content_tag_only(docker_client, cand.instance_id, eng.content_tag(a))


def test_cache_hit_removes_this_runs_alias_only(
    docker_client: docker.DockerClient, base_image: BaseImage, tmp_path: Path
) -> None:
    """A validation served from the cache still gives back the alias the environment stage
    made for this run, and leaves another run's alias of the same image alone."""
    cand = _candidate(tmp_path)
    stage = _stage(tmp_path)
    try:
        (first,) = list(stage.run(cand))
        (second,) = list(stage.run(cand))  # another alias of the same image
    finally:
        stage.teardown()
    assert first.environment is not None and second.environment is not None
    mine, other = first.environment.instance_image, second.environment.instance_image
    fn = ValidateFn(VALIDATE, cache_root=str(tmp_path / "vcache"))
    fn.setup()
    try:
        assert isinstance(next(iter(fn.process(first))), Task)  # validated; alias `mine` gone
        assert not eng.image_exists(docker_client, mine)
        assert eng.image_exists(docker_client, other)  # still held for the other record
        (cached,) = list(fn.process(second))
    finally:
        fn.teardown()
    assert isinstance(cached, Task) and cached.FAIL_TO_PASS == F2P
    _kept_content_tag_only(docker_client, cand.instance_id, eng.content_tag(mine))
