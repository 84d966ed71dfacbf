"""Shared pytest plugins; add your fixture module to ``pytest_plugins`` (one line each)."""

import pytest

pytest_plugins = [
    "tests.fixtures.docker",
    "tests.fixtures.validate",
    "tests.fixtures.llm_standin",
    "tests.fixtures.pipeline",
    "tests.fixtures.github_standin",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make unit` selects tests by marker (``not docker``): a test that reaches the engine
    through a fixture without the marker would start Docker there, so it is refused here."""
    unmarked = [
        item.nodeid
        for item in items
        if "docker_client" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("docker") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the Docker engine (a docker_client fixture) but are not marked "
            "@pytest.mark.docker: " + ", ".join(unmarked)
        )
