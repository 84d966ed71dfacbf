"""Shared pytest plugins; add your fixture module to ``pytest_plugins`` (one line each)."""

pytest_plugins = [
    "tests.fixtures.docker",
    "tests.fixtures.validate",
    "tests.fixtures.llm_standin",
    "tests.fixtures.pipeline",
    "tests.fixtures.github_standin",
]
