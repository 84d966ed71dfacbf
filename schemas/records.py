"""The records that cross a stage boundary, one model each.

Deliberate choices:
- Pydantic models, frozen and ``extra="forbid"``: a record read back from JSONL is validated, and
  a new field is a schema change (here and in the JSON Schema file), never a loose dict key.
- Every model's JSON Schema lives beside this file as ``<name>.schema.json``; ``generate.py``
  rewrites them and a test fails when the committed files drift from these classes.
- Lists stay lists (FAIL_TO_PASS is ``list[str]``); SWE-bench's JSON-in-a-string form is produced
  only by the exporter.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """Base of every record: immutable, strict about unknown keys, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.model_validate_json(text)


# --------------------------------------------------------------------------- shared parts


class Comment(Record):
    """A comment on an issue or pull request."""

    author: str = ""
    created_at: str = Field(description="ISO 8601, UTC")
    body: str = ""


class LinkedIssue(Record):
    """An issue a PR closes. Title/body are empty when the source cannot fetch them (git)."""

    repo: str = Field(description="owner/name of the repository the issue lives in")
    number: int
    title: str = ""
    body: str = ""
    created_at: str | None = None
    comments: list[Comment] = Field(default_factory=list)


# --------------------------------------------------------------------------- mine


class PullRequest(Record):
    """A merged pull request as mined from git history or GitHub."""

    instance_id: str = Field(description="owner__repo-N, the SWE-bench convention")
    repo: str = Field(description="owner/name")
    repo_url: str = Field(description="local path or clone URL the diff and snapshot come from")
    number: int
    source: Literal["git", "github"]
    title: str
    body: str = ""
    base_commit: str = Field(description="the commit the PR applies to (first parent of merge)")
    head_commit: str | None = Field(default=None, description="PR branch tip, merge style only")
    merge_commit: str
    merge_style: Literal["merge", "squash", "rebase", "unknown"] = "unknown"
    created_at: str = Field(description="ISO 8601, UTC; earliest PR commit for git sources")
    merged_at: str
    author: str = ""
    author_association: str | None = None
    labels: list[str] = Field(default_factory=list)
    commit_messages: list[str] = Field(default_factory=list)
    linked_issues: list[LinkedIssue] = Field(default_factory=list)
    comments: list[Comment] = Field(default_factory=list)
    first_commit_at: str | None = Field(
        default=None, description="date of the PR's first commit; hints are comments before it"
    )
    branch: str = Field(default="", description="the branch whose history it was found on")
    changed_files: list[str] = Field(default_factory=list)
    lines_added: int = 0
    lines_deleted: int = 0
    diff: str = Field(default="", description="git diff --binary base..merge, taken locally")


# --------------------------------------------------------------------------- environment


class Dockerfiles(Record):
    base: str
    env: str
    instance: str


class EnvAttempt(Record):
    """One (Python version, install rung) the environment stage tried, in order."""

    python_version: str
    rung: str
    outcome: str = Field(description="'ok', or the Reason value of the failure")
    error: str = Field(default="", description="the first error line of its log")


class Environment(Record):
    """How to build and test one task; enough to rebuild its image without smelter."""

    python_version: str
    base_image: str
    env_image: str
    instance_image: str
    env_hash: str = Field(description="hash of dependency files + recipe; env images share it")
    recipe: str = Field(description="name of the install-ladder rung that worked")
    install_commands: list[str] = Field(default_factory=list)
    pre_install: list[str] = Field(default_factory=list)
    test_command: list[str] = Field(description="argv run inside the container, file ids appended")
    test_files: list[str] = Field(default_factory=list)
    workdir: str = Field(default="/testbed", description="source tree inside the image")
    test_user: str | None = Field(
        default=None, description="non-root user the tests collected as; None = run as root"
    )
    exclude_newer: str | None = Field(default=None, description="resolver cutoff (PR date)")
    frozen_requirements: list[str] = Field(default_factory=list)
    dockerfiles: Dockerfiles
    build_seconds: float = 0.0
    env_cache_hit: bool = False
    image_size_bytes: int | None = None
    build_log_tail: str = ""
    python_candidates: list[str] = Field(
        default_factory=list, description="versions in the order they were to be tried"
    )
    attempts: list[EnvAttempt] = Field(
        default_factory=list, description="every (version, rung) tried, the last one the winner"
    )
    install_mode: str = Field(
        default="",
        description="how the source was installed: editable (PEP 660, no build isolation), "
        "editable-isolated, legacy-develop (setup.py develop), none (PYTHONPATH)",
    )
    scm_version: str | None = Field(
        default=None, description="version given to a git-versioned build (nearest tag)"
    )
    system_packages: list[str] = Field(
        default_factory=list, description="Debian packages the env layer added (compiler rung)"
    )
    project_version: str = Field(
        default="",
        description="major.minor of the project at base_commit (nearest tag, else a static "
        "version in its packaging files; empty when neither): the task's SWE-bench version",
    )


