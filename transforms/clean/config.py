"""The ``[clean]`` options, apart from the Beam stage so the CLI can list them without importing
Beam; every importer takes ``CleanConfig`` from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smelter.transforms.mine.github_config import GitHubConfig

# The LLM client reads the same default (``smelter.transforms.adapters.llm`` imports it from here).
DEFAULT_API_KEY_ENV = "SMELTER_LLM_API_KEY"


def _f(default: Any, help: str, **accepted: float) -> Any:
    """A field with its help text; ``accepted`` holds its range (``min=``/``max=``), which
    ``pipeline.options`` checks before a run starts."""
    return field(default=default, metadata={"help": help, **accepted})


@dataclass(frozen=True)
class CleanConfig:
    """Options of the clean stage; each field is a ``--flag`` and a ``[clean]`` TOML key."""

    llm_base_url: str | None = _f(
        None,
        "OpenAI-compatible endpoint incl. version prefix, e.g. http://127.0.0.1:8080/v1; "
        "unset = normaliser only",
    )
    llm_model: str = _f("", "model name sent to the endpoint (required with --llm-base-url)")
    llm_api_key_env: str = _f(
        DEFAULT_API_KEY_ENV, "environment variable holding the API key (never logged or stored)"
    )
    llm_concurrency: int = _f(4, "LLM requests in flight at once per worker", min=1)
    llm_timeout_seconds: float = _f(120.0, "timeout of one LLM request", min=1)
    llm_max_retries: int = _f(
        4, "retries on 429/5xx/timeouts (Retry-After honoured)", min=0, max=100
    )
    llm_backoff_seconds: float = _f(1.0, "first retry wait; doubles per retry, with jitter", min=0)
    llm_temperature: float = _f(0.0, "sampling temperature of both prompts", min=0, max=2)
    llm_max_tokens: int = _f(1536, "completion token limit per request", min=1)
    llm_json_schema: bool = _f(
        True,
        "ask for structured output: the pre-flight probe keeps the first form the endpoint "
        "accepts (json_schema, json_object with a schema), else plain JSON in text",
    )
    llm_cache_dir: str | None = _f(
        None, "directory of cached LLM replies; unset = <stage cache>/llm, i.e. OUT/.cache/llm"
    )
    llm_cost_per_1k_prompt_tokens: float = _f(
        0.0, "price of 1000 prompt tokens, for the report", min=0
    )
    llm_cost_per_1k_completion_tokens: float = _f(
        0.0, "price of 1000 completion tokens, for the report", min=0
    )
    llm_max_input_chars: int = _f(
        24000, "longer statements / test patches are cut in the middle before prompting", min=100
    )
    llm_batch_size: int = _f(
        16, "records buffered per bundle before their requests are sent", min=1
    )
    llm_judge: bool = _f(True, "score specification and test alignment (reject below minimums)")
    clean_prompt: str = _f("clean_v1", "rewrite prompt: a packaged name or a path to a .md file")
    judge_prompt: str = _f("judge_v1", "judge prompt: a packaged name or a path to a .md file")
    llm_synthesize: bool = _f(
        True,
        "write a statement from the failing tests, their output before the fix and the test "
        "patch when a task has none, a too short one, or a title alone (needs --llm-base-url)",
    )
    synthesize_prompt: str = _f(
        "synthesize_v1", "synthesis prompt: a packaged name or a path to a .md file"
    )
    clean_fetch_issues: bool = _f(
        True,
        "a git-mined task whose PR closes an issue takes the issue's text from GitHub when the "
        "token named by [github] github_token_env is set (cached client of the GitHub source)",
    )
    outage_share: float = _f(
        0.5,
        "end the run non-zero when more than this share of one stage's records failed for one "
        "infrastructure reason (llm_error, engine_error); their records stay resumable",
        min=0,
        max=1,
    )
    min_statement_chars: int = _f(
        40, "statements shorter than this after normalising reject", min=0
    )
    min_specification_score: int = _f(
        2, "reject when the judge's specification score is lower", min=0, max=3
    )
    min_test_alignment_score: int = _f(
        2, "reject when the judge's test-alignment score is lower", min=0, max=3
    )
    leak_ngram: int = _f(6, "word n-gram size of the leak check", min=1, max=50)
    leak_threshold: float = _f(
        0.2,
        "refuse a rewrite when this share of its n-grams (or the patch's) is patch code",
        min=0,
        max=1,
    )

    github: GitHubConfig = field(
        default=GitHubConfig(),
        metadata={"from_section": "github", "help": "GitHub API settings, from [github]"},
    )

    @property
    def normalizer_only(self) -> bool:
        return not self.llm_base_url
