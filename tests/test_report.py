"""`smelter report` and the task-quality notebook on output folders built from real records.

The folder below is written with the record models, in the output-folder contract's layout, and
every expected number is derived by hand from the records it holds (see ``FATES``), so a report
that miscounts, double-counts or silently drops a PR fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import jsonlines
import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

from smelter.pipeline import report as rp
from smelter.pipeline import run_folder
from smelter.pipeline.cli import main
from smelter.pipeline.outputs import compute_funnel
from smelter.pipeline.report import frames, funnel, load
from smelter.schemas import (
    Candidate,
    Dockerfiles,
    Environment,
    Provenance,
    PullRequest,
    Quality,
    Reason,
    Rejection,
    ShardRow,
    Task,
    TestRun,
    TestStatus,
    Validation,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "task_quality.ipynb"
MAX_LEN = 64

# instance -> (fate, stage, reason). "task": in tasks.jsonl; "dropped": a task rejected by pack.
FATES: dict[str, tuple[str, str | None, Reason | None]] = {
    "acme__widgets-1": ("task", None, None),
    "acme__widgets-2": ("task", None, None),
    "acme__widgets-3": ("rejected", "mine", Reason.NO_TEST_CHANGES),  # not in pull_requests.jsonl
    "acme__widgets-4": ("rejected", "snapshot", Reason.PATCH_DOES_NOT_APPLY),
    "acme__widgets-5": ("rejected", "validate", Reason.PASSES_BEFORE),
    "acme__widgets-6": ("rejected", "validate", Reason.ALL_FLAKY),
    "acme__widgets-7": ("rejected", "clean", Reason.UNDER_SPECIFIED),
    "acme__widgets-8": ("task", None, None),
    "acme__widgets-9": ("dropped", "pack", Reason.TOO_LONG),
    "acme__widgets-10": ("rejected", "snapshot", Reason.EMPTY_PATCH),
    "acme__gadgets-1": ("task", None, None),
    "acme__gadgets-2": ("rejected", "environment", Reason.INSTALL_FAILED),
    "acme__gadgets-3": ("task", None, None),  # split over two sequences
    "acme__gadgets-4": ("rejected", "mine", Reason.BOT_AUTHOR),  # also in pull_requests.jsonl
}
TASK_IDS = [i for i, (f, _, _) in FATES.items() if f in ("task", "dropped")]
CANDIDATE_IDS = [
    i for i, (f, s, _) in FATES.items() if f != "rejected" or s not in ("mine", "snapshot")
]
EXPECTED_STEPS = {
    "mined": 14,
    "candidates": 10,
    "environments built": 9,
    "validated": 7,
    "cleaned": 6,
    "packed": 5,
}


def repo_of(iid: str) -> str:
    return iid.split("__")[0] + "/" + iid.split("__")[1].rsplit("-", 1)[0]


def number_of(iid: str) -> int:
    return int(iid.rsplit("-", 1)[1])


def code_patch(n: int) -> str:
    """A two-file, three-hunk code patch whose body has a removed line starting with '--'."""
    return (
        f"diff --git a/src/pkg/mod{n}.py b/src/pkg/mod{n}.py\n"
        "index 1111111..2222222 100644\n"
        f"--- a/src/pkg/mod{n}.py\n"
        f"+++ b/src/pkg/mod{n}.py\n"
        "@@ -1,4 +1,4 @@\n"
        " def f(x):\n"
        "--- x\n"
        "+    return x + 1\n"
        " \n"
        " # end\n"
        "@@ -10,2 +10,3 @@ def g():\n"
        "     pass\n"
        "+    return None\n"
        " \n"
        "diff --git a/src/pkg/util.py b/src/pkg/util.py\n"
        "--- a/src/pkg/util.py\n"
        "+++ b/src/pkg/util.py\n"
        "@@ -1 +1 @@\n"
        "-A = 1\n"
        "+A = 2\n"
        "\\ No newline at end of file\n"
    )


# code_patch: 2 files, 3 hunks, added 3, removed 2
CODE_STATS = frames.DiffStats(files=2, hunks=3, added=3, removed=2)


def test_patch(n: int, tests: int) -> str:
    body = "".join(f"+def test_case_{k}():\n+    assert f({k}) == {k + 1}\n" for k in range(tests))
    return (
        f"diff --git a/tests/test_mod{n}.py b/tests/test_mod{n}.py\n"
        "new file mode 100644\n"
        "--- /dev/null\n"
        f"+++ b/tests/test_mod{n}.py\n"
        f"@@ -0,0 +1,{2 * tests} @@\n" + body
    )


test_patch.__test__ = False  # type: ignore[attr-defined]  # a builder, not a pytest test


def pull_request(iid: str) -> PullRequest:
    n = number_of(iid)
    return PullRequest(
        instance_id=iid,
        repo=repo_of(iid),
        repo_url=f"/src/{repo_of(iid)}",
        number=n,
        source="git",
        title=f"Fix bug {n}",
        body="Fixes #100",
        base_commit=f"{n:040x}",
        merge_commit=f"{n + 1000:040x}",
        merge_style="merge" if n % 2 else "squash",
        created_at="2024-03-01T10:00:00Z",
        merged_at="2024-03-02T10:00:00Z",
        changed_files=[f"src/pkg/mod{n}.py", f"tests/test_mod{n}.py"],
        lines_added=5,
        lines_deleted=2,
        diff=code_patch(n) + test_patch(n, 1),
    )


def environment(iid: str) -> Environment:
    n = number_of(iid)
    gadgets = "gadgets" in iid
    return Environment(
        python_version="3.9" if gadgets else "3.11",
        base_image="smelter/base:bookworm",
        env_image=f"smelter/env:{'g' if gadgets else 'w'}",
        instance_image=f"smelter/instance:{n}",
        env_hash="g" if gadgets else "w",
        recipe="requirements-txt" if gadgets else "pip-extras-test",
        test_command=["python", "-m", "pytest"],
        dockerfiles=Dockerfiles(base="FROM scratch", env="FROM base", instance="FROM env"),
        build_seconds=10.0 + n,
        env_cache_hit=n > 1,
        image_size_bytes=(200 + n) * 1_000_000,
    )


RAW = "<!-- template -->\nThe widget overflows when x is large.\n- [x] I read the docs\n"


def task(iid: str) -> Task:
    n = number_of(iid)
    f2p = [f"tests/test_mod{n}.py::test_case_{k}" for k in range(n % 3 + 1)]
    p2p = [f"tests/test_old.py::test_{k}" for k in range(n % 12)]  # bounded: the benchmark
    flaky = ["tests/test_net.py::test_timing"] if iid == "acme__widgets-8" else []
    runs = []
    for side, count in (("before", 2), ("after", 3)):
        for attempt in range(count):
            ok = side == "after"
            statuses = {t: TestStatus.PASSED if ok else TestStatus.FAILED for t in f2p}
            statuses |= {t: TestStatus.PASSED for t in p2p}
            runs.append(
                TestRun(
                    side=side,
                    attempt=attempt,
                    exit_code=0 if ok else 1,
                    duration_seconds=1.0 + n % 50 / 10 + attempt,
                    statuses=statuses,
                )
            )
    if iid == "acme__gadgets-3":
        quality = None  # the cleaner did not see this one
        statement = RAW
    elif n == 1:
        quality = Quality(
            raw_problem_statement=RAW,
            normalized_statement="The widget overflows when x is large.",
            rewritten_statement="Calling f with a large x overflows; it should return x + 1.",
            used="rewritten",
            specification_score=3,
            test_alignment_score=2,
            leak_overlap=0.05,
            model="tiny-judge",
            prompt_version="clean_prompt_v1",
        )
        statement = quality.rewritten_statement or ""
    else:
        quality = Quality(
            raw_problem_statement=RAW,
            normalized_statement="The widget overflows when x is large.",
            used="normalized",
            specification_score=n % 4,
            test_alignment_score=3,
            leak_overlap=0.0,
            model="tiny-judge",
            prompt_version="clean_prompt_v1",
        )
        statement = quality.normalized_statement
    return Task(
        instance_id=iid,
        repo=repo_of(iid),
        base_commit=f"{n:040x}",
        patch=code_patch(n),
        test_patch=test_patch(n, len(f2p)),
        problem_statement=statement,
        created_at="2024-03-01T10:00:00Z",
        FAIL_TO_PASS=f2p,
        PASS_TO_PASS=p2p,
        environment=environment(iid),
        validation=Validation(runs=runs, flaky=flaky, seconds=20.0 + n),
        quality=quality,
        provenance=Provenance(source="git", pull_number=n, merge_commit=f"{n + 1000:040x}"),
    )


def candidate(iid: str) -> Candidate:
    n = number_of(iid)
    return Candidate(
        instance_id=iid,
        repo=repo_of(iid),
        repo_url=f"/src/{repo_of(iid)}",
        pull_number=n,
        base_commit=f"{n:040x}",
        merge_commit=f"{n + 1000:040x}",
        created_at="2024-03-01T10:00:00Z",
        problem_statement=RAW,
        patch=code_patch(n),
        test_patch=test_patch(n, 1),
    )


def shard_row(docs: list[tuple[str, int]]) -> ShardRow:
    ids, pos, mask = [], [], []
    for k, (_, length) in enumerate(docs):
        ids += [k + 1] * length
        pos += list(range(length))
        mask += [0] * (length // 2) + [1] * (length - length // 2)
    return ShardRow(
        input_ids=ids,
        position_ids=pos,
        loss_mask=mask,
        doc_lengths=[length for _, length in docs],
        doc_ids=[d for d, _ in docs],
        num_tokens=len(ids),
    )


SHARDS = {
    "shard-00000.parquet": [
        [("acme__widgets-1", 40), ("acme__widgets-2", 20)],
        [("acme__gadgets-3#0", MAX_LEN)],
    ],
    "shard-00001.parquet": [
        [("acme__gadgets-3#1", 10), ("acme__widgets-8", 30), ("acme__gadgets-1", 12)],
    ],
}


def write_jsonl(path: Path, records: list) -> None:
    with jsonlines.open(path, "w") as w:
        w.write_all([r.model_dump(mode="json") for r in records])


def rejects() -> list[Rejection]:
    return [
        Rejection(instance_id=i, stage=s, reason=r, detail=f"{r.value} for {i}", repo=repo_of(i))
        for i, (_, s, r) in FATES.items()
        if s and r
    ]


def funnel_json() -> dict:
    rej = rp.rejection_reasons(frames.reject_frame(rejects()))
    stages, n = [], 14
    for stage in ("mine", "snapshot", "environment", "validate", "clean", "pack"):
        reasons = {r: c for s, r, c in rej.iter_rows() if s == stage}
        out = n - sum(reasons.values())
        stages.append({"stage": stage, "in": n, "out": out, "rejected": reasons})
        n = out
    return {"stages": stages, "repos": {"acme/widgets": {}, "acme/gadgets": {}}}


def build_output(out: Path) -> Path:
    """A complete output folder of a run over two repositories."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out / "pull_requests.jsonl", [pull_request(i) for i in FATES if i != "acme__widgets-3"]
    )
    write_jsonl(out / "candidates.jsonl", [candidate(i) for i in CANDIDATE_IDS])
    write_jsonl(out / "tasks.jsonl", [task(i) for i in TASK_IDS])
    write_jsonl(out / "rejects.jsonl", rejects())
    (out / "funnel.json").write_text(json.dumps(funnel_json()))
    (out / "run.json").write_text(
        json.dumps(
            {
                "config": {"pack_max_len": MAX_LEN, "validate_reruns_after": 3},
                "versions": {"smelter": "0.1.0", "python": "3.11"},
                "stage_seconds": {"mine": 1.5, "validate": 40.2},
            }
        )
    )
    (out / "shards").mkdir()
    for name, rows in SHARDS.items():
        pl.DataFrame([shard_row(r).model_dump() for r in rows]).write_parquet(out / "shards" / name)
    (out / "shards" / "stats.json").write_text(
        json.dumps({"max_len": MAX_LEN, "sequences": 3, "dropped": 1, "split": 1})
    )
    return out


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return build_output(tmp_path / "out")


