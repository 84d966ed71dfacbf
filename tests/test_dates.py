"""One date parser (``transforms.dates``) and one cache-folder lookup (``transforms.cache``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from smelter.transforms.cache import cache_dir
from smelter.transforms.dates import parse_utc, utc_iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02", "2024-01-02T00:00:00Z"),  # a bare date: midnight UTC
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05+02:00", "2024-01-02T01:04:05Z"),
        (" 2024-01-02T03:04:05 ", "2024-01-02T03:04:05Z"),  # naive: UTC, not local time
        (1704164645, "2024-01-02T03:04:05Z"),  # git's %at
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),  # PyGithub: naive UTC
        (dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         "2024-01-02T03:04:05Z"),
    ],
)  # fmt: skip
def test_every_date_form_prints_alike(value: object, expected: str) -> None:
    assert utc_iso(value) == expected  # type: ignore[arg-type]
    assert parse_utc(value).tzinfo is dt.UTC  # type: ignore[arg-type]


def test_none_stays_none_and_garbage_is_a_value_error() -> None:
    assert utc_iso(None) is None
    with pytest.raises(ValueError):
        parse_utc("yesterday")


def test_cache_dir_honours_smelter_cache_dir_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression: the GitHub cache and the mirrors ignored SMELTER_CACHE_DIR."""
    monkeypatch.setenv("SMELTER_CACHE_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("github") == tmp_path / "s" / "github"
    assert cache_dir() == tmp_path / "s"
    monkeypatch.delenv("SMELTER_CACHE_DIR")
    assert cache_dir("mirrors") == tmp_path / "x" / "smelter" / "mirrors"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("rootfs") == Path.home() / ".cache" / "smelter" / "rootfs"


def test_every_cache_user_goes_through_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from smelter.transforms.adapters.base_images import default_cache_dir
    from smelter.transforms.adapters.git import GitConfig
    from smelter.transforms.mine.github_config import GitHubConfig

    monkeypatch.setenv("SMELTER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SMELTER_MIRROR_DIR", raising=False)
    assert GitHubConfig().cache_root == tmp_path / "github"
    assert GitConfig().mirror_root == str(tmp_path / "mirrors")
    assert default_cache_dir() == tmp_path
    monkeypatch.setenv("SMELTER_MIRROR_DIR", str(tmp_path / "m"))
    assert GitConfig().mirror_root == str(tmp_path / "m")
    assert GitConfig(mirror_dir="/x").mirror_root == "/x"
