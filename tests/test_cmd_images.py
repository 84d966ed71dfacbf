"""`smelter images …` and `smelter engine ensure`: help, and real runs against the engine."""

from __future__ import annotations

import os
import subprocess
import sys

import docker
import pytest

from smelter.transforms.adapters.base_images import BaseImage

SMELTER = [sys.executable, "-m", "smelter.pipeline.cli"]


def smelter(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([*SMELTER, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("images", "--help"), ("bootstrap", "ls", "prune")),
        (
            ("images", "bootstrap", "--help"),
            ("--suite", "--source", "--all", "bookworm = 3.11", "bullseye = 3.9", "forky = 3.14"),
        ),
        (
            ("images", "prune", "--help"),
            ("--all", "--keep-instances", "dev.smelter=1", "untagged layers of image builds"),
        ),
        (("engine", "ensure", "--help"), ("--no-start", "dockerd --bridge=none")),
    ],
)
def test_help(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    proc = smelter(*args)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps to the terminal's width
    for needle in needles:
        assert needle in text


def test_unknown_suite_is_a_usage_error() -> None:
    proc = smelter("images", "bootstrap", "--suite", "sid")
    assert proc.returncode == 2 and "invalid choice: 'sid'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_suite_and_all_exclude_each_other() -> None:
    proc = smelter("images", "bootstrap", "--all", "--suite", "bullseye")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_engine_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["DOCKER_HOST"] = "tcp://127.0.0.1:9"  # nothing listens on the discard port
    proc = subprocess.run([*SMELTER, "engine", "ensure"], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("smelter: error: no Docker engine answers")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.docker
def test_engine_ensure_and_images_real_runs(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    proc = smelter("engine", "ensure")
    assert proc.returncode == 0 and "answers" in proc.stdout, proc.stderr
    proc = smelter("images", "bootstrap", "--suite", "bookworm", "--source", "local")
    assert proc.returncode == 0, proc.stderr
    assert base_image.tag in proc.stdout and "already present" in proc.stdout
    proc = smelter("images", "ls")
    assert proc.returncode == 0, proc.stderr
    assert base_image.tag in proc.stdout and "rootfs" in proc.stdout
    proc = smelter("images", "prune", "--keep-instances")
    assert proc.returncode == 0 and proc.stdout.startswith("removed "), proc.stderr
