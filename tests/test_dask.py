"""The demo on a real Dask cluster gives exactly the DirectRunner's outputs.

One ``dask scheduler`` and one ``dask worker --nworkers 2 --nthreads 1`` (two worker processes
under a nanny, not threads) on 127.0.0.1 with free ports; the real CLI runs the demo through
the cluster (``--runner DaskRunner --dask_client_address``), and every output file is compared
with the session's DirectRunner demo run (``demo_out``, shared with test_demo_e2e): JSONL and
Parquet rows as multisets (their order is not defined), JSON documents as documents. Left out:
fields that measure time, the seconds in pytest's summary line of a kept log tail, and the
output folder's own path. Regression for issue 14: on Beam's own Dask translation a stage's
rejections flowed on as records and ``pull_requests.jsonl`` was never written.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from smelter.pipeline.demo.prs import DEMO_PRS
from smelter.schemas import Task

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]
SKIP = {"demo-repo", ".cache", ".progress", ".smelter.lock"}
RUN_OUTPUTS = {
    "pull_requests.jsonl", "candidates.jsonl", "tasks.jsonl", "rejects.jsonl",
    "funnel.json", "run.json", "shards",
}  # fmt: skip
# Keys whose values measure time (or say when): they differ between any two runs.
TIMING = re.compile(r"seconds|duration|elapsed|wall|_ms$|started|finished|timestamp")
# pytest's summary line in a kept log tail: "===== 4 passed in 0.74s =====", padded to width.
PYTEST_SUMMARY = re.compile(r"=+ ([^=\n]*?) in [\d.]+s(?: \([\d:]+\))? =+")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=3000, env=clean_env()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, env=clean_env())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two worker processes on 127.0.0.1; stopped (by handle) afterwards."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m", "dask"]
    port = address.rsplit(":", 1)[1]
    scheduler = [*dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]
    worker = [*dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--host",
              "127.0.0.1", "--no-dashboard", "--local-directory", str(logs)]  # fmt: skip
    procs = [start(scheduler, logs / "scheduler.log")]
    try:
        procs.append(start(worker, logs / "workers.log"))
        deadline = time.monotonic() + 120
        while True:  # the scheduler takes a moment to listen
            try:
                with Client(address, timeout=10) as client:
                    client.wait_for_workers(2, timeout=120)
                    pids = client.run(os.getpid)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert len(set(pids.values())) == 2, pids  # two processes, not two threads
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory, dask_address: str, demo_out: Path
) -> tuple[Path, Path]:
    """(the session's DirectRunner demo output, this module's Dask run of the same demo)."""
    on_dask = tmp_path_factory.mktemp("demo-dask")
    proc = run_cli(
        "demo", "--out", str(on_dask), "--no-progress",
        "--runner", "DaskRunner", "--dask_client_address", dask_address,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return demo_out, on_dask


def normalise(value: Any, out: Path) -> Any:
    """``value`` without timing fields, with the output folder's path spelled ``OUT``."""
    if isinstance(value, dict):
        return {k: normalise(v, out) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [normalise(v, out) for v in value]
    if isinstance(value, str):
        return PYTEST_SUMMARY.sub(r"== \1 in Ns ==", value.replace(str(out), "OUT"))
    return value


def as_multiset(rows: list[Any], out: Path) -> list[str]:
    return sorted(json.dumps(normalise(r, out), sort_keys=True, default=str) for r in rows)


def contents(path: Path, out: Path) -> Any:
    """What of a file must match between runners."""
    if path.suffix == ".jsonl":
        return as_multiset([json.loads(line) for line in path.read_text().splitlines()], out)
    if path.suffix == ".parquet":
        return as_multiset(pq.read_table(path).to_pylist(), out)
    if path.name == "run.json":  # the rest is this run's argv, versions and clock
        return normalise(json.loads(path.read_text())["plan"]["config"], out)
    if path.suffix == ".json":
        return normalise(json.loads(path.read_text()), out)
    return path.read_bytes().replace(str(out).encode(), b"OUT")


def files(out: Path) -> list[Path]:
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and rel.parts[0] not in SKIP and not rel.parts[0].startswith("beam-"):
            found.append(rel)
    return found


def run_outputs(out: Path) -> list[Path]:
    """The files a run writes. The session's DirectRunner folder is shared with other tests,
    which may add their own (reports, exports) beside them."""
    return [rel for rel in files(out) if rel.parts[0] in RUN_OUTPUTS]


def test_dask_demo_writes_every_output_file_the_direct_runner_writes(
    outputs: tuple[Path, Path],
) -> None:
    direct, on_dask = outputs
    assert run_outputs(on_dask) == run_outputs(direct)
    assert {rel.parts[0] for rel in run_outputs(on_dask)} == RUN_OUTPUTS
    assert (on_dask / "pull_requests.jsonl").stat().st_size > 0


def test_dask_demo_outputs_equal_the_direct_runners(outputs: tuple[Path, Path]) -> None:
    direct, on_dask = outputs
    for rel in run_outputs(direct):
        assert contents(on_dask / rel, on_dask) == contents(direct / rel, direct), rel


def test_dask_demo_gives_the_ten_tasks_with_rejects_apart(outputs: tuple[Path, Path]) -> None:
    on_dask = outputs[1]
    lines = (on_dask / "tasks.jsonl").read_text().splitlines()
    tasks = [Task.model_validate_json(line) for line in lines]
    expected = [pr for pr in DEMO_PRS if not (pr.mine or pr.snapshot or pr.validate)]
    assert len(tasks) == len(expected) == 10
    assert sorted(t.instance_id for t in tasks) == sorted(pr.instance_id for pr in expected)
    rejects = [json.loads(ln) for ln in (on_dask / "rejects.jsonl").read_text().splitlines()]
    assert rejects and all({"stage", "reason"} <= r.keys() for r in rejects)  # no PR records


def test_dask_runner_keeps_tagged_outputs_apart_and_runs_every_sink(
    dask_address: str, tmp_path: Path
) -> None:
    """Beam 2.77's own translation fails all three: rejects mixed in, one sink, side input."""
    import apache_beam as beam
    from apache_beam.pvalue import AsSingleton, TaggedOutput

    from smelter.pipeline.options import beam_options

    class Split(beam.DoFn):  # local: pickled by value, the workers cannot import this module
        def process(self, n: int) -> Iterator[Any]:
            yield TaggedOutput("rejects", f"r{n}") if n % 3 == 0 else n

    options = beam_options(["--runner", "DaskRunner", "--dask_client_address", dask_address])
    with beam.Pipeline(options=options) as p:
        ok, rejects = (
            p
            | beam.Create(range(10))
            | beam.Reshuffle()
            | beam.ParDo(Split()).with_outputs("rejects", main="main")
        )
        ok | "Ok" >> beam.io.WriteToText(str(tmp_path / "ok"), shard_name_template="")
        count = ok | beam.combiners.Count.Globally()
        (
            rejects
            | beam.Map(lambda r, n: f"{r}/{n}", AsSingleton(count))
            | "Rejects" >> beam.io.WriteToText(str(tmp_path / "rej"), shard_name_template="")
        )
    assert sorted((tmp_path / "ok").read_text().split()) == sorted(
        str(n) for n in range(10) if n % 3
    )
    assert sorted((tmp_path / "rej").read_text().split()) == ["r0/6", "r3/6", "r6/6", "r9/6"]


@pytest.mark.parametrize(
    ("flags", "needs"),
    [
        (["--runner", "FlinkRunner"], "--flink_job_server_jar"),
        (["--runner=SparkRunner"], "--spark_job_server_jar"),
        (["--runner", "FlinkRunner", "--flink_job_server_jar", "/no/such.jar"], "no such file"),
        (["--runner", "PortableRunner"], "--job_endpoint"),
        (["--runner", "DataflowRunner"], "DataflowRunner needs"),
    ],
)
def test_a_runner_that_cannot_start_here_is_one_line(flags: list[str], needs: str) -> None:
    proc = run_cli("mine", "--repo", str(Path(__file__).parents[1]), "--dry-run", *flags)
    assert proc.returncode != 0
    assert needs in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_dask_options_are_accepted_flags() -> None:
    from smelter.pipeline.options import beam_options, runner_name

    options = beam_options(
        ["--runner", "DaskRunner", "--dask_client_address", "127.0.0.1:8786",
         "--dask_npartitions", "4", "--dask_connection_timeout", "5"]
    )  # fmt: skip
    assert runner_name(options) == "DaskRunner"
    assert options.get_all_options()["address"] == "127.0.0.1:8786"
