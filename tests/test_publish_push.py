"""``smelter publish --push`` against a Hub stand-in on 127.0.0.1 (tests/fixtures/hub_standin.py).

The folder is built from a run output like tests/test_publish.py's (real tasks from a git repo,
a real shard file); the push goes through huggingface_hub's own upload code. The client is told
to use the git-LFS protocol (``HF_HUB_DISABLE_XET``): with ``hf_xet`` it would send LFS-mode
files to a Xet storage service, which the stand-in does not implement. The endpoint is given by
``HF_ENDPOINT`` set after huggingface_hub was imported, so the test also proves the CLI reads it
at call time. Subprocess runs route every non-loopback request to a dead proxy, so nothing can
reach huggingface.co unnoticed: it would fail the push.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smelter.pipeline.cli import main
from smelter.pipeline.publish.hub import hub_endpoint, push_error_line, push_folder
from tests.fixtures.hub_standin import HubStandin
from tests.test_publish import build_tasks, write_run_output

TOKEN = "hf_standinTOKENacme0123456789"
REPO_ID = "acme/calc-tasks"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, tasks = build_tasks(tmp_path_factory.mktemp("repo"))
    out = tmp_path_factory.mktemp("run") / "out"
    write_run_output(out, tasks)
    return out


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandin]:
    """A running stand-in, and the client pointed at it through the environment only."""
    import huggingface_hub.constants

    with HubStandin({TOKEN: "acme"}) as standin:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token is read
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield standin


def local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def push_cli(out: Path, dest: Path, *extra: str) -> int:
    return main(["publish", str(out), "--dest", str(dest), "--repo-id", REPO_ID, "--push", *extra])


# ------------------------------------------------------------------------------------ success


def test_push_uploads_every_file_byte_identical_and_never_the_token(
    run_output: Path, hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "hf"
    assert push_cli(run_output, dest) == 0
    out, err = capsys.readouterr()
    assert f"pushed to {hub.url}/datasets/{REPO_ID}" in out

    local = local_files(dest)
    assert "data/tasks/test-00000-of-00001.parquet" in local
    assert "data/shards/shard-00000.parquet" in local and "README.md" in local
    remote = hub.repo(REPO_ID).files
    assert set(remote) == set(local) | {".gitattributes"}  # the Hub's own first commit
    for path, data in local.items():
        assert remote[path].data == data, path
    # Parquet went through LFS (batch, signed PUT, verify), text in the commit body.
    lfs = {p for p, f in remote.items() if f.lfs}
    assert lfs == {p for p in local if p.endswith(".parquet")}
    assert set(hub.lfs_objects.values()) == {local[p] for p in lfs}

    kinds = hub.kinds()
    assert "unhandled" not in kinds
    assert kinds[0] == "create_repo" and kinds[-1] == "commit"
    assert kinds.count("storage_put") == kinds.count("lfs_verify") == len(lfs)
    assert {"validate_yaml", "preupload", "lfs_batch"} <= set(kinds)
    # The bearer goes to the Hub API on every call and never to the storage URL.
    assert all(r.authorized == (r.kind != "storage_put") for r in hub.log)
    assert all(r.status == 200 for r in hub.log)
    assert [c.summary for c in hub.repo(REPO_ID).commits] == ["initial commit", "smelter publish"]

    secret = TOKEN.encode()
    assert all(secret not in data for data in local.values())
    assert all(secret not in f.data for f in remote.values())
    assert TOKEN not in out and TOKEN not in err


def test_second_push_of_an_unchanged_folder_commits_nothing_and_a_change_only_that_file(
    run_output: Path, hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "hf"
    assert push_cli(run_output, dest) == 0
    first_sha = hub.repo(REPO_ID).sha
    hub.log.clear()

    # The folder is rebuilt from the same run: same bytes, so the preupload oids all match.
    assert push_cli(run_output, dest) == 0
    assert f"pushed to {hub.url}/datasets/{REPO_ID}" in capsys.readouterr().out
    kinds = hub.kinds()
    assert kinds[0] == "create_repo" and hub.log[0].status == 409  # exists: fine
    assert "commit" not in kinds and "storage_put" not in kinds
    assert kinds[-1] == "repo_info"  # the client reads the head instead of an empty commit
    assert hub.repo(REPO_ID).sha == first_sha

    # One changed file: a commit carrying that file alone.
    card = dest / "README.md"
    card.write_text(card.read_text() + "\nA note added after the first push.\n")
    hub.log.clear()
    url = push_folder(dest, REPO_ID, TOKEN, endpoint=hub.url)
    assert url == f"{hub.url}/datasets/{REPO_ID}"
    commits = hub.repo(REPO_ID).commits
    assert len(commits) == 3 and commits[-1].changed == ("README.md",)
    assert hub.repo(REPO_ID).files["README.md"].data == card.read_bytes()
    assert "storage_put" not in hub.kinds()


def test_hub_endpoint_flag_wins_over_the_environment(
    run_output: Path, hub: HubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    monkeypatch.setenv("HF_ENDPOINT", dead)
    assert push_cli(run_output, tmp_path / "hf", "--hub-endpoint", hub.url + "/") == 0
    assert hub.kinds()[-1] == "commit"
    assert hub_endpoint(None, {"HF_ENDPOINT": "http://x/"}) == "http://x"
    assert hub_endpoint(None, {}) is None


# ------------------------------------------------------------------------------------ failures


def test_bad_token_is_one_line_with_the_hubs_reason_and_creates_nothing(
    run_output: Path,
    hub: HubStandin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "hf_WRONGwrongWRONG0000000000"
    monkeypatch.setenv("HF_TOKEN", wrong)
    assert push_cli(run_output, tmp_path / "hf") == 1
    out, err = capsys.readouterr()
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert line.startswith(f"smelter: error: push to {REPO_ID} failed: ")
    assert "401" in line and "Invalid credentials in Authorization header" in line
    assert wrong not in out + err and TOKEN not in out + err
    assert hub.repos == {} and {r.status for r in hub.log} == {401}


def test_commit_failure_is_one_line_and_leaves_the_repo_at_its_first_commit(
    run_output: Path, hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.fail_next[("POST", "commit")] = (500, "Internal Error")
    assert push_cli(run_output, tmp_path / "hf") == 1
    out, err = capsys.readouterr()
    # huggingface_hub's upload progress bars come first; the error is one line, the last
    line = err.strip().splitlines()[-1]
    assert err.count("smelter: error") == 1 and "Traceback" not in err
    assert line.startswith(f"smelter: error: push to {REPO_ID} failed: ")
    assert "500" in line and "Internal Error" in line and TOKEN not in out + err
    assert [c.summary for c in hub.repo(REPO_ID).commits] == ["initial commit"]
    assert hub.kinds()[-1] == "commit" and hub.log[-1].status == 500


def test_push_error_line_masks_the_token_and_keeps_one_line() -> None:
    class HubError(Exception):
        server_message = "first reason\nsecond"

    line = push_error_line(HubError(f"boom with {TOKEN}\ndetails"), TOKEN)
    assert line == "boom with *** (first reason)"
    assert push_error_line(ValueError(""), TOKEN) == "ValueError"


# ------------------------------------------------------------------------- real process runs


def _cli(hub: HubStandin, out: Path, dest: Path, token: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and "PROXY" not in k.upper()
    }
    dead_proxy = "http://127.0.0.1:9"  # discard port: any request that leaves loopback fails
    env |= {
        "HF_TOKEN": token,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(dest.parent / "hf_home"),
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "ALL_PROXY": dead_proxy,
        "NO_PROXY": "127.0.0.1",
    }
    argv = ["publish", str(out), "--dest", str(dest), "--repo-id", REPO_ID, "--push"]
    return subprocess.run(
        [sys.executable, "-m", "smelter.pipeline.cli", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_cli_process_pushes_and_fails_cleanly(run_output: Path, tmp_path: Path) -> None:
    """The whole process output (logging, progress bars included) never shows the token."""
    with HubStandin({TOKEN: "acme"}) as hub:
        ok = _cli(hub, run_output, tmp_path / "hf", TOKEN)
        assert ok.returncode == 0, ok.stderr
        assert f"pushed to {hub.url}/datasets/{REPO_ID}" in ok.stdout
        assert TOKEN not in ok.stdout + ok.stderr
        assert hub.kinds()[-1] == "commit" and "unhandled" not in hub.kinds()
        assert len(hub.repo(REPO_ID).commits) == 2

        bad = _cli(hub, run_output, tmp_path / "hf2", "hf_WRONGwrongWRONG0000000000")
        assert bad.returncode == 1
        assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
        assert "Invalid credentials in Authorization header" in bad.stderr
        assert "hf_WRONG" not in bad.stdout + bad.stderr
