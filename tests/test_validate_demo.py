"""Validation of every demo PR that reaches it, on a real engine with images built by the
environment stage, asserted against the fates written down in ``DEMO_PRS``."""

from __future__ import annotations

import docker
import pytest

from smelter.pipeline.demo.build import create_demo_repo
from smelter.pipeline.demo.prs import DEMO_PRS_BY_NUMBER
from smelter.schemas import Candidate, Task
from smelter.transforms.errors import Rejected
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.validate import Validator
from tests._demo_stages import demo_candidates, with_environments


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Candidate]:
    work = tmp_path_factory.mktemp("demo-validate")
    return demo_candidates(create_demo_repo(work / "calc"), work)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(2400)  # image builds on a busy machine; validation itself is ~1 min
def test_demo_prs_validate_to_their_expected_fates(
    candidates: dict[int, Candidate], docker_client: docker.DockerClient
) -> None:
    validator = Validator(docker_client, ValidateConfig(validate_timeout_seconds=300))
    outcomes: dict[int, Task | Rejected] = {}
    built: dict[int, Candidate] = {}
    for number, cand in sorted(candidates.items()):
        # Build right before validating: instance tags are content hashes shared with any
        # other run of the demo on this engine, and validation removes its image afterwards.
        built[number] = with_environments({number: cand})[number]
        try:
            outcomes[number] = validator.validate(built[number])
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
