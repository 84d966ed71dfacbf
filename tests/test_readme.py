"""The README's promises: its two commands exist as written, and its option reference is current."""

from __future__ import annotations

from pathlib import Path

from smelter.pipeline.options import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def test_readme_option_reference_is_generated_from_the_configs() -> None:
    """Regression guard: a stage option added or renamed without updating the README."""
    text = (ROOT / "README.md").read_text()
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == reference_markdown().strip(), (
        "README option reference is stale: regenerate it with "
        "`python -m smelter.pipeline.options` and paste between the markers"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
