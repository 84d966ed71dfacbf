"""Validation of every demo PR that reaches it, on a real engine with images built by the
environment stage, asserted against the fates written down in ``DEMO_PRS``."""

from __future__ import annotations

import docker
import pytest

from smelter.pipeline.demo_source import DEMO_PRS_BY_NUMBER, create_demo_repo
from smelter.schemas import Candidate, Task
from smelter.transforms import docker_engine as eng
from smelter.transforms.common import Rejected
from smelter.transforms.validate import ValidateConfig, Validator
from tests._demo_stages import demo_candidates, with_environments


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Candidate]:
    work = tmp_path_factory.mktemp("demo-validate")
    demo = create_demo_repo(work / "calc")
    return with_environments(demo_candidates(demo, work))


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(2400)  # image builds on a busy machine; validation itself is ~1 min
def test_demo_prs_validate_to_their_expected_fates(
    built: dict[int, Candidate], docker_client: docker.DockerClient
) -> None:
    validator = Validator(docker_client, ValidateConfig(validate_timeout_seconds=300))
    outcomes: dict[int, Task | Rejected] = {}
    for number, cand in built.items():
        try:
            outcomes[number] = validator.validate(cand)
        except Rejected as r:
            outcomes[number] = r
    assert set(outcomes) == {n for n, p in DEMO_PRS_BY_NUMBER.items() if p.kept_after_snapshot}
    for number, got in outcomes.items():
        want = DEMO_PRS_BY_NUMBER[number]
        if want.validate is not None:
            assert isinstance(got, Rejected), f"#{number} should be rejected ({want.validate})"
            assert got.reason is want.validate, f"#{number}: {got.detail}"
            continue
        assert isinstance(got, Task), f"#{number} rejected: {got}"
        assert sorted(want.fail_to_pass) == got.FAIL_TO_PASS, f"#{number}"
        assert sorted(want.pass_to_pass) == got.PASS_TO_PASS, f"#{number}"
        assert got.validation.flaky == sorted(want.flaky), f"#{number}"
    # Instance images are removed after validation unless kept by option.
    for cand in built.values():
        assert cand.environment is not None
        assert not eng.image_exists(docker_client, cand.environment.instance_image)
