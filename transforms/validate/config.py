"""The ``[validate]`` options, apart from the Beam stage so the CLI can list them without importing
Beam; every importer takes ``ValidateConfig`` from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smelter.transforms.environment.config import FROM_REGISTRY_SECTION, RegistryConfig

if TYPE_CHECKING:
    from smelter.transforms.adapters.sandbox import SandboxLimits


@dataclass(frozen=True)
class ValidateConfig:
    """How the validate stage runs tests; every field is a CLI flag / TOML key."""

    validate_reruns_before: int = field(
        default=2,
        metadata={
            "min": 1,
            "max": 100,
            "help": "runs with the test patch alone (flaky tests flip between)",
        },
    )
    validate_reruns_after: int = field(
        default=3,
        metadata={
            "min": 1,
            "max": 100,
            "help": "runs with test patch + fix (flaky tests flip between)",
        },
    )
    validate_flaky_bound: float = field(
        default=0.01,
        metadata={"help": "after the runs above, the fail-to-pass candidates alone are rerun "
                          "on both sides until a test failing at random in 10-50% (or "
                          "passing in 10-50%) of runs ends in FAIL_TO_PASS with at most this "
                          "probability; 1 = no extra runs", "min": 0.0001, "max": 1},
    )  # fmt: skip
    validate_timeout_seconds: float = field(
        default=900.0,
        metadata={"min": 1, "help": "wall-clock limit of one test run; the task is rejected"},
    )
    validate_test_timeout_seconds: float = field(
        default=120.0,
        metadata={"help": "limit of one test (pytest-timeout, used when the image has it): a "
                          "hanging test fails alone and the run goes on; 0 = off", "min": 0},
    )  # fmt: skip
    validate_memory: str = field(
        default="4g",
        metadata={
            "min_bytes": 6 * 2**20,
            "help": "memory limit of a test container (no swap beyond it)",
        },
    )
    validate_cpus: float = field(
        default=1.0, metadata={"min": 0.01, "help": "CPUs per test container"}
    )
    validate_pids_limit: int = field(
        default=1024, metadata={"min": 16, "help": "max processes/threads in a test container"}
    )
    validate_tmpfs_size: str = field(
        default="1g",
        metadata={
            "min_bytes": 2**20,
            "help": "size of the tmpfs mounted on /tmp in test containers",
        },
    )
    validate_log_bytes: int = field(
        default=20_000, metadata={"min": 1024, "help": "bytes of each run's output kept (the tail)"}
    )
    validate_parallel_runs: int = field(
        default=2,
        metadata={"min": 1, "help": "test containers of one task running at the same time"},
    )
    validate_drop_privileges: bool = field(
        default=True,
        metadata={"help": "run tests as the owner of the source tree instead of root"},
    )
    validate_keep_instance_images: bool = field(
        default=False,
        metadata={"help": "keep the instance image of every validated candidate, rejected "
                          "ones too (default: only those of tasks that passed validation, "
                          "which `smelter export --harness-images` builds on)"},
    )  # fmt: skip
    validate_early_stop: bool = field(
        default=False,
        metadata={"help": "stop after the first before/after pair when no test can be "
                          "fail-to-pass (saves 3 of 5 runs per reject; a flaky candidate may "
                          "then be reported as passes_before/fails_after instead of all_flaky)"},
    )  # fmt: skip
    validate_pytest_args: tuple[str, ...] = field(
        default=(), metadata={"help": "extra pytest arguments appended to the test command"}
    )
    # Kept tasks' instance images are pushed there and tasks name them there (ValidateFn.run).
    registry: RegistryConfig = field(default=RegistryConfig(), metadata=FROM_REGISTRY_SECTION)

    def limits(self) -> SandboxLimits:
        from smelter.transforms.adapters.sandbox import (
            SandboxLimits,  # Docker SDK: only when validating
        )

        return SandboxLimits(
            timeout_seconds=self.validate_timeout_seconds,
            memory=self.validate_memory,
            cpus=self.validate_cpus,
            pids=self.validate_pids_limit,
            log_bytes=self.validate_log_bytes,
            tmpfs_size=self.validate_tmpfs_size,
        )