# --------------------------------------------------------------------------- pure measures


def test_diff_stats_counts_by_hunk_headers() -> None:
    assert frames.diff_stats(code_patch(1)) == CODE_STATS
    assert frames.diff_stats(test_patch(1, 3)) == frames.DiffStats(
        files=1, hunks=1, added=6, removed=0
    )
    binary = (
        "diff --git a/tests/data.bin b/tests/data.bin\nnew file mode 100644\n"
        "index 0000000..e69de29\nGIT binary patch\nliteral 4\nLcmZQzU|;|M00aO5\n\nliteral 0\n"
        "HcmV?d00001\n\n"
    )
    assert frames.diff_stats(binary) == frames.DiffStats(files=1, hunks=0, added=0, removed=0)
    plain = "--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n"
    assert frames.diff_stats(plain) == frames.DiffStats(files=1, hunks=1, added=1, removed=1)
    assert frames.diff_stats("") == frames.DiffStats(0, 0, 0, 0)


def test_statement_change_and_ids() -> None:
    ratio, sim = frames.statement_change("abcd", "abcd")
    assert (ratio, sim) == (1.0, 1.0)
    ratio, sim = frames.statement_change("abcdefgh", "abcd")
    assert ratio == 0.5 and 0 < sim < 1
    assert frames.statement_change("", "x")[0] is None
    assert frames.repo_of("psf__requests-1234") == "psf/requests"
    assert frames.repo_of("weird") == ""
    assert frames.doc_instance_id("a__b-1#2") == "a__b-1"
    assert frames.normalize_stage("Validation") == "validate"


