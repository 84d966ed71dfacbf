"""Path classification: components and stems, never substrings."""

from __future__ import annotations

import pytest

from smelter.transforms.testpaths import PathKind, PathRules, classify_path, is_test_path


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("tests/test_calc.py", PathKind.TEST),
        ("test/unit/helpers.py", PathKind.TEST),
        ("testing/python/integration.py", PathKind.TEST),
        ("src/pkg/tests/data/fixture.bin", PathKind.TEST),
        ("tests/README.md", PathKind.TEST),
        ("pkg/foo_test.py", PathKind.TEST),
        ("pkg/test_foo.py", PathKind.TEST),
        ("conftest.py", PathKind.TEST),
        ("src/conftest.py", PathKind.TEST),
        ("pytest/__init__.py", PathKind.CODE),
        ("src/pytest/main.py", PathKind.CODE),
        ("pkg/latest.py", PathKind.CODE),
        ("pkg/contest.py", PathKind.CODE),
        ("pkg/testing.py", PathKind.CODE),
        ("pkg/attest/x.py", PathKind.CODE),
        ("pkg/tests.py", PathKind.CODE),
        ("mytests/a.py", PathKind.CODE),
        ("test_data.json", PathKind.CODE),
        ("docs/index.rst", PathKind.AUX),
        ("docs/conf.py", PathKind.AUX),
        ("docs/img/logo.png", PathKind.AUX),
        ("CHANGELOG.md", PathKind.AUX),
        ("CHANGES.rst", PathKind.AUX),
        ("AUTHORS", PathKind.AUX),
        ("README", PathKind.AUX),
        ("LICENSE.txt", PathKind.AUX),
        ("changelog.d/12.bugfix", PathKind.AUX),
        (".github/workflows/ci.yml", PathKind.AUX),
        ("notes.txt", PathKind.CODE),
        ("src/calc/logo.png", PathKind.CODE),
        ("README.txt", PathKind.AUX),
        ("requirements-dev.txt", PathKind.CODE),
        ("pyproject.toml", PathKind.CODE),
        ("src/calc/core.py", PathKind.CODE),
        ("src/calc/data/latin1.txt", PathKind.CODE),
        ("setup.cfg", PathKind.CODE),
    ],
)
def test_classify_path(path: str, kind: PathKind) -> None:
    assert classify_path(path) is kind


def test_rules_are_configurable() -> None:
    rules = PathRules(test_dir_names=("spec",), test_file_globs=("*_spec.py",))
    assert is_test_path("spec/a.py", rules)
    assert is_test_path("pkg/a_spec.py", rules)
    assert not is_test_path("tests/test_a.py", rules)
    assert classify_path("tests/test_a.py", rules) is PathKind.CODE
