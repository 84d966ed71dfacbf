"""What every stage shares: error tiers, the dead-letter tag, the stage DoFn shell, its cache.

Deliberate choices:
- Three error tiers. ``Rejected`` is this record's fault and becomes a ``Rejection`` on the
  ``rejects`` output; ``Retryable`` is retried inside adapters and only surfaces after the
  retries are spent; ``Fatal`` (bad config, no engine) stops the run with a one-line message.
  Any other exception inside ``process`` is confined to its record (``internal_error``, with the
  traceback tail as detail) so one odd PR never kills a batch job.
- The per-stage cache is keyed by (instance_id, stage, hash of stage config + input record): a
  re-run with the same inputs does no work, a changed input or config recomputes. Outcomes are
  written with Beam's FileSystems so the cache may live on GCS/S3 as well as on local disk.
- ``StageFn`` keeps only picklable state; subclasses open their clients in ``setup_stage``.
  It is generic over its config, input and output records (``StageFn[CleanConfig, Task,
  Task]``), so a subclass's ``run`` and ``_config`` carry their real types.
- Batching is a hook, not a second ``process``: a stage whose records wait on a remote service
  returns a ``batch_size`` above 1 and overrides ``run_batch``; cache misses are then buffered
  per bundle and leave, each with its own window and timestamp, when the batch is full or the
  bundle ends. Cache, counters, ticks and rejection routing are the same either way.
- A stage knows the run that launched it (``attach(run=...)``) and ties its worker process to
  it in ``setup`` (``lifeline``): a SIGKILLed ``smelter run`` takes its workers along, and a
  record is neither started nor cached once the run is gone (a cut-short outcome cached as
  ``internal_error`` would be served to the next run).
- ``has_cached`` lets the graph hand a stage's cache probe to the stage before it: the
  environment stage need not rebuild an image for a candidate whose validation is cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue
from pydantic_core import PydanticSerializationError

from smelter.schemas import RECORDS, Reason, Record, Rejection
from smelter.schemas import Stage as StageName  # ``Stage`` here is the PTransform below
from smelter.transforms import lifeline
from smelter.transforms.errors import Fatal, Rejected
from smelter.transforms.util import stable_hash, tail

log = logging.getLogger(__name__)

REJECTS = "rejects"
CACHE_FORMAT = 1

C = TypeVar("C")  # the stage's frozen config
I = TypeVar("I")  # noqa: E741  # the record a stage takes
O = TypeVar("O", bound=Record)  # noqa: E741  # the record it makes (besides Rejections)


def record_kind(record: Record) -> str:
    for name, cls in RECORDS.items():
        if type(record) is cls:
            return name
    raise TypeError(f"not a top-level record: {type(record).__name__}")


@dataclasses.dataclass(frozen=True)
class StageCache:
    """Stage outcomes on a (possibly remote) filesystem, one JSON file per (stage, key)."""

    root: str

    def _path(self, stage: str, instance_id: str, key: str) -> str:
        return FileSystems.join(self.root, stage, f"{instance_id}.{key}.json")

    def get(self, stage: str, instance_id: str, key: str) -> list[Record | Rejection] | None:
        path = self._path(stage, instance_id, key)
        try:
            if not FileSystems.exists(path):
                return None
            with FileSystems.open(path) as f:
                doc = json.loads(f.read())
        except (OSError, ValueError) as e:  # a torn or unreadable entry is a miss, not a crash
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None
        if doc.get("format") != CACHE_FORMAT:
            return None
        return [RECORDS[kind].model_validate(body) for kind, body in doc["outcomes"]]

    def put(self, stage: str, instance_id: str, key: str, outcomes: list[Record]) -> None:
        path = self._path(stage, instance_id, key)
        doc = {
            "format": CACHE_FORMAT,
            "outcomes": [[record_kind(o), o.model_dump(mode="json")] for o in outcomes],
        }
        # Write-then-rename: a run killed mid-write leaves no half entry that looks complete.
        # The temp name is this writer's own: worker processes (or threads of one Dask worker)
        # writing the same key at once each rename a whole file, and the rename replaces any
        # entry in one step (os.rename locally), so a reader sees the old entry or the new one.
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with FileSystems.create(tmp) as f:
                f.write(json.dumps(doc).encode())
            FileSystems.rename([tmp], [path])
        except (OSError, BeamIOError) as e:  # a cache write failing costs a recompute, no more
            log.warning("could not cache %s: %s", path, e)
            with contextlib.suppress(OSError, BeamIOError):
                FileSystems.delete([tmp])


class _Pending(NamedTuple):
    """A cache miss waiting in a batch, with where its outputs belong."""

    record: Any
    instance_id: str
    key: str | None
    timestamp: Any
    window: Any


class StageFn(beam.DoFn, Generic[C, I, O]):
    """Shell shared by every stage: cache, rejection routing, per-reason counters.

    Subclasses set ``STAGE``, keep picklable config in ``__init__`` and implement ``run``;
    ``StageFn[Config, In, Out]`` types ``_config``, ``run``'s record and its outcomes.
    """

    STAGE: ClassVar[StageName]  # Rejection.stage and the counters' namespace
    # Bump when a code change alters what the stage outputs for the same input: it is part of
    # the cache key, so old cached outcomes stop matching instead of being served stale.
    VERSION: ClassVar[str] = "1"

    def __init__(self, config: C, cache_root: str | None = None) -> None:
        self._config: C = config
        self._cache_root = cache_root
        self._progress_dir: str | None = None
        self._run: lifeline.Run | None = None
        self._config_hash = stable_hash(self.STAGE, self.VERSION, config)

    def attach(
        self,
        cache_root: str | None,
        progress_dir: str | None = None,
        run: lifeline.Run | None = None,
    ) -> StageFn[C, I, O]:
        """Set where outcomes are cached and progress is ticked, and which run (host, pid of
        the launching process) the workers serve; called by the graph builder."""
        self._cache_root = cache_root
        self._progress_dir = progress_dir
        self._run = run
        return self

    def has_cached(self, record: I) -> bool:
        """Whether this stage has a cached outcome for ``record``: a picklable probe (as a bound
        method) for the stage before it. Reads the cache only, no ``setup`` needed; it does not
        ask ``reuse``, so it suits stages that serve every cache entry they find."""
        if not self._cache_root:
            return False
        key = self.cache_key(record)
        cache = StageCache(self._cache_root)
        return (
            key is not None and cache.get(self.STAGE, self.instance_id_of(record), key) is not None
        )

    # -- hooks ---------------------------------------------------------------------------------
    def setup_stage(self) -> None:
        """Open connections (Docker, HTTP, git mirrors) here, never in __init__."""

    def teardown_stage(self) -> None:
        """Close what setup_stage opened."""

    def run(self, record: I) -> Iterable[O | Rejection]:
        raise NotImplementedError

    def instance_id_of(self, record: I | Record) -> str:
        return getattr(record, "instance_id", "") or str(record)

    def cache_key(self, record: I) -> str | None:
        """Key of this record's outcome; None disables caching for it."""
        if isinstance(record, Record):
            return stable_hash(self._config_hash, record)
        return None

    def reuse(self, record: I, cached: list[Record]) -> list[Record] | None:
        """The cached outcomes to serve, or None to recompute them (counted as ``cache_stale``).

        For a stage whose outcome names something outside the cache (an image on the engine):
        it checks that the thing still exists, and may hand back outcomes adapted to this run.
        """
        return cached

    def batch_size(self) -> int:
        """Cache misses buffered per bundle before ``run_batch`` sees them; 1 (the default)
        runs each record as it arrives."""
        return 1

    def run_batch(self, batch: Sequence[tuple[I, str]]) -> list[list[Record]]:
        """The outcomes of buffered (record, instance_id) pairs, in their order; called on the
        bundle's thread. The default runs them one after another; a stage whose records wait
        on a remote service runs ``_outcomes`` of each concurrently (it confines every error
        to its record)."""
        return [self._outcomes(record, instance_id) for record, instance_id in batch]

    def cacheable(self, outcomes: list[Record]) -> bool:
        """Whether fresh outcomes go to the cache: not a transient failure the next run must
        retry instead of being served."""
        return True

    def count(self, outcomes: list[Record], fresh: bool) -> None:
        """Stage-specific counters for one record's outcomes, fresh or served from the cache;
        called on the bundle's thread, because Beam's metrics container is thread-local."""

    # -- Beam ----------------------------------------------------------------------------------
    def setup(self) -> None:
        # First: a worker started for a run that is already gone dies here, before any work.
        lifeline.tie_to_run(getattr(self, "_run", None))
        self._cache = StageCache(self._cache_root) if self._cache_root else None
        self._buffer: list[_Pending] = []
        self._ticks = None
        if self._progress_dir:
            # One append-only file per worker: the CLI sums their sizes to draw progress, which
            # works across DirectRunner's worker processes without any shared state.
            os.makedirs(self._progress_dir, exist_ok=True)
            name = f"{self.STAGE}.{os.getpid()}.{id(self)}.ticks"
            self._ticks = open(os.path.join(self._progress_dir, name), "a")  # noqa: SIM115
        self._seconds = Metrics.distribution(self.STAGE, "record_ms")
        self.setup_stage()

    def teardown(self) -> None:
        self.teardown_stage()
        ticks = getattr(self, "_ticks", None)
        if ticks is not None:
            ticks.close()

    def _tick(self, mark: str) -> None:
        if self._ticks:
            self._ticks.write(mark)
            self._ticks.flush()

    def lookup(self, record: I) -> tuple[str, str | None, list[Record] | None]:
        """(instance_id, cache key, cached outcomes or None): how every ``process`` begins."""
        instance_id = self.instance_id_of(record)
        key = self.cache_key(record) if self._cache else None
        cached = self._cache.get(self.STAGE, instance_id, key) if self._cache and key else None
        if cached is not None:
            cached = self.reuse(record, cached)
            if cached is None:
                Metrics.counter(self.STAGE, "cache_stale").inc()
        if cached is not None:
            Metrics.counter(self.STAGE, "cache_hits").inc()
            self._tick("c")
        return instance_id, key, cached

    def start_bundle(self) -> None:
        self._buffer = []

    def process(
        self,
        record: Any,
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        lifeline.check()  # the run is gone: start nothing for it
        instance_id, key, cached = self.lookup(record)
        if cached is not None:
            self.count(cached, fresh=False)
            yield from self._emit(cached)
            return
        if self.batch_size() > 1:
            self._buffer.append(_Pending(record, instance_id, key, timestamp, window))
            if len(self._buffer) >= self.batch_size():
                yield from self._flush()
            return
        start = time.monotonic()
        outcomes = self._outcomes(record, instance_id)
        # Died meanwhile: the outcome may be an error the dying run caused; never cache it.
        lifeline.check()
        self._settle(instance_id, key, outcomes, int((time.monotonic() - start) * 1000))
        yield from self._emit(outcomes)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        start = time.monotonic()
        results = self.run_batch([(p.record, p.instance_id) for p in batch])
        lifeline.check()  # as in ``process``: nothing of a dead run is cached
        per_record_ms = int((time.monotonic() - start) * 1000 / len(batch))
        for pending, outcomes in zip(batch, results, strict=True):
            self._settle(pending.instance_id, pending.key, outcomes, per_record_ms)
            for out in self._emit(outcomes):
                # A buffered record's outputs may leave while another element (or none, in
                # finish_bundle) is current: they carry their own window and timestamp.
                if isinstance(out, TaggedOutput):
                    value = WindowedValue(out.value, pending.timestamp, (pending.window,))
                    yield TaggedOutput(out.tag, value)
                else:
                    yield WindowedValue(out, pending.timestamp, (pending.window,))

    def _settle(self, instance_id: str, key: str | None, outcomes: list[Record], ms: int) -> None:
        """Time, cache, tick and count one record's fresh outcomes."""
        self._seconds.update(ms)
        if self._cache and key and self.cacheable(outcomes):
            self._cache.put(self.STAGE, instance_id, key, outcomes)
        self._tick("r" if all(isinstance(o, Rejection) for o in outcomes) and outcomes else "o")
        self.count(outcomes, fresh=True)

    def _outcomes(self, record: I, instance_id: str) -> list[Record]:
        repo = getattr(record, "repo", "")
        try:
            return list(self.run(record))
        except Rejected as r:  # a fault of this record only
            return [
                Rejection(
                    instance_id=instance_id,
                    stage=StageName(self.STAGE),
                    reason=r.reason,
                    detail=tail(r.detail, 2000),
                    repo=repo,
                )
            ]
        except Fatal:
            raise
        except Exception as e:  # confined to the record, never lost
            log.exception("%s: unexpected error on %s", self.STAGE, instance_id)
            detail = f"{type(e).__name__}: {e}\n{tail(traceback.format_exc(), 1500)}"
            return [
                Rejection(
                    instance_id=instance_id,
                    stage=StageName(self.STAGE),
                    reason=Reason.INTERNAL_ERROR,
                    detail=detail,
                    repo=repo,
                )
            ]

    def _emit(self, outcomes: list[Record]) -> Iterator[Any]:
        for o in map(self.writable, outcomes):
            if isinstance(o, Rejection):
                Metrics.counter(self.STAGE, f"rejected_{o.reason.value}").inc()
                yield TaggedOutput(REJECTS, o)
            else:
                Metrics.counter(self.STAGE, "ok").inc()
                yield o

    def writable(self, outcome: Record) -> Record:
        """``outcome`` if it can be written as JSON, else a Rejection of that record alone.

        The last line of defence for "any byte, never the run": text holding bytes that were
        not UTF-8 (lone surrogates) fails only when a writer serialises it, in a Beam step
        where it would end the whole run, and a cached copy would end every re-run too.
        Checked on fresh and cached outcomes alike, so an old cache entry is rejected as well.
        """
        try:
            outcome.model_dump_json()
            return outcome
        except PydanticSerializationError as e:
            why = printable(str(e))
        if isinstance(outcome, Rejection):
            return outcome.model_copy(
                update={"instance_id": printable(outcome.instance_id),
                        "detail": printable(outcome.detail), "repo": printable(outcome.repo)}
            )  # fmt: skip
        return Rejection(
            instance_id=printable(self.instance_id_of(outcome)), stage=StageName(self.STAGE),
            reason=Reason.INTERNAL_ERROR, repo=printable(getattr(outcome, "repo", "")),
            detail=f"{type(outcome).__name__} holds text that is not UTF-8: {why[:500]}",
        )  # fmt: skip


def printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes) spelled out: valid UTF-8 and JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ChainFn(beam.DoFn):
    """Several stages as one step: each main output feeds the next stage at once, in this
    process; a rejection of any of them leaves on the rejects output.

    For stages that share a side effect the runner cannot move: the environment stage builds
    an image on this worker's engine and validation must run it there. The DirectRunner fuses
    consecutive steps anyway, but Dask schedules each step as its own task and may steal one
    to another worker, whose engine lacks the image. One step keeps them together on every
    runner, with no registry traffic; each stage keeps its own cache, counters and rejections.
    """

    def __init__(self, *fns: StageFn[Any, Any, Any]) -> None:
        # Each record goes through at once: a stage that buffers (``batch_size`` above 1)
        # would hold it past the next stage, so chained stages run one record at a time.
        self._fns = fns

    def setup(self) -> None:
        for fn in self._fns:
            fn.setup()

    def teardown(self) -> None:
        for fn in reversed(self._fns):
            fn.teardown()

    def process(self, record: Any) -> Iterator[Any]:
        yield from self._through(0, record)

    def _through(self, i: int, record: Any) -> Iterator[Any]:
        for out in self._fns[i].process(record):
            if isinstance(out, TaggedOutput) or i + 1 == len(self._fns):
                yield out
            else:
                yield from self._through(i + 1, out)


class Stage(beam.PTransform):
    """Applies a StageFn and returns (main, rejects), the shape every stage has in the graph."""

    def __init__(self, fn: StageFn[Any, Any, Any] | ChainFn, label: str | None = None) -> None:
        super().__init__(label or fn.STAGE)  # type: ignore[union-attr]
        self._fn = fn

    def expand(self, pcoll: Any) -> tuple[Any, Any]:
        out = pcoll | beam.ParDo(self._fn).with_outputs(REJECTS, main="main")
        return out.main, out[REJECTS]
