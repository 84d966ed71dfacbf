"""The acceptance check of a rung: the package imports, and pytest collects the touched tests.

Run in a throwaway container of the instance image with no network, after applying the gold
patch and the test patch (and rebuilding a compiled extension, as validation will); the exit
code of ``check_script`` says which step failed. Tried as the test user first, then as root:
the record says which user the tests run as.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import docker

from smelter.schemas import Candidate, Reason
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.environment.dockerfiles import REBUILD_FILE, TEST_USER, WORKDIR

CHECK_DIR = "/smelter-check"


def check_script(import_names: Sequence[str], collect_files: Sequence[str], patches: int) -> str:
    """Shell run in the check container; its exit code says which step failed (91/92/93)."""
    lines = ["set -u", f"cd {WORKDIR} || exit 90"]
    if import_names:
        stmt = "; ".join(f"import {n}" for n in import_names)
        lines.append(f"python -c {shlex.quote(stmt)} || exit 91")
    for i in range(patches):
        lines.append(f"git apply --whitespace=nowarn {CHECK_DIR}/{i}.diff || exit 92")
    if patches:  # the patched C source of a compiled extension, built as validation will
        lines.append(f"if [ -f {REBUILD_FILE} ]; then sh {REBUILD_FILE} > /dev/null 2>&1; fi")
    if collect_files:
        # Only the files still there with both patches applied: a PR that deletes a test
        # module (merged into another, say) has nothing of it to collect.
        files = " ".join(shlex.quote(f) for f in collect_files)
        lines += [
            "set --",
            f'for f in {files}; do [ -e "$f" ] && set -- "$@" "$f"; done',
            'if [ "$#" -gt 0 ]; then',
            "  python -m pytest --collect-only -q -p no:cacheprovider -p no:randomly"
            ' "$@" || exit 93',
            "fi",
        ]
    return "\n".join(lines) + "\n"


CHECK_EXIT_REASONS = {91: Reason.IMPORT_FAILED, 92: Reason.COLLECTION_FAILED,
                      93: Reason.COLLECTION_FAILED}  # fmt: skip


@dataclass(frozen=True)
class Check:
    """What the check found: the failure's reason (None: it passed), the output, and the user
    it passed as (None: root, or it failed)."""

    reason: Reason | None
    output: str
    user: str | None


def run_check(
    client: docker.DockerClient, tag: str, c: Candidate, names: Sequence[str],
    collect: Sequence[str], timeout: int,
) -> Check | None:  # fmt: skip
    """Import + collect with the gold patch, as the test user, then as root if that fails."""
    if not names and not collect:
        return None
    patches = [p for p in (c.patch, c.test_patch) if p.strip()]
    files = {f"{CHECK_DIR}/{i}.diff": p for i, p in enumerate(patches)}
    script = check_script(names, collect, len(patches))
    first: Check | None = None
    for user in (TEST_USER, "root"):
        res = eng.run_container(
            client, tag, ["sh", "-c", script], files=files, user=user,
            timeout=timeout, network="none",
            extra_labels={eng.LABEL_INSTANCE: c.instance_id},
        )  # fmt: skip
        if res.exit_code == 0:
            return Check(None, res.output, None if user == "root" else user)
        reason = (
            Reason.COLLECTION_FAILED
            if res.timed_out
            else CHECK_EXIT_REASONS.get(res.exit_code or 0, Reason.BUILD_FAILED)
        )
        first = first or Check(reason, f"[as {user}, exit {res.exit_code}]\n{res.output}", None)
    return first