# --------------------------------------------------------------------------- full folder


def test_funnel_adds_up_and_matches_records(out_dir: Path) -> None:
    data = rp.load_output(out_dir)
    assert all(data.present.values()) and data.problems == ()
    outcomes = rp.outcomes_of(data)
    assert outcomes.height == len(FATES)
    fates = dict(outcomes.select("instance_id", "outcome").iter_rows())
    for iid, (fate, _, _) in FATES.items():
        assert fates[iid] == ("rejected" if fate == "rejected" else "task"), iid

    steps = rp.funnel_steps(outcomes, rp.steps_with_evidence(data.present, data.rejects))
    assert dict(steps.select("step", "count").iter_rows()) == EXPECTED_STEPS
    # Each drop is explained by rejections at exactly that step, none pending.
    assert steps.get_column("dropped").to_list()[1:] == steps.get_column("rejected").to_list()[1:]
    assert steps.get_column("pending").to_list()[1:] == [0] * 5

    check = funnel.funnel_check(outcomes, data.present)
    assert check.balanced, check.messages
    assert (check.mined, check.tasks, check.rejected) == (14, 6, 8)
    assert check.summary == "14 mined = 6 tasks + 8 rejected"

    reasons = rp.rejection_reasons(data.rejects)
    assert reasons.get_column("count").sum() == 9
    assert reasons.row(0) == ("mine", "bot_author", 1)  # pipeline order, then count
    assert reasons.filter(pl.col("stage") == "validate").height == 2

    by_repo = {r["repo"]: r for r in rp.funnel_by_repo(outcomes).iter_rows(named=True)}
    assert by_repo["acme/widgets"]["mined"] == 10 and by_repo["acme/widgets"]["cleaned"] == 4
    assert by_repo["acme/widgets"]["packed"] == 3  # widgets-9 dropped by pack
    assert by_repo["acme/gadgets"]["candidates"] == 3 and by_repo["acme/gadgets"]["packed"] == 2
    per_repo_reasons = rp.rejection_reasons(data.rejects, by_repo=True)
    assert per_repo_reasons.filter(pl.col("repo") == "acme/gadgets").height == 2


