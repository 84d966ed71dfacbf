"""The sandbox on a real engine: no network, timeouts, pids and output limits, and no container
left behind — after normal runs, after a SIGTERM mid-validation, and (through prune) after a
SIGKILL. Plus the pure byte-capped reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest

from smelter.schemas.records import Reason
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.adapters.sandbox import (
    LABEL_OWNER_PID,
    Sandbox,
    SandboxLimits,
    prune_containers,
    read_capped,
)
from smelter.transforms.errors import Rejected
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.validate import Validator
from tests.fixtures.validate import (
    BASE_TESTS,
    FIXED_CODE,
    InstanceFactory,
    candidate_for,
    make_repo,
)

HANGING_TESTS = BASE_TESTS + textwrap.dedent(
    """

    import time

    def test_runaway():
        time.sleep(600)
    """
)


def containers_of(client: docker.DockerClient, pid: int) -> list[object]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_OWNER_PID}={pid}"})


# --------------------------------------------------------------------------- pure


def test_read_capped_keeps_the_tail_and_says_so() -> None:
    data, dropped = read_capped([b"abc", b"", b"defgh", b"ij"], 4)
    assert data == b"ghij" and dropped
    assert read_capped([b"ab", b"cd"], 4) == (b"abcd", False)


def test_read_capped_never_holds_more_than_the_cap() -> None:
    seen = []

    def chunks():  # 100 MB in 1 MB chunks; the reader must not keep them
        for _ in range(100):
            yield b"x" * 1_000_000
            seen.append(1)

    data, dropped = read_capped(chunks(), 10)
    assert len(data) == 10 and dropped and len(seen) == 100


# --------------------------------------------------------------------------- real Docker


@pytest.mark.docker
def test_network_is_unreachable_inside(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    probe = textwrap.dedent(
        """
        import os, socket
        print("ifaces", sorted(os.listdir("/sys/class/net")))
        try:
            socket.create_connection(("pypi.org", 443), timeout=5)
            print("CONNECTED")
        except OSError as e:
            print("blocked", type(e).__name__)
        """
    )
    r = Sandbox(docker_client, SandboxLimits(timeout_seconds=60)).run(
        base_image.tag, ["python3", "-c", probe]
    )
    assert r.exit_code == 0, r.log
    assert "ifaces ['lo']" in r.log and "blocked" in r.log and "CONNECTED" not in r.log
    assert containers_of(docker_client, os.getpid()) == []


@pytest.mark.docker
def test_files_go_in_and_come_out_and_missing_ones_are_absent(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    r = Sandbox(docker_client, SandboxLimits(timeout_seconds=60)).run(
        base_image.tag,
        ["sh", "-c", "mkdir -p /smelter/out && tr a-z A-Z < /smelter/in.txt > /smelter/out/o"],
        files={"/smelter/in.txt": "hello"},
        fetch=["/smelter/out/o", "/smelter/out/missing"],
        env={"SMELTER_ATTEMPT": "0"},
    )
    assert r.exit_code == 0 and r.files == {"/smelter/out/o": b"HELLO"}


@pytest.mark.docker
def test_fork_bomb_is_contained_by_the_pids_limit(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    counted = textwrap.dedent(
        """
        import os, time
        n = 0
        while True:
            try:
                pid = os.fork()
            except OSError as e:
                print("forks", n, "errno", e.errno)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
        """
    )
    sandbox = Sandbox(docker_client, SandboxLimits(timeout_seconds=60, pids=64))
    r = sandbox.run(base_image.tag, ["python3", "-c", counted])
    forks = int(r.log.split("forks", 1)[1].split()[0])
    assert r.exit_code == 0 and 0 < forks < 64 and "errno 11" in r.log  # EAGAIN
    # The classic exponential one. Its first shell must stay alive while the orphans multiply
    # (`wait` returned at once: regression, the container ended before any fork could fail).
    # Forks fail at the limit, the sleep ends, and the container is gone with all of them.
    bomb = "b() { b | b & }; b; sleep 3"
    r = Sandbox(docker_client, SandboxLimits(timeout_seconds=20, pids=64)).run(
        base_image.tag, ["sh", "-c", bomb]
    )
    assert "Cannot fork" in r.log and not r.timed_out
    assert containers_of(docker_client, os.getpid()) == []


@pytest.mark.docker
def test_gigabyte_of_output_is_capped(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    flood = "import sys\nb = b'x' * 1048575 + b'\\n'\nfor _ in range(1024):\n"
    flood += "    sys.stdout.buffer.write(b)\nsys.stdout.flush()\nprint('THE END')\n"
    sandbox = Sandbox(docker_client, SandboxLimits(timeout_seconds=300, log_bytes=50_000))
    r = sandbox.run(base_image.tag, ["python3", "-c", flood])
    assert r.exit_code == 0 and not r.timed_out
    assert len(r.log) <= 50_000 and r.log_truncated and r.log.rstrip().endswith("THE END")
    assert containers_of(docker_client, os.getpid()) == []


@pytest.mark.docker
def test_runaway_test_rejects_timeout_and_leaves_nothing(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    repo, base = make_repo(
        tmp_path, {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": HANGING_TESTS}
    )
    cand = candidate_for(
        repo, base=base, image=instance_image(repo), head="main", test_paths=["tests"],
        code_paths=["calc"],
    )  # fmt: skip
    config = ValidateConfig(
        validate_timeout_seconds=6,
        validate_reruns_before=1,
        validate_reruns_after=1,
        validate_keep_instance_images=True,
    )
    started = time.monotonic()
    with pytest.raises(Rejected) as info:
        Validator(docker_client, config).validate(cand)
    assert info.value.reason is Reason.TIMEOUT and "before run 0" in info.value.detail
    assert time.monotonic() - started < 60
    assert containers_of(docker_client, os.getpid()) == []


CHILD = """
import sys
from smelter.schemas.records import Candidate
from smelter.transforms.adapters.docker_engine import connect
from smelter.transforms.adapters.sandbox import install_cleanup_handlers
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.validate import Validator

