"""Every numeric option has a range, checked before Beam starts; every unusable --out is one line.

Regression tests for issue 12: negative ``--mine-max-prs``, ``--validate-pids-limit -1`` (Docker
reads it as "no limit"), ``--validate-timeout-seconds 0``… were accepted silently, and an
``--out`` below a file, under /proc or on a read-only mount failed with a raw traceback.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from smelter.pipeline import cli
from smelter.pipeline import options as opts

SMELTER = str(Path(sys.executable).with_name("smelter"))
# A remote-looking repository: accepted without a look (no network is used: the run stops at
# the option check or at --dry-run), so these tests need no git repository of their own.
REMOTE = "https://example.invalid/acme/widgets.git"


def _numeric_fields() -> Iterator[tuple[str, dataclasses.Field[typing.Any], typing.Any]]:
    for section, cls in opts.load_config_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not opts.is_option(f):
                continue
            base, _ = opts._unwrap_optional(hints[f.name])
            if base in (int, float) or "min_bytes" in f.metadata:
                yield section, f, base


def test_every_numeric_option_has_a_range_that_holds_its_default() -> None:
    """A numeric field added without a range would accept any number again."""
    seen = 0
    for section, f, _ in _numeric_fields():
        seen += 1
        assert opts.accepted_range(f), f"[{section}] {f.name} has no min/max in its metadata"
        assert opts.range_problem(f, f.default) is None, f"[{section}] {f.name} default"
    assert seen >= 40  # every stage's numbers, not an empty loop


def _run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["run", "--repo", REMOTE, "--out", str(Path(tempfile.gettempdir())),
                     "--dry-run", *args])  # fmt: skip
    err = capsys.readouterr().err
    return code, err


def _just_below(f: dataclasses.Field[typing.Any], base: typing.Any) -> list[str]:
    """Values just outside the field's range (and non-finite ones for floats)."""
    if "min_bytes" in f.metadata:
        return ["-1", "0", "4x", "1.5g"]
    out = []
    if f.metadata.get("min") is not None:
        low = f.metadata["min"]
        out.append(str(low - 1 if base is int else low - 0.001))
    if f.metadata.get("max") is not None:
        high = f.metadata["max"]
        out.append(str(high + 1 if base is int else high + 0.001))
    if base is float:
        out += ["nan", "inf"]
    return out


def test_every_numeric_flag_refuses_values_outside_its_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the real CLI entry point: exit 1, one line naming the flag and its range."""
    checked = 0
    for _, f, base in _numeric_fields():
        if f.metadata.get("cli") is False:
            continue
        flag = opts.flag_name(f.name)
        for bad in _just_below(f, base):
            code, err = _run_main(capsys, f"{flag}={bad}")
            lines = err.strip().splitlines()
            assert code == 1, (flag, bad, err)
            assert len(lines) == 1 and lines[0].startswith(f"smelter: error: {flag} "), err
            assert opts.accepted_range(f) in lines[0] and "Traceback" not in err
            checked += 1
        if f.default is not None:
            code, err = _run_main(capsys, f"{flag}={f.default}")  # the default itself is fine
            assert code == 0, (flag, err)
    assert checked >= 80


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("--mine-max-prs", "-1", ">= 0"),
        ("--max-files", "-5", ">= 0"),
        ("--validate-reruns-before", "0", "1..100"),
        ("--validate-reruns-after", "-1", "1..100"),
        ("--validate-timeout-seconds", "0", ">= 1"),
        ("--validate-pids-limit", "-1", ">= 16"),
        ("--validate-log-bytes", "-1", ">= 1024"),
        ("--validate-memory", "0", "at least 6m"),
    ],
)
def test_issue_values_fail_as_one_line_in_a_real_process(flag: str, value: str, shown: str,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """The values the issue names, through the installed console script."""
    proc = subprocess.run(
        [SMELTER, "mine", "--repo", REMOTE, "--out", str(tmp_path / "out"), f"{flag}={value}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"smelter: error: {flag} {value}") and shown in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("toml", "shown"),
    [
        ("[validate]\nvalidate_pids_limit = -1\n", "[validate] validate_pids_limit = -1: out of"),
        ("[mine]\nmine_max_prs = true\n", "[mine] mine_max_prs = True: not a number"),
        ("[validate]\nvalidate_tmpfs_size = '0'\n", "[validate] validate_tmpfs_size = '0': out"),
    ],
)
def test_config_file_values_are_checked_too(
    toml: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    code = cli.main(["run", "--repo", REMOTE, "--out", str(tmp_path), "--config", str(cfg),
                     "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert err.startswith(f"smelter: error: config file: {shown}"), err


def test_help_and_readme_show_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "accepted: >= 16" in " ".join(capsys.readouterr().out.split())
    assert "| `--validate-pids-limit` | `validate_pids_limit` | `1024` | >= 16 |" in (
        opts.reference_markdown()
    )


# --------------------------------------------------------------------------- --out


def _smelter_out(out: str, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, SMELTER, "run", "--repo", REMOTE, "--out", out, "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _assert_one_line(proc: subprocess.CompletedProcess[str], out: str, words: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"smelter: error: --out {out}: {words}"]


def test_out_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile" / "out")
    _assert_one_line(_smelter_out(out), out, "a part of the path is a file, not a folder")


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile")
    _assert_one_line(_smelter_out(out), out, "is a file, not a folder")


def test_out_under_proc() -> None:
    out = "/proc/smelter-out/run"
    _assert_one_line(_smelter_out(out), out,
                     "not a usable output folder (No such file or directory)")  # fmt: skip


def test_out_on_a_read_only_mount(tmp_path: Path) -> None:
    """A real read-only file system: a tmpfs mounted ro in a private mount namespace."""
    ro = tmp_path / "ro"
    ro.mkdir()
    out = str(ro / "out")
    cmd = f"mount -t tmpfs -o ro tmpfs {ro} && exec {SMELTER} run --repo {REMOTE} --out {out} --dry-run"  # noqa: E501
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", cmd], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    _assert_one_line(proc, out, "not a usable output folder (Read-only file system)")


def test_out_without_permission() -> None:
    """As an unprivileged user (root would write anywhere): a folder it may not write to."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop to nobody"
    base = Path(tempfile.mkdtemp(prefix="smelter-noperm-"))
    try:
        base.chmod(0o755)  # nobody may look in, not write
        for out in (str(base / "out"), str(base)):
            proc = _smelter_out(out, "setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups")  # fmt: skip
            _assert_one_line(proc, out, "not a usable output folder (Permission denied)")
        assert os.listdir(base) == []
    finally:
        shutil.rmtree(base)
