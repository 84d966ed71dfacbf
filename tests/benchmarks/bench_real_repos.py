"""Benchmark: the real pipeline on the real-repository corpus (``real_repos.toml``).

Run: ``.venv/bin/python tests/benchmarks/bench_real_repos.py [--repos OWNER/NAME,...] [--n 3]
[--old 1] [--until validate] [--jobs 1] [--out-dir DIR] [--skip-existing] [--json FILE]
[--mirror-root /work/.mirror] [--ca-bundle PEM] [-- SMELTER RUN FLAGS]``, e.g. ``-- --workers 1``
with ``--jobs 2``, or ``-- --env-base-suites bullseye bookworm`` so 2018-2021 PRs can get the
Python 3.9 their pinned test tools run on (the default base is bookworm's 3.11 only).

Per repository, ``smelter run --until validate`` runs as a subprocess (a crash costs one
repository, not the table) on two windows of merged PRs: the ``--n`` newest, and ``--old`` from
2018-2021 (the newest of that period). Prints per repository: PRs mined, candidates,
environments built, validated tasks, rejects by stage and reason, seconds per stage; a total
row with environments / candidates and validated / candidates; then every environment reject
with the first error line of its detail, which is what groups failures into causes.

Deliberate choices:
- The miner walks history oldest first and ``--mine-max-prs`` stops after the first N *kept*
  PRs, i.e. the oldest N. So the bench first lists the PRs the miner keeps (the same
  ``GitSource`` with default ``[mine]`` settings, in-process, read-only on the mirror) and turns
  "newest N" into ``--mine-since <merged_at of the Nth newest>`` plus ``--mine-max-prs N``.
- Mine-stage rejects are left out of the reject counts: with a date window they are mostly
  ``out_of_date_range`` for the rest of the history, which says nothing about the pipeline.
- Seconds per stage are ``run.json``'s ``stage_seconds`` (busy seconds: the sum over records
  of time inside the stage, from the ``record_ms`` Beam distributions), summed over both
  windows; ``wall`` is the bench's own clock around each subprocess. When a runner reports no
  metrics, environment / validate seconds fall back to ``Environment.build_seconds`` and
  ``Validation.seconds`` of the validated tasks (marked ``~``; rejected PRs then count nothing).
- Machine defaults: ``--env-extra-ca-bundle`` is passed explicitly ($SSL_CERT_FILE, else
  /etc/ssl/certs/ca-certificates.crt when it exists) so HTTPS inside the env layer works behind
  a TLS-intercepting proxy whatever the caller's shell exports; ``--llm-base-url`` is never
  passed, so a run with ``--until clean`` uses the normaliser only.
- Each window writes a complete smelter output folder ``OUT/OWNER+NAME/{new,old}/`` plus its
  log and a ``bench.json`` (selection, exit code, wall seconds); ``--skip-existing`` reuses a
  window whose ``bench.json`` exists, so re-printing the table of an earlier run is free.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "real_repos.toml"
MIRROR_ROOT = Path("/work/.mirror")
OLD_SINCE, OLD_UNTIL = "2018-01-01T00:00:00Z", "2022-01-01T00:00:00Z"
STAGES = ("mine", "snapshot", "environment", "validate", "clean")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


# --------------------------------------------------------------------------- corpus


@dataclasses.dataclass(frozen=True)
class RepoEntry:
    """One ``[[repo]]`` of the corpus file."""

    name: str
    backend: str = ""
    layout: str = ""
    history: str = ""
    extra_args: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return self.name.replace("/", "+")


def load_corpus(path: Path) -> list[RepoEntry]:
    doc = tomllib.loads(path.read_text())
    return [
        RepoEntry(
            name=r["name"],
            backend=r.get("backend", ""),
            layout=r.get("layout", ""),
            history=r.get("history", ""),
            extra_args=tuple(r.get("extra_args", ())),
        )
        for r in doc.get("repo", [])
    ]


def find_mirror(root: Path, name: str) -> Path | None:
    """The bare git dir of ``name`` under ``root`` (``fetch`` layout ``OWNER+NAME/repo``, or a
    bare dir named ``OWNER+NAME`` / ``OWNER+NAME.git`` directly)."""
    slug = name.replace("/", "+")
    for cand in (root / slug / "repo", root / slug, root / f"{slug}.git"):
        if (cand / "HEAD").is_file() and (cand / "objects").is_dir():
            return cand
    return None


# --------------------------------------------------------------------------- windows


@dataclasses.dataclass(frozen=True)
class Window:
    """A ``[since, until)`` range of merge times holding exactly the selected PRs."""

    label: str
    since: str
    until: str | None
    numbers: tuple[int, ...]


def pick_window(
    prs: Sequence[tuple[int, str]],
    count: int,
    label: str,
    since: str | None = None,
    until: str | None = None,
) -> Window | None:
    """The ``count`` newest of ``prs`` (number, merged_at as ``YYYY-MM-DDTHH:MM:SSZ``) merged in
    ``[since, until)``, as a window the miner reproduces with ``--mine-since`` (the oldest
    selected merge time; ISO strings of one format compare as times) and ``--mine-max-prs``."""
    inside = sorted(
        (p for p in prs if (since is None or p[1] >= since) and (until is None or p[1] < until)),
        key=lambda p: (p[1], p[0]),
    )
    chosen = inside[-count:] if count > 0 else []
    if not chosen:
        return None
    return Window(label, chosen[0][1], until, tuple(sorted(n for n, _ in chosen)))


def kept_prs(mirror: Path, name: str) -> list[tuple[int, str]]:
    """(number, merged_at) of every PR the git miner keeps with default ``[mine]`` settings."""
    from smelter.schemas import PullRequest
    from smelter.transforms.adapters.git import GitRepo
    from smelter.transforms.mine.config import MineConfig
    from smelter.transforms.mine.git_source import GitSource, RepoSpec

    source = GitSource(GitRepo(mirror), RepoSpec.from_url(str(mirror), name=name), MineConfig())
    return [(r.number, r.merged_at) for r in source if isinstance(r, PullRequest)]


def windows_for(prs: Sequence[tuple[int, str]], n: int, old: int) -> list[Window]:
    new = pick_window(prs, n, "new")
    # The old window ends where the new one starts, so no PR is run twice.
    old_until = min(OLD_UNTIL, new.since) if new else OLD_UNTIL
    old_w = pick_window(prs, old, "old", since=OLD_SINCE, until=old_until)
    return [w for w in (new, old_w) if w is not None]


# --------------------------------------------------------------------------- first error line

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# BuildKit progress prefixes ("#12 3.456 ") hide the message itself.
_PREFIX = re.compile(r"^#\d+\s+\d+(\.\d+)?\s")
_ERROR = re.compile(
    r"\bERROR\b"
    r"|Traceback \(most recent call last\)"
    r"|No solution found"
    r"|\b[A-Z]\w*(Error|Exception)\b"  # ModuleNotFoundError, CalledProcessError, ...
    r"|\bfatal:"
    r"|\bFAILED\b"
    r"|\b[Ff]ailed to\b"
    r"|\bunsatisfiable\b"
    r"|\bnot found\b"
    # "error: text" in any case; a bare "first error:" is a heading, not the error.
    r"|(?i:\berror\s*:\s*\S)"
)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
# Lines inside a (possibly chained, possibly cut) traceback that are not its exception line.
_TRACEBACK_GLUE = ("...", "…", "During handling", "The above exception", "Traceback")
# The environment stage's own closing summary ("-- <rung> ... tried <rungs>"): not a cause.
_SUMMARY = re.compile(r"^-- .*\btried\b")
MAX_LINE = 200


def _clean(line: str) -> str:
    return _PREFIX.sub("", _ANSI.sub("", line)).rstrip()


def _traceback_exception(lines: Sequence[str]) -> str | None:
    """The last exception line of the traceback ``lines`` start inside: the one raised last,
    which in a chain (``During handling ...``) is the one that ended the program."""
    last = None
    for line in lines:
        if _EXCEPTION_LINE.match(line):
            last = line
        elif not line.strip() or line[0].isspace() or line.startswith(_TRACEBACK_GLUE):
            continue
        else:
            break
    return last


def first_error_line(detail: str) -> str:
    """The first line of a reject detail that looks like an error, cleaned of ANSI colours and
    build-log prefixes; for a Python traceback, the exception line that ends it (the header says
    nothing about the cause). Empty when no line looks like an error."""
    lines = [_clean(ln) for ln in detail.splitlines()]
    if lines and lines[0] == "first error:":  # the environment stage named the cause already
        for line in lines[1:]:
            if line == "...":
                break
            if line.startswith("... "):
                return line.removeprefix("... ").strip()[:MAX_LINE]
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or _SUMMARY.match(text) or not _ERROR.search(text):
            continue
        if text.startswith("Traceback (most recent call last)"):
            text = _traceback_exception(lines[i + 1 :]) or text
        return text[:MAX_LINE]
    return ""


# --------------------------------------------------------------------------- running


def smelter_argv(
    entry: RepoEntry, mirror: Path, window: Window, out: Path, args: argparse.Namespace
) -> list[str]:
    exe = Path(sys.executable).with_name("smelter")
    argv = [str(exe), "run", "--repo", str(mirror), "--repo-name", entry.name]
    argv += ["--out", str(out), "--until", args.until, "--no-progress"]
    argv += ["--mine-since", window.since, "--mine-max-prs", str(len(window.numbers))]
    if window.until:
        argv += ["--mine-until", window.until]
    if args.ca_bundle and args.ca_bundle != "none":
        argv += ["--env-extra-ca-bundle", args.ca_bundle]
    return argv + list(entry.extra_args) + list(args.smelter_args)


def run_window(
    entry: RepoEntry, mirror: Path, window: Window, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Runs one window (or reuses it with --skip-existing); returns its bench.json."""
    out = root / entry.slug / window.label
    marker = out / "bench.json"
    if args.skip_existing and marker.is_file():
        return json.loads(marker.read_text())
    out.mkdir(parents=True, exist_ok=True)
    argv = smelter_argv(entry, mirror, window, out, args)
    log = root / entry.slug / f"{window.label}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        try:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    doc = {
        "repo": entry.name,
        "window": dataclasses.asdict(window),
        "argv": argv,
        "exit_code": code,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "log": str(log),
    }
    marker.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@dataclasses.dataclass