assert install_cleanup_handlers()
cand = Candidate.model_validate_json(open(sys.argv[1]).read())
config = ValidateConfig(validate_timeout_seconds=300, validate_keep_instance_images=True)
Validator(connect(), config).validate(cand)
"""


def start_validating_child(
    tmp_path: Path, instance_image: InstanceFactory, client: docker.DockerClient
) -> subprocess.Popen[bytes]:
    """A separate process validating a task whose test hangs; returns once its containers run."""
    repo, base = make_repo(
        tmp_path, {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": HANGING_TESTS}
    )
    cand = candidate_for(
        repo, base=base, image=instance_image(repo), head="main", test_paths=["tests"],
        code_paths=["calc"],
    )  # fmt: skip
    (tmp_path / "cand.json").write_text(cand.to_json())
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "cand.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [c for c in containers_of(client, child.pid) if c.status == "running"]
        if len(running) >= 2:  # validate_parallel_runs = 2 by default
            return child
        assert child.poll() is None, "the validating process died early"
        time.sleep(0.3)
    child.kill()
    raise AssertionError("the validating process never started its containers")


@pytest.mark.docker
def test_sigterm_mid_validation_leaves_no_container(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    child = start_validating_child(tmp_path, instance_image, docker_client)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) != 0
    assert containers_of(docker_client, child.pid) == []


@pytest.mark.docker
def test_sigkill_mid_validation_is_cleaned_by_prune(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    child = start_validating_child(tmp_path, instance_image, docker_client)
    child.kill()  # SIGKILL: no handler, no finally; the containers outlive it
    child.wait(timeout=30)
    assert len(containers_of(docker_client, child.pid)) >= 2
    ours_before = len(containers_of(docker_client, os.getpid()))
    assert prune_containers(docker_client) >= 2
    assert containers_of(docker_client, child.pid) == []
    assert len(containers_of(docker_client, os.getpid())) == ours_before  # live owners kept
