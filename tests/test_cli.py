"""The command line: --help answers; bad input is one line and a non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMELTER = [sys.executable, "-m", "smelter.pipeline.cli"]


def smelter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [*SMELTER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "usage:" not in ln]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_top_level_help_lists_the_commands() -> None:
    proc = smelter("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "mine", "demo", "report", "publish", "images"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["run", "mine", "demo"])
def test_run_commands_help_shows_every_stage_group(command: str) -> None:
    proc = smelter(command, "--help")
    assert proc.returncode == 0, proc.stderr
    for text in ("--out", "--config", "--dry-run", "mine options", "snapshot options"):
        assert text in proc.stdout
    if command != "demo":
        assert "--repo" in proc.stdout


def test_not_a_repository_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    proc = smelter("mine", "--repo", str(tmp_path / "plain"), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "not a git repository", "plain")
    assert proc.returncode == 1


def test_missing_repository_is_one_line(tmp_path: Path) -> None:
    proc = smelter("mine", "--repo", str(tmp_path / "nope"))
    assert_one_line_error(proc, "repository not found")


def test_unknown_option_is_a_usage_error(git_repo: Path) -> None:
    proc = smelter("mine", "--repo", str(git_repo), "--frobnicate", "3", "--dry-run")
    assert_one_line_error(proc, "unrecognized arguments", "--frobnicate")


def test_unreadable_config_is_one_line(tmp_path: Path, git_repo: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mine\nmax = ")
    proc = smelter("mine", "--repo", str(git_repo), "--config", str(bad), "--dry-run")
    assert_one_line_error(proc, "cannot read config file")
    proc = smelter("mine", "--repo", str(git_repo), "--config", str(tmp_path / "none.toml"))
    assert_one_line_error(proc, "config file not found")


def test_config_file_unknown_section_and_key(tmp_path: Path, git_repo: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[minning]\nx = 1\n")
    assert_one_line_error(
        smelter("mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run"),
        "unknown section [minning]",
    )
    cfg.write_text("[validate]\nno_such_key = 1\n")
    assert_one_line_error(
        smelter("mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run"),
        "unknown key 'no_such_key'",
    )


def test_dry_run_resolves_defaults_file_and_flags(tmp_path: Path, git_repo: Path) -> None:
    """Precedence is defaults < config file < flags, and --dry-run shows the result."""
    from smelter.pipeline.options import load_config_classes

    classes = load_config_classes()
    import dataclasses

    validate_fields = {f.name: f for f in dataclasses.fields(classes["validate"])}
    int_fields = [n for n, f in validate_fields.items() if f.type in ("int", int)]
    assert len(int_fields) >= 2, validate_fields
    from_file, from_flag = int_fields[:2]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[validate]\n{from_file} = 7\n{from_flag} = 8\n")
    proc = smelter(
        "run",
        "--repo",
        str(git_repo),
        "--config",
        str(cfg),
        "--dry-run",
        "--" + from_flag.replace("_", "-"),
        "9",
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["config"]["validate"][from_file] == 7
    assert plan["config"]["validate"][from_flag] == 9
    assert plan["repos"][0]["url"] == str(git_repo.resolve())


def test_beam_options_pass_through(tmp_path: Path, git_repo: Path) -> None:
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", "--direct_num_workers=1")
    assert proc.returncode == 0, proc.stderr


def test_nothing_to_mine(tmp_path: Path) -> None:
    assert_one_line_error(smelter("mine", "--out", str(tmp_path)), "nothing to mine")


def test_no_command_prints_help() -> None:
    proc = smelter()
    assert proc.returncode == 2
    assert "COMMAND" in proc.stdout


# Runs the CLI in a fresh interpreter and fails if a heavy library was imported on the way.
# pandas comes in through Beam; polars and matplotlib through the report library.
_NO_HEAVY_IMPORTS = """
import runpy, sys
sys.argv = ["smelter", *sys.argv[1:]]
try:
    runpy.run_module("smelter.pipeline.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, f"exit {e.code}"
heavy = [m for m in ("apache_beam", "pandas", "polars", "matplotlib") if m in sys.modules]
assert not heavy, f"imported {heavy}"
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["mine", "--help"],
        ["demo", "--help"],
        ["report", "--help"],
        ["images", "--help"],
        ["images", "ls", "--help"],
        ["engine", "--help"],
        ["engine", "ensure", "--help"],
        ["publish", "--help"],
        ["export", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_beam(argv: list[str]) -> None:
    """Regression: ``smelter --help`` took 5 s, nearly all of it importing Beam (and pandas)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_HEAVY_IMPORTS, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: smelter" in proc.stdout


def test_option_reference_imports_no_beam() -> None:
    """The README table is generated from every stage config: none may need Beam to load."""
    code = (
        "import sys\n"
        "from smelter.pipeline import options as o\n"
        "assert list(o.load_config_classes()) == list(o.STAGE_CONFIGS), o.load_config_classes()\n"
        "o.reference_markdown()\n"
        "assert 'apache_beam' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_bad_beam_flag_value_is_one_line(git_repo: Path) -> None:
    """Beam options are checked where Beam is imported (lazily); a bad value is one line, not
    Beam's usage text of every option it has."""
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", "--direct_num_workers=many")
    assert_one_line_error(proc, "--direct_num_workers", "many")


def test_test_paths_are_one_setting_for_every_stage(tmp_path: Path, git_repo: Path) -> None:
    """--test-dir-names ([paths] test_dir_names) reaches both miners and the snapshot stage."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[paths]\ntest_file_globs = ["check_*.py"]\n')
    proc = smelter(
        "mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run",
        "--test-dir-names", "checks", "tests",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)["config"]
    expected = {"test_dir_names": ["checks", "tests"], "test_file_globs": ["check_*.py"]}
    assert config["paths"] == expected
    for section in ("mine", "github", "snapshot"):
        assert config[section]["test_paths"] == expected, section


@pytest.mark.parametrize("old", ["mine_test_dir_names", "snapshot_test_file_globs"])
def test_old_test_path_keys_name_the_new_one(tmp_path: Path, git_repo: Path, old: str) -> None:
    section, new = old.split("_", 1)[0], old.split("_", 1)[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[{section}]\n{old} = ["checks"]\n')
    proc = smelter("mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run")
    assert_one_line_error(proc, f"[{section}] {old}", f"[paths] {new}")
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", flag(old), "checks")
    assert_one_line_error(proc, flag(old), flag(new))


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def test_mirror_dir_is_one_setting_for_every_stage(tmp_path: Path, git_repo: Path) -> None:
    """Regression: the mirror folder was four options (mine_, github_, snapshot_, render_
    mirror_dir), one defaulting to "" where the others used None; set for one stage only, the
    next stage cloned the repository again elsewhere."""
    mirrors = str(tmp_path / "mirrors")
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", "--mirror-dir", mirrors)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)["config"]
    assert config["git"] == {"mirror_dir": mirrors}
    for section in ("mine", "github", "snapshot", "pack"):
        assert config[section]["git"] == {"mirror_dir": mirrors}, section


@pytest.mark.parametrize(
    ("section", "old"),
    [
        ("mine", "mine_mirror_dir"),
        ("github", "github_mirror_dir"),
        ("snapshot", "snapshot_mirror_dir"),
        ("pack", "render_mirror_dir"),
    ],
)
def test_old_mirror_keys_name_the_new_one(
    tmp_path: Path, git_repo: Path, section: str, old: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[{section}]\n{old} = "m"\n')
    proc = smelter("mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run")
    assert_one_line_error(proc, f"[{section}] {old}", "[git] mirror_dir")
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", flag(old), "m")
    assert_one_line_error(proc, flag(old), "--mirror-dir")


def test_filters_are_one_setting_for_both_miners(tmp_path: Path, git_repo: Path) -> None:
    """Regression: the git and the GitHub miner had their own size/test filters under different
    names (mine_max_files, github_max_changed_files…), so one could keep what the other
    rejected."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[filters]\nmax_changed_lines = 300\n")
    proc = smelter(
        "mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run",
        "--max-files", "7", "--no-require-tests-and-code",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)["config"]
    expected = {"max_files": 7, "max_changed_lines": 300, "require_tests_and_code": False}
    assert config["filters"] == expected
    for section in ("mine", "github"):
        assert config[section]["filters"] == expected, section


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("mine", "mine_max_files", "max_files"),
        ("github", "github_max_changed_files", "max_files"),
        ("github", "github_max_changed_lines", "max_changed_lines"),
        ("mine", "mine_require_tests_and_code", "require_tests_and_code"),
    ],
)
def test_old_filter_keys_name_the_new_one(
    tmp_path: Path, git_repo: Path, section: str, old: str, new: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{old} = 1\n")
    proc = smelter("mine", "--repo", str(git_repo), "--config", str(cfg), "--dry-run")
    assert_one_line_error(proc, f"[{section}] {old}", f"[filters] {new}")
    proc = smelter("mine", "--repo", str(git_repo), "--dry-run", flag(old), "1")
    assert_one_line_error(proc, flag(old), flag(new))
