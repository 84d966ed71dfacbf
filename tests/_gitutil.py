"""Helpers that build small real git repositories for the mining tests (not a test module)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from smelter.pipeline.demo.build import write_tree

_ENV_BASE = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}


class Repo:
    """A working repository with deterministic dates: each commit is one hour after the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = 1_700_000_000
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "--initial-branch=main")

    def git(self, *args: str, input: bytes | None = None) -> str:
        self.clock += 3600
        env = {
            **os.environ,
            **_ENV_BASE,
            "GIT_AUTHOR_DATE": f"{self.clock} +0000",
            "GIT_COMMITTER_DATE": f"{self.clock} +0000",
            "HOME": str(self.path),  # no user config leaks in
        }
        out = subprocess.run(
            ["git", "-C", str(self.path), *args],
            env=env,
            input=input,
            capture_output=True,
            check=True,
        )
        return out.stdout.decode().strip()

    def write(self, files: dict[str, bytes | str | None]) -> None:
        write_tree(self.path, files)

    def commit(self, message: str, files: dict[str, bytes | str | None] | None = None) -> str:
        self.write(files or {})
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def merge(self, branch: str, message: str) -> str:
        self.git("merge", "-q", "--no-ff", "-m", message, branch)
        return self.head()
