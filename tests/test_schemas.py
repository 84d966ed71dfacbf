"""Every record model and its committed JSON Schema agree, and records round-trip through JSON."""

from __future__ import annotations

import json

import jsonschema
import pydantic
import pytest

from smelter.schemas import (
    RECORDS,
    Candidate,
    Dockerfiles,
    Environment,
    Provenance,
    PullRequest,
    Reason,
    Rejection,
    Sample,
    ShardRow,
    Stage,
    Task,
    TestRun,
    TestStatus,
    Validation,
    load_schema,
)
from smelter.schemas.generate import render_schema


def _env() -> Environment:
    return Environment(
        python_version="3.11",
        base_image="smelter/base:bookworm-abc",
        env_image="smelter/env:def",
        instance_image="smelter/instance:123",
        env_hash="def",
        recipe="pip-extras-test",
        install_commands=["uv pip install -e .[test]"],
        test_command=["python", "-m", "pytest"],
        dockerfiles=Dockerfiles(base="FROM x", env="FROM y", instance="FROM z"),
    )


EXAMPLES = {
    "pull_request": PullRequest(
        instance_id="acme__demo-1",
        repo="acme/demo",
        repo_url="/tmp/demo",
        number=1,
        source="git",
        title="Fix it (#1)",
        base_commit="a" * 40,
        merge_commit="b" * 40,
        created_at="2024-01-01T00:00:00Z",
        merged_at="2024-01-02T00:00:00Z",
    ),
    "candidate": Candidate(
        instance_id="acme__demo-1",
        repo="acme/demo",
        repo_url="/tmp/demo",
        pull_number=1,
        base_commit="a" * 40,
        merge_commit="b" * 40,
        created_at="2024-01-01T00:00:00Z",
        problem_statement="It breaks",
        patch="diff --git a/x b/x\n",
        test_patch="",
        environment=_env(),
    ),
    "environment": _env(),
    "task": Task(
        instance_id="acme__demo-1",
        repo="acme/demo",
        base_commit="a" * 40,
        patch="p",
        test_patch="t",
        problem_statement="s",
        created_at="2024-01-01T00:00:00Z",
        FAIL_TO_PASS=["tests/test_x.py::test_a"],
        PASS_TO_PASS=[],
        environment=_env(),
        validation=Validation(
            runs=[
                TestRun(
                    side="before",
                    attempt=0,
                    exit_code=1,
                    duration_seconds=0.5,
                    statuses={"tests/test_x.py::test_a": TestStatus.FAILED},
                )
            ]
        ),
        provenance=Provenance(source="git", pull_number=1, merge_commit="b" * 40),
    ),
    "rejection": Rejection(instance_id="acme__demo-2", stage="mine", reason=Reason.NO_TEST_CHANGES),
    "sample": Sample(
        instance_id="acme__demo-1", text="hi", input_ids=[1, 2], loss_mask=[0, 1], tokenizer="qwen"
    ),
    "shard_row": ShardRow(
        input_ids=[1, 2],
        position_ids=[0, 1],
        loss_mask=[0, 1],
        doc_lengths=[2],
        doc_ids=["acme__demo-1"],
        num_tokens=2,
    ),
}


def test_every_record_has_an_example() -> None:
    assert set(EXAMPLES) == set(RECORDS)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_committed_schema_matches_model(name: str) -> None:
    """Regression: a field added to a model without regenerating its schema file."""
    assert json.loads(render_schema(name, RECORDS[name])) == load_schema(name), (
        f"schemas/{name}.schema.json is stale: run python -m smelter.schemas.generate"
    )


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_validates_against_schema_and_round_trips(name: str) -> None:
    record = EXAMPLES[name]
    doc = json.loads(record.to_json())
    jsonschema.Draft202012Validator(load_schema(name)).validate(doc)
    assert type(record).from_json(record.to_json()) == record


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_schema_rejects_unknown_fields(name: str) -> None:
    doc = json.loads(EXAMPLES[name].to_json()) | {"surprise": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(load_schema(name)).validate(doc)


def test_rejection_reason_is_an_enum_in_the_schema() -> None:
    bad = json.loads(EXAMPLES["rejection"].to_json()) | {"reason": "because"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(load_schema("rejection")).validate(bad)


def test_rejection_stage_is_an_enum_in_the_schema() -> None:
    """Regression: stage names were spelled in four lists, one with a stage no code emits."""
    bad = json.loads(EXAMPLES["rejection"].to_json()) | {"stage": "tokenize"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(load_schema("rejection")).validate(bad)
    with pytest.raises(pydantic.ValidationError):
        Rejection(instance_id="acme__demo-2", stage="tokenize", reason=Reason.TOO_LONG)
    assert EXAMPLES["rejection"].stage is Stage.MINE and Stage.MINE == "mine"


def test_run_until_choices_are_the_stages() -> None:
    from smelter.pipeline.plan import STAGES

    assert tuple(Stage) == STAGES
    assert [str(s) for s in STAGES] == [
        "mine", "snapshot", "environment", "validate", "clean", "render", "pack",
    ]  # fmt: skip
