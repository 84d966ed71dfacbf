"""The environment stage's outcome cache on a real engine: a re-run builds nothing and still
hands validation an image it holds; a cached record whose image is gone is rebuilt."""

from __future__ import annotations

import collections
from pathlib import Path

import docker
import pytest

from smelter.schemas import Candidate
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.environment.builder import EnvironmentFn
from smelter.transforms.environment.config import EnvConfig
from tests.test_environment import make_candidate

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def run_stage(
    config: EnvConfig, cache_root: Path, progress: Path, c: Candidate
) -> tuple[Candidate, collections.Counter[str]]:
    """One run of the stage (its own owner token, as a new ``smelter run``) on one candidate:
    its outcome and its progress ticks (c = cache hit, o = computed, r = rejected)."""
    fn = EnvironmentFn(config).attach(str(cache_root), str(progress))
    fn.setup()
    try:
        (out,) = list(fn.process(c))
    finally:
        fn.teardown()
    assert isinstance(out, Candidate), out
    ticks: collections.Counter[str] = collections.Counter()
    for f in progress.glob("environment.*.ticks"):
        ticks.update(f.read_text())
    return out, ticks


def instance_images(client: docker.DockerClient, instance_id: str) -> set[str]:
    found = client.images.list(filters={"label": f"{eng.LABEL_INSTANCE}={instance_id}"})
    return {img.id for img in found}


def runs_its_tests(client: docker.DockerClient, c: Candidate) -> bool:
    env = c.environment
    assert env is not None
    res = eng.run_container(
        client, env.instance_image, [*env.test_command, "tests/test_calc.py"],
        user=env.test_user, workdir=env.workdir, timeout=120,
    )  # fmt: skip
    return res.exit_code == 0 and "1 passed" in res.output


def test_rerun_is_a_cache_hit_with_its_own_alias_and_a_removed_image_is_rebuilt(
    base_image: BaseImage, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    config = EnvConfig(env_cache_dir=str(tmp_path / "envcache"), env_max_rungs=1,
                       env_base_source="local")  # fmt: skip
    cache = tmp_path / "stage-cache"
    c = make_candidate(tmp_path / "repo", "acme/tinycalc",
                       init_body="def add(a, b):\n    return a + b\n")  # fmt: skip
    first, ticks = run_stage(config, cache, tmp_path / "p1", c)
    assert ticks == {"o": 1}
    assert first.environment is not None
    built = instance_images(docker_client, c.instance_id)
    image_id = docker_client.images.get(first.environment.instance_image).id
    assert image_id in built

    # Re-run: served from the cache, no build, under an alias of the new run's own.
    second, ticks = run_stage(config, cache, tmp_path / "p2", c)
    assert ticks == {"c": 1}
    assert second.environment is not None
    alias = second.environment.instance_image
    assert alias != first.environment.instance_image
    assert eng.owner_of(alias) not in (None, eng.owner_of(first.environment.instance_image))
    assert eng.content_tag(alias) == eng.content_tag(first.environment.instance_image)
    assert docker_client.images.get(alias).id == image_id
    assert instance_images(docker_client, c.instance_id) == built  # nothing new was built
    assert second.model_copy(update={"environment": first.environment}) == first
    assert runs_its_tests(docker_client, second)

    # Validation (or a prune) removes the image: the cached record must not be served.
    for tag in (first.environment.instance_image, alias):
        eng.remove_image(docker_client, tag, force=False)
    assert not eng.image_exists(docker_client, eng.content_tag(alias))
    third, ticks = run_stage(config, cache, tmp_path / "p3", c)
    assert ticks == {"o": 1}  # rebuilt, not served
    assert third.environment is not None
    assert eng.content_tag(third.environment.instance_image) == eng.content_tag(alias)
    assert runs_its_tests(docker_client, third)
    eng.remove_image(docker_client, third.environment.instance_image, force=False)