def test_frames_from_records_equal_frames_from_the_folder(out_dir: Path) -> None:
    """In-memory records (a pipeline or notebook holding them) give the same frames as the files."""
    data = rp.load_output(out_dir)
    tasks = [task(i) for i in TASK_IDS]
    candidates = [candidate(i) for i in CANDIDATE_IDS]
    assert frames.task_frame(tasks).equals(data.tasks)
    assert frames.test_run_frame(tasks).equals(data.runs)
    assert frames.candidate_frame(candidates).equals(data.candidates)
    assert frames.environment_frame(candidates, tasks).equals(data.environments)
    assert frames.reject_frame(rejects()).equals(data.rejects)


def test_task_quality_matches_records(out_dir: Path) -> None:
    data = rp.load_output(out_dir)
    records = {t.instance_id: t for t in map(task, TASK_IDS)}
    tasks = data.tasks
    assert sorted(tasks.get_column("instance_id")) == sorted(records)
    for row in tasks.iter_rows(named=True):
        t = records[row["instance_id"]]
        assert row["f2p"] == len(t.FAIL_TO_PASS) and row["p2p"] == len(t.PASS_TO_PASS)
        assert (row["patch_files"], row["patch_hunks"], row["patch_lines"]) == (2, 3, 5)
        assert row["test_patch_lines"] == 2 * len(t.FAIL_TO_PASS)

    sizes = {r["metric"]: r for r in rp.task_sizes(tasks).iter_rows(named=True)}
    f2p = [len(t.FAIL_TO_PASS) for t in records.values()]
    assert sizes["f2p"]["max"] == max(f2p) and sizes["f2p"]["mean"] == pytest.approx(
        sum(f2p) / len(f2p)
    )

    durations = {r["side"]: r for r in rp.test_durations(data.runs).iter_rows(named=True)}
    assert durations["before"]["runs"] == 2 * 6 and durations["after"]["runs"] == 3 * 6
    all_after = [
        r.duration_seconds for t in records.values() for r in t.validation.runs if r.side == "after"
    ]
    assert durations["after"]["max_s"] == pytest.approx(max(all_after))
    assert durations["after"]["total_s"] == pytest.approx(sum(all_after))

    flaky = rp.flaky_tests(tasks)
    assert flaky.rows() == [("acme__widgets-8", "acme/widgets", "tests/test_net.py::test_timing")]

    scores = rp.judge_scores(tasks)
    spec = dict(
        scores.filter(pl.col("kind") == "specification_score").select("score", "tasks").iter_rows()
    )
    expected: dict[int | None, int] = {}
    for t in records.values():
        s = t.quality.specification_score if t.quality else None
        expected[s] = expected.get(s, 0) + 1
    assert spec == expected

    cleaning = {r["statement_used"]: r for r in rp.cleaning_summary(tasks).iter_rows(named=True)}
    assert cleaning["rewritten"]["tasks"] == 2  # widgets-1 and gadgets-1
    assert cleaning["not cleaned"]["unchanged"] == 1
    assert cleaning["normalized"]["median_length_ratio"] < 1

    ex = rp.example_tasks(tasks, 2)
    assert ex.height == 2 and ex.get_column("statement_used").to_list() == ["rewritten"] * 2
    assert sorted(ex.get_column("repo")) == ["acme/gadgets", "acme/widgets"]  # one per repo first
    assert rp.filter_tasks(tasks, repo="acme/gadgets").height == 2
    assert rp.filter_tasks(tasks, min_specification_score=3).height == 2
    assert rp.filter_rejects(data.rejects, stage="validate", reason="all_flaky").height == 1
    assert data.task("acme__widgets-8").validation.flaky == ["tests/test_net.py::test_timing"]