# --------------------------------------------------------------------------- snapshot


class Candidate(Record):
    """A PR split into a code patch and a test patch, both applying at base_commit."""

    instance_id: str
    repo: str
    repo_url: str
    pull_number: int
    base_commit: str
    merge_commit: str
    created_at: str
    merged_at: str | None = Field(
        default=None, description="ISO 8601, UTC; dependencies resolve as of this date"
    )
    problem_statement: str = Field(description="raw: linked issues' text, else PR title + body")
    hints_text: str = ""
    patch: str = Field(description="non-test code hunks")
    test_patch: str = Field(description="test-file hunks, binary fixtures included")
    aux_patch: str = Field(default="", description="docs, changelog and other non-code files")
    code_files: list[str] = Field(default_factory=list)
    test_files: list[str] = Field(default_factory=list)
    aux_files: list[str] = Field(default_factory=list)
    linked_issues: list[LinkedIssue] = Field(default_factory=list)
    pr_title: str = ""
    pr_body: str = ""
    source: Literal["git", "github"] = "git"
    environment: Environment | None = None


# --------------------------------------------------------------------------- validate


class TestStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"
    ABSENT = "absent"


TestStatus.__test__ = False  # type: ignore[attr-defined]  # not a pytest class despite its name


class TestRun(Record):
    """One pytest run in a fresh container."""

    __test__: ClassVar[bool] = False  # not a pytest class despite its name

    side: Literal["before", "after"]
    attempt: int
    exit_code: int | None
    duration_seconds: float
    statuses: dict[str, TestStatus] = Field(description="pytest node id -> status, from JUnit XML")
    timed_out: bool = False
    report_found: bool = Field(
        default=True, description="pytest's JUnit XML came back; False makes the run void"
    )
    log_tail: str = ""
    result_mismatch: str = Field(
        default="",
        description="how the run's result signals (JUnit report, witness plugin, exit code, "
        "pytest's summary line) disagree; non-empty makes the run void",
    )
    selected: list[str] = Field(
        default_factory=list,
        description="node ids this run was limited to (a flakiness rerun of the fail-to-pass "
        "candidates); empty: every test of the test files ran",
    )


class Validation(Record):
    runs: list[TestRun] = Field(default_factory=list)
    flaky: list[str] = Field(default_factory=list)
    reruns_before: int = 2
    reruns_after: int = 3
    flaky_bound: float = Field(
        default=0.0,
        description="target: chance that a test failing at random (in 10-90% of runs) ends in "
        "FAIL_TO_PASS; 0: no extra runs were planned for it",
    )
    extra_runs_before: int = Field(
        default=0, description="runs of the fail-to-pass candidates alone, test patch only"
    )
    extra_runs_after: int = Field(
        default=0, description="runs of the fail-to-pass candidates alone, with the fix"
    )
    flaky_risk: float = Field(
        default=1.0,
        description="that chance with the runs made: max over q of q^before * (1-q)^after",
    )
    parser: str = "junit_v1"
    test_script: str = Field(default="", description="exact script run in the container")
    seconds: float = 0.0


# --------------------------------------------------------------------------- clean


class Quality(Record):
    raw_problem_statement: str
    normalized_statement: str
    rewritten_statement: str | None = None
    synthesized_statement: str | None = Field(
        default=None,
        description="statement the LLM wrote from the failing tests, their output before the fix "
        "and the test patch, when the task had no usable one",
    )
    used: Literal["raw", "normalized", "rewritten", "synthesized"] = "normalized"
    raw_source: Literal["issue", "pr"] = Field(
        default="pr", description="where raw_problem_statement came from: linked issues or the PR"
    )
    statement_source: Literal["issue", "pr", "rewritten", "synthesized"] = Field(
        default="pr",
        description="where problem_statement came from: issue or PR text (normalised), an LLM "
        "rewrite of it, or an LLM statement synthesized from the tests",
    )
    response_format: str | None = Field(
        default=None,
        description="structured-output form the endpoint was asked for: json_schema, "
        "json_object (with a schema) or text (plain JSON in text)",
    )
    specification_score: int | None = Field(default=None, ge=0, le=3)
    test_alignment_score: int | None = Field(default=None, ge=0, le=3)
    rationale: str = ""
    leak_overlap: float | None = None
    leak_rejected: bool = False
    model: str | None = None
    prompt_version: str | None = None
    normalizer_version: str = "normalize_v1"


class Provenance(Record):
    source: Literal["git", "github"]
    pull_number: int
    pr_url: str = ""
    repo_url: str = Field(
        default="", description="local path or clone URL of the repository (Candidate.repo_url)"
    )
    merge_commit: str
    linked_issues: list[int] = Field(default_factory=list)
    smelter_version: str = ""
    config_hash: str = ""


# --------------------------------------------------------------------------- task