class RepoResult:
    """One table row: a repository's windows added up."""

    repo: str
    status: str = "ok"
    selected: int = 0
    mined: int = 0
    candidates: int = 0
    environments: int = 0
    validated: int = 0
    rejects: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds_from_records: bool = False
    wall_seconds: float = 0.0
    env_errors: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def add_seconds(self, stage: str, value: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + value


def summarise_window(res: RepoResult, out: Path, bench: dict[str, Any]) -> None:
    """Adds one window's output folder to ``res``: counts from the written files, seconds from
    run.json."""
    window = bench["window"]
    res.selected += len(window["numbers"])
    res.wall_seconds += bench["wall_seconds"]
    if bench["exit_code"] != 0:
        res.status = f"{window['label']}: exit {bench['exit_code']} (log {bench['log']})"
    res.mined += len(_jsonl(out / "pull_requests.jsonl"))
    n_cand = len(_jsonl(out / "candidates.jsonl"))
    res.candidates += n_cand
    tasks = _jsonl(out / "tasks.jsonl")
    res.validated += len(tasks)
    env_rejects = 0
    for r in _jsonl(out / "rejects.jsonl"):
        if r["stage"] == "mine":
            continue
        res.rejects[f"{r['stage']}:{r['reason']}"] += 1
        if r["stage"] == "environment":
            env_rejects += 1
            res.env_errors.append(
                {
                    "repo": res.repo,
                    "instance_id": r["instance_id"],
                    "window": window["label"],
                    "reason": r["reason"],
                    "first_error": first_error_line(r.get("detail", "")),
                }
            )
    # Only the environment stage's input and rejects are written; what it passed on is the rest.
    res.environments += n_cand - env_rejects
    run_json = out / "run.json"
    stage_seconds: dict[str, float] = {}
    if run_json.is_file():
        stage_seconds = json.loads(run_json.read_text()).get("stage_seconds", {})
    for stage, value in stage_seconds.items():
        res.add_seconds(stage, value)
    if tasks and not {"environment", "validate"} & stage_seconds.keys():
        res.seconds_from_records = True
        res.add_seconds("environment", sum(t["environment"]["build_seconds"] for t in tasks))
        res.add_seconds("validate", sum(t["validation"]["seconds"] for t in tasks))


def bench_repo(entry: RepoEntry, root: Path, args: argparse.Namespace) -> RepoResult:
    res = RepoResult(entry.name)
    mirror = find_mirror(args.mirror_root, entry.name)
    if mirror is None:
        res.status = f"no mirror under {args.mirror_root} (fetch github:{entry.name})"
        return res
    selection = root / entry.slug / "windows.json"
    if args.skip_existing and selection.is_file():
        saved = json.loads(selection.read_text())
        windows = [Window(**{**w, "numbers": tuple(w["numbers"])}) for w in saved]
    else:
        try:
            windows = windows_for(kept_prs(mirror, entry.name), args.n, args.old)
        except Exception as e:  # a broken mirror costs this row, not the table
            res.status = f"cannot scan {mirror}: {type(e).__name__}: {e}"
            return res
        selection.parent.mkdir(parents=True, exist_ok=True)
        selection.write_text(json.dumps([dataclasses.asdict(w) for w in windows], indent=2))
    if not windows:
        res.status = "no PR the miner keeps in the requested windows"
        return res
    for window in windows:
        bench = run_window(entry, mirror, window, root, args)
        summarise_window(res, root / entry.slug / window.label, bench)
    if res.status == "ok" and res.mined != res.selected:
        res.status = f"selected {res.selected} PRs but the miner kept {res.mined}"
    return res


# --------------------------------------------------------------------------- printing


def _pct(num: int, den: int) -> str:
    return f"{num / den:.0%}" if den else "-"


def total_of(results: Iterable[RepoResult]) -> RepoResult:
    tot = RepoResult("TOTAL")
    for r in results:
        tot.selected += r.selected
        tot.mined += r.mined
        tot.candidates += r.candidates
        tot.environments += r.environments
        tot.validated += r.validated
        tot.rejects.update(r.rejects)
        tot.wall_seconds += r.wall_seconds
        tot.seconds_from_records |= r.seconds_from_records
        for stage, value in r.seconds.items():
            tot.add_seconds(stage, value)
    return tot


def print_tables(results: list[RepoResult]) -> None:
    width = max([len(r.repo) for r in results] + [len("TOTAL")])
    # clean only shows when a run went that far (--until clean).
    stages = [s for s in STAGES if s != "clean" or any(s in r.seconds for r in results)]
    head = (
        f"{'repository':<{width}} {'sel':>3} {'PRs':>3} {'cand':>4} {'env':>4} {'valid':>5} "
        f"{'env%':>5} {'val%':>5} " + " ".join(f"{s[:5] + ' s':>7}" for s in stages)
        + f" {'wall s':>7}  rejects (stage:reason count) / status"
    )  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in [*results, total_of(results)]:
        mark = "~" if r.seconds_from_records else ""
        secs = " ".join(f"{mark}{r.seconds.get(s, 0.0):>{7 - len(mark)}.1f}" for s in stages)
        rej = ", ".join(f"{k} {v}" for k, v in sorted(r.rejects.items())) or "-"
        status = "" if r.status == "ok" else f"  [{r.status}]"
        print(
            f"{r.repo:<{width}} {r.selected:>3} {r.mined:>3} {r.candidates:>4} "
            f"{r.environments:>4} {r.validated:>5} {_pct(r.environments, r.candidates):>5} "
            f"{_pct(r.validated, r.candidates):>5} {secs} {r.wall_seconds:>7.1f}  {rej}{status}"
        )
    tot = total_of(results)
    print(
        f"\nenvironments / candidates: {tot.environments}/{tot.candidates} "
        f"({_pct(tot.environments, tot.candidates)}); validated / candidates: "
        f"{tot.validated}/{tot.candidates} ({_pct(tot.validated, tot.candidates)})"
    )
    print(
        "sel = PRs selected, PRs = PRs mined; stage seconds are busy seconds from run.json "
        "(~ = from task records only); wall = the bench's clock around smelter"
    )
    errors = [e for r in results for e in r.env_errors]
    print(f"\nenvironment rejects: {len(errors)}")
    if errors:
        w_id = max(len(e["instance_id"]) for e in errors)
        print(f"{'instance_id':<{w_id}} {'win':<3} {'reason':<18} first error line")
        for e in errors:
            print(
                f"{e['instance_id']:<{w_id}} {e['window']:<3} {e['reason']:<18} "
                f"{e['first_error'] or '(no error-looking line)'}"
            )
        causes = collections.Counter(e["first_error"] for e in errors)
        print("\nby first error line:")
        for line, count in causes.most_common():
            print(f"{count:>4}  {line or '(no error-looking line)'}")


def to_json(results: list[RepoResult], root: Path) -> dict[str, Any]:
    def row(r: RepoResult) -> dict[str, Any]:
        d = dataclasses.asdict(r)
        d["rejects"] = dict(sorted(r.rejects.items()))
        d.pop("env_errors")
        return d

    return {
        "out_dir": str(root),
        "repos": [row(r) for r in results],
        "total": row(total_of(results)),
        "environment_rejects": [e for r in results for e in r.env_errors],
    }


# --------------------------------------------------------------------------- main


def default_ca_bundle() -> str:
    env = os.environ.get("SSL_CERT_FILE")
    if env:
        return env
    return HOST_CA if Path(HOST_CA).is_file() else "none"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Flags after -- go to every `smelter run` (e.g. -- --workers 1).",
    )
    ap.add_argument("--repos", help="comma-separated OWNER/NAME subset of the corpus")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="corpus TOML file")
    ap.add_argument("--mirror-root", type=Path, default=MIRROR_ROOT, help="where mirrors live")
    ap.add_argument("--n", type=int, default=3, help="newest kept PRs per repository")
    ap.add_argument("--old", type=int, default=1, help="PRs merged 2018-2021 per repository")
    ap.add_argument("--until", default="validate", choices=("environment", "validate", "clean"))
    ap.add_argument("--out-dir", type=Path, help="default: a new folder under /tmp (kept)")
    ap.add_argument("--jobs", type=int, default=1, help="repositories run in parallel")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the tables as JSON")
    ap.add_argument("--skip-existing", action="store_true", help="reuse finished windows")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per smelter run")
    ap.add_argument(
        "--ca-bundle",
        default=default_ca_bundle(),
        help="PEM passed as --env-extra-ca-bundle ('none' = not passed; default: "
        "$SSL_CERT_FILE, else the host's bundle)",
    )
    args = ap.parse_args(argv)
    args.smelter_args = extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    corpus = load_corpus(args.corpus)
    if args.repos:
        wanted = [w.strip() for w in args.repos.split(",") if w.strip()]
        known = {e.name: e for e in corpus}
        unknown = [w for w in wanted if w not in known]
        # A repository outside the corpus file still runs, with no per-repo settings.
        corpus = [known.get(w, RepoEntry(w)) for w in wanted]
        if unknown:
            print(f"not in {args.corpus.name}: {', '.join(unknown)}", file=sys.stderr)
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="smelter-bench-real-"))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"output: {root}", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {pool.submit(bench_repo, e, root, args): e for e in corpus}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            print(f"done {r.repo}: {r.candidates} candidates, {r.environments} environments, "
                  f"{r.validated} validated ({r.status})", file=sys.stderr)  # fmt: skip
        results = [f.result() for f in futures]
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(to_json(results, root), indent=2) + "\n")
    print(f"\noutput kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