def test_environments_and_packing(out_dir: Path) -> None:
    data = rp.load_output(out_dir)
    envs = data.environments
    assert envs.height == 6
    recipes = {r["recipe"]: r for r in rp.environments_by_recipe(envs).iter_rows(named=True)}
    assert recipes["pip-extras-test"]["built"] == 4 and recipes["requirements-txt"]["built"] == 2
    assert recipes["pip-extras-test"]["env_images"] == 1
    assert recipes["pip-extras-test"]["cache_hits"] == 3  # widgets-2, -8, -9
    assert dict(rp.python_versions(envs).iter_rows()) == {"3.11": 4, "3.9": 2}
    summary = dict(rp.environment_summary(envs, data.rejects).iter_rows())
    assert summary["environment-stage rejections"] == 1
    assert summary["build success rate"] == pytest.approx(6 / 7)  # recorded environments only
    summary = dict(rp.environment_summary(envs, data.rejects, rp.outcomes_of(data)).iter_rows())
    assert summary["environments built"] == 9
    assert summary["environments recorded (tasks, candidates)"] == 6
    assert summary["build success rate"] == pytest.approx(9 / 10)  # funnel: 9 built, 1 failed
    assert summary["max image size MB"] == pytest.approx(209)

    max_len, where = rp.sequence_length(data.shards, data.shard_stats, data.run_json)
    assert (max_len, where) == (MAX_LEN, "shards/stats.json")
    assert rp.sequence_length(data.shards, None, data.run_json) == (MAX_LEN, "run.json")
    packing = dict(rp.packing_summary(data.shards, max_len, data.rejects, data.shard_stats).rows())
    rows = [r for rs in SHARDS.values() for r in rs]
    tokens = sum(n for r in rows for _, n in r)
    assert packing["sequences"] == 3 and packing["tokens"] == tokens
    assert packing["lower bound ceil(tokens/length)"] == -(-tokens // MAX_LEN)
    assert packing["documents"] == 5 and packing["documents split"] == 1
    assert packing["documents dropped (render/pack rejects)"] == 1
    assert packing["mean fill"] == pytest.approx(tokens / (3 * MAX_LEN))
    per_shard = rp.shard_tokens(data.shards, max_len)
    assert per_shard.get_column("tokens").to_list() == [124, 52]


def test_report_files_reference_their_plots(out_dir: Path, capsys) -> None:
    assert main(["report", str(out_dir), "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "funnel adds up" in printed and "14 mined = 6 tasks + 8 rejected" in printed
    report_dir = out_dir / "report"
    page = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert pngs == sorted(
        f"{n}.png"
        for n in ("funnel", "task_sizes", "quality", "test_durations", "environments", "packing")
    )
    for name in pngs:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert sorted(srcs) == pngs and all((report_dir / s).is_file() for s in srcs)
    assert sorted(re.findall(r"\]\(([^)]+\.png)\)", md)) == pngs
    for text in (page, md):
        assert "The funnel adds up: 14 mined = 6 tasks + 8 rejected" in text
        assert "patch_does_not_apply" in text and "acme/gadgets" in text
        assert "tests/test_net.py::test_timing" in text  # flaky test listed
        assert "Calling f with a large x overflows" in text  # example statement after cleaning
        assert "Missing" not in text
    # HTML escapes record text instead of injecting it.
    assert "<!-- template -->" not in page and "&lt;!-- template --&gt;" in page


def test_report_paths_are_configurable(out_dir: Path, tmp_path: Path) -> None:
    html_path, md_path = tmp_path / "pub" / "r.html", tmp_path / "pub" / "md" / "r.md"
    assert main(["report", str(out_dir), "--html", str(html_path), "--md", str(md_path)]) == 0
    src = re.findall(r"<img src='([^']+)'", html_path.read_text())
    assert src and all((html_path.parent / s).resolve().is_file() for s in src)
    links = re.findall(r"\]\(([^)]+\.png)\)", md_path.read_text())
    assert links and all((md_path.parent / s).resolve().is_file() for s in links)


# --------------------------------------------------------------------------- mismatches


def test_mismatch_is_reported_loudly(out_dir: Path, capsys) -> None:
    # widgets-1 also rejected at validation, a new PR with no outcome, a task nobody mined.
    with jsonlines.open(out_dir / "rejects.jsonl", "a") as w:
        w.write(
            Rejection(
                instance_id="acme__widgets-1", stage="validate", reason=Reason.TIMEOUT
            ).model_dump(mode="json")
        )
    with jsonlines.open(out_dir / "pull_requests.jsonl", "a") as w:
        w.write(pull_request("acme__widgets-11").model_dump(mode="json"))
    with jsonlines.open(out_dir / "tasks.jsonl", "a") as w:
        w.write(task("acme__ghost-5").model_dump(mode="json"))

    data = rp.load_output(out_dir)
    check = funnel.funnel_check(rp.outcomes_of(data), data.present)
    assert not check.balanced
    assert (check.mined, check.pending, check.multiple, check.orphans) == (15, 1, 1, 1)
    joined = "\n".join(check.messages)
    assert "1 PRs have no outcome: acme__widgets-11" in joined
    assert "more than one outcome" in joined and "acme__widgets-1" in joined
    assert "not in pull_requests.jsonl: acme__ghost-5" in joined
    assert "neither packed nor rejected" in joined  # ghost task is in no shard
    # The run's funnel.json names the same PRs.
    doc = funnel.funnel_document(out_dir)
    assert (doc["unaccounted"], doc["duplicated"]) == (["acme__widgets-11"], ["acme__widgets-1"])

    assert main(["report", str(out_dir), "--strict"]) == 1
    assert "FUNNEL DOES NOT ADD UP" in capsys.readouterr().out
    page = (out_dir / "report" / "report.html").read_text()
    assert "THE FUNNEL DOES NOT ADD UP" in page and "acme__widgets-11" in page


def test_funnel_json_is_the_reports_funnel(out_dir: Path) -> None:
    """What `smelter run` writes to funnel.json is the hand-derived funnel of the records."""
    doc = funnel.funnel_document(out_dir)
    assert compute_funnel(out_dir) == doc
    assert [s["stage"] for s in doc["stages"]] == list(funnel.FUNNEL_STAGES)
    stages = {s["stage"]: s for s in doc["stages"]}
    for expected in funnel_json()["stages"]:
        assert stages[expected["stage"]] == expected
    assert stages["render"] == {"stage": "render", "in": 6, "out": 6, "rejected": {}}
    # gadgets-4 is in pull_requests.jsonl and rejected by mine: one PR, mined once (14, not 15).
    assert stages["mine"]["in"] == 14
    assert doc["files"] == {"pull_requests": 13, "candidates": 10, "tasks": 6}
    assert doc["unaccounted"] == [] and doc["duplicated"] == []
    assert doc["repos"]["acme/gadgets"] == {
        "environment:install_failed": 1,
        "mine:bot_author": 1,
        "mined": 4,
        "tasks": 2,
    }
    assert [s["stage"] for s in funnel.funnel_document(out_dir, "snapshot")["stages"]] == [
        "mine",
        "snapshot",
    ]


def test_funnel_json_names_a_pr_with_no_outcome_after_a_full_run(out_dir: Path) -> None:
    """Regression: the run's own funnel listed PRs with no outcome only for --until validate or
    clean, so a full run that lost a PR wrote ``unaccounted: []`` while `smelter report` said the
    funnel did not add up."""
    with jsonlines.open(out_dir / "pull_requests.jsonl", "a") as w:
        w.write(pull_request("acme__widgets-11").model_dump(mode="json"))
    assert funnel.funnel_document(out_dir, "pack")["unaccounted"] == ["acme__widgets-11"]
    # Stopped on purpose after snapshot: PRs waiting in candidates.jsonl are expected, the PR
    # that snapshot neither emitted nor rejected is still lost.
    assert funnel.funnel_document(out_dir, "snapshot")["unaccounted"] == ["acme__widgets-11"]
    assert not rp.check_of(rp.load_output(out_dir)).balanced


def test_unreadable_lines_are_counted_not_fatal(out_dir: Path) -> None:
    with open(out_dir / "tasks.jsonl", "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"instance_id": "x"}) + "\n")
    data = rp.load_output(out_dir)
    assert data.tasks.height == 6
    assert len(data.problems) == 2
    assert "not JSON" in data.problems[0] and "tasks.jsonl record" in data.problems[1]
    files = rp.write_report(data)
    assert "Unreadable records" in files.markdown.read_text()


# --------------------------------------------------------------------------- partial / empty


def test_run_stopped_after_mining(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mined = [i for i, (_, s, _) in FATES.items() if s != "mine"]
    write_jsonl(out / "pull_requests.jsonl", [pull_request(i) for i in mined])
    write_jsonl(out / "rejects.jsonl", [r for r in rejects() if r.stage == "mine"])

    data = rp.load_output(out)
    outcomes = rp.outcomes_of(data)
    steps = rp.funnel_steps(outcomes, rp.steps_with_evidence(data.present, data.rejects))
    assert steps.get_column("count").to_list() == [14, None, None, None, None, None]
    check = funnel.funnel_check(outcomes, data.present)
    assert (check.mined, check.rejected, check.pending) == (14, 2, 12)
    assert "no stage output after 'mine': the run did not finish" in check.messages[0]

    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "missing:" in printed and "tasks.jsonl" in printed
    md = (out / "report" / "report.md").read_text()
    for part in ("candidates.jsonl", "tasks.jsonl", "shards/*.parquet"):
        assert f"{part} —" in md
    assert "No tasks (tasks.jsonl missing or empty)" in md
    assert (out / "report" / "funnel.png").is_file()
    assert not (out / "report" / "packing.png").exists()


def test_run_stopped_on_purpose_with_until(tmp_path: Path, capsys) -> None:
    """`--until snapshot`: PRs waiting in candidates.jsonl are expected; ones lost are not."""
    out = tmp_path / "out"
    out.mkdir()
    write_jsonl(out / "pull_requests.jsonl", [pull_request(i) for i in FATES])
    write_jsonl(out / "candidates.jsonl", [candidate(i) for i in CANDIDATE_IDS])
    write_jsonl(out / "rejects.jsonl", [r for r in rejects() if r.stage in ("mine", "snapshot")])
    (out / "run.json").write_text(json.dumps({"plan": {"until": "snapshot"}}))

    data = rp.load_output(out)
    assert funnel.run_until(data.run_json) == "snapshot"
    check = rp.check_of(data)
    assert check.balanced and check.pending == 10
    assert check.notes == (
        "10 PRs went no further than 'snapshot': the run was stopped there on purpose (--until)",
    )
    assert main(["report", str(out), "--strict"]) == 0
    assert "stopped there on purpose" in " ".join(capsys.readouterr().out.split())

    # A PR that snapshot neither emitted nor rejected is still a loud mismatch.
    write_jsonl(out / "candidates.jsonl", [candidate(i) for i in CANDIDATE_IDS[1:]])
    check = rp.check_of(rp.load_output(out))
    assert not check.balanced
    assert (
        check.messages[0].startswith("1 PRs have no outcome")
        and CANDIDATE_IDS[0] in (check.messages[0])
    )


def test_stats_zero_counts_are_numbers(out_dir: Path) -> None:
    data = rp.load_output(out_dir)
    stats = {"max_len": MAX_LEN, "documents_dropped": 0, "documents_split": 0}
    packing = dict(rp.packing_summary(data.shards, MAX_LEN, data.rejects, stats).rows())
    assert packing["documents dropped (stats.json)"] == 0
    assert packing["documents split (stats.json)"] == 0


def test_empty_folder_names_everything_missing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["report", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert all(f"{run_folder.FILES[p]} —" in md for p in load.PART_EFFECT)
    assert "nothing was mined" in md
    assert list((out / "report").glob("*.png")) == []
    assert "missing:" in capsys.readouterr().out


def test_not_a_directory_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("smelter: error:") and err.count("\n") == 1


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "OUT_DIR" in out and "--html" in out and "--strict" in out


# --------------------------------------------------------------------------- notebook


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_notebook_runs_top_to_bottom(out_dir: Path, tmp_path: Path, monkeypatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Committed without outputs, so diffs stay reviewable and no stale numbers ship.
    assert all(
        not c.get("outputs") and not c.get("execution_count")
        for c in nb.cells
        if c.cell_type == "code"
    )
    # A kernelspec of this interpreter in a private Jupyter path: the user's config is untouched.
    kernels = tmp_path / "jupyter" / "kernels" / "smelter-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "smelter test",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SMELTER_OUT", str(out_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SMELTER_TASK", "acme__widgets-8")
    work = tmp_path / "nbrun"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    client = NotebookClient(
        nb, kernel_name="smelter-test", timeout=300, resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "14 mined = 6 tasks + 8 rejected" in text
    assert "acme__widgets-8" in text  # the task opened in the drill-down
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4