class Task(Record):
    """A validated task; field names are a superset of SWE-bench's."""

    instance_id: str
    repo: str
    base_commit: str
    patch: str
    test_patch: str
    problem_statement: str
    hints_text: str = ""
    created_at: str
    version: str = Field(
        default="", description="SWE-bench's major.minor (Environment.project_version)"
    )
    environment_setup_commit: str = Field(
        default="",
        description="the commit the task's environment counts as built from, shared by every "
        "task of one repository and env image (transforms.versions.setup_commits)",
    )
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    environment: Environment
    validation: Validation
    quality: Quality | None = None
    provenance: Provenance


# --------------------------------------------------------------------------- rejects


class Reason(enum.StrEnum):
    """Every reason a record can leave the pipeline; the funnel report counts these."""

    # mine
    NO_TEST_CHANGES = "no_test_changes"
    NO_CODE_CHANGES = "no_code_changes"
    TOO_MANY_FILES = "too_many_files"
    TOO_MANY_LINES = "too_many_lines"
    OUT_OF_DATE_RANGE = "out_of_date_range"
    NO_LINKED_ISSUE = "no_linked_issue"
    BOT_AUTHOR = "bot_author"
    LICENSE_NOT_ALLOWED = "license_not_allowed"
    NOT_MERGED = "not_merged"
    DUPLICATE = "duplicate"
    # snapshot
    REPO_UNAVAILABLE = "repo_unavailable"
    DIFF_FAILED = "diff_failed"
    UNDECODABLE_DIFF = "undecodable_diff"
    # a file name whose bytes are not UTF-8: no JSON line, Parquet column or node id carries it
    UNDECODABLE_PATH = "undecodable_path"
    PATCH_DOES_NOT_APPLY = "patch_does_not_apply"
    EMPTY_PATCH = "empty_patch"
    # environment
    NO_PYTHON_VERSION = "no_python_version"
    BUILD_FAILED = "build_failed"
    INSTALL_FAILED = "install_failed"
    IMPORT_FAILED = "import_failed"
    COLLECTION_FAILED = "collection_failed"
    ENGINE_ERROR = "engine_error"
    # validate
    PASSES_BEFORE = "passes_before"
    FAILS_AFTER = "fails_after"
    PASS_TO_FAIL = "pass_to_fail"
    COLLECTION_ERROR = "collection_error"
    TIMEOUT = "timeout"
    INFRASTRUCTURE = "infrastructure"
    ALL_FLAKY = "all_flaky"
    NO_TESTS_RUN = "no_tests_run"
    # a run's report, witness, exit code and summary line disagree: void, possibly forged
    RESULT_MISMATCH = "result_mismatch"
    # clean
    STATEMENT_TOO_SHORT = "statement_too_short"
    UNDER_SPECIFIED = "under_specified"
    TESTS_MISALIGNED = "tests_misaligned"
    LLM_ERROR = "llm_error"
    # the model answered, but its reply was unusable: empty, a placeholder, the prompt, no JSON,
    # no scores, or a synthesized statement that leaks the fix
    REPLY_REFUSED = "reply_refused"
    # render / tokenize / pack
    TOO_LONG = "too_long"
    TOKENIZE_FAILED = "tokenize_failed"
    # any stage: an unexpected error confined to one record
    INTERNAL_ERROR = "internal_error"


class Stage(enum.StrEnum):
    """The pipeline's stages in run order: ``--until`` choices, step labels, ``Rejection.stage``
    and metric namespaces. A StrEnum, so ``Stage.MINE == "mine"`` and JSON holds the string."""

    MINE = "mine"
    SNAPSHOT = "snapshot"
    ENVIRONMENT = "environment"
    VALIDATE = "validate"
    CLEAN = "clean"
    RENDER = "render"
    PACK = "pack"


class Rejection(Record):
    """A record that left the pipeline, and why; the dead-letter output of every stage."""

    instance_id: str
    stage: Stage
    reason: Reason
    detail: str = ""
    repo: str = ""


# --------------------------------------------------------------------------- training


class Sample(Record):
    """A rendered, tokenized training document."""

    instance_id: str
    text: str
    input_ids: list[int]
    loss_mask: list[int]
    tokenizer: str
    template: str = "chatml_v1"


class ShardRow(Record):
    """One packed sequence as stored in a Parquet shard."""

    input_ids: list[int]
    position_ids: list[int]
    loss_mask: list[bool] = Field(description="True where the token is trained on (1 bit each)")
    doc_lengths: list[int]
    doc_ids: list[str]
    doc_starts: list[int] = Field(
        default_factory=list,
        description="offset of each piece in its document: 0 unless a long document was split",
    )
    num_tokens: int


RECORDS: dict[str, type[Record]] = {
    "pull_request": PullRequest,
    "candidate": Candidate,
    "environment": Environment,
    "task": Task,
    "rejection": Rejection,
    "sample": Sample,
    "shard_row": ShardRow,
}
