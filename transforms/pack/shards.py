"""Render tasks into samples and pack samples into Parquet training shards.

Deliberate choices:
- Shard rows hold flat, varlen-ready arrays: ``input_ids`` (int32), ``position_ids`` restarting at
  0 for every document (or piece), ``loss_mask``, ``doc_lengths`` (so ``cu_seqlens`` is their
  cumsum), ``doc_ids`` and ``doc_starts`` (offset of a piece in its document: every document can
  be rebuilt exactly from the shards, split or not). Nothing is padded.
- Materialisation does no per-token Python and no token copy: a shard's pages hold memoryview
  slices of the flat token store, which ``parquet_writer.py`` hands to ``os.writev``;
  positions are delta-encoded from piece lengths, the mask is bit-packed (see that module).
- In Beam only *lengths* travel to the packer: samples are keyed into ``pack_buckets`` buckets by
  a hash of their id, each bucket's (id, length) list is packed on one worker (sorted by id
  first, so the plan is deterministic), and placements are joined back to the samples and
  grouped per shard file, so shards are written in parallel and no worker ever holds more than
  one bucket's lengths or one shard's tokens. More buckets = more parallel packing, at most one
  partly filled tail sequence more per bucket.
- Documents longer than ``pack_max_len`` are dropped with a ``too_long`` rejection (``drop``,
  the default: a chat sample cut in two teaches the wrong thing) or split into pieces
  (``split``, for pretraining-style data). Nothing is ever truncated silently.
- Writes go through Beam's FileSystems, so OUT may be gs:// or s3://; stats.json is written
  once, after every shard, from per-bucket and per-shard figures.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gc
import hashlib
import itertools
import json
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from smelter.schemas import Reason, Rejection, Sample, Stage
from smelter.transforms.errors import Fatal
from smelter.transforms.pack import parquet_writer as pw
from smelter.transforms.pack.config import PackConfig
from smelter.transforms.pack.packing import PackResult, pack_arrays
from smelter.transforms.stage import REJECTS

PACK_STAGE = Stage.PACK
STATS_FILE = "stats.json"


# --------------------------------------------------------------------------- token store


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
    """Documents' tokens and loss masks, flat; document d is ``[offsets[d], offsets[d + 1])``."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    offsets: np.ndarray
    doc_ids: Sequence[str]

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> TokenStore:
        lengths = np.fromiter((len(s.input_ids) for s in samples), np.int64, len(samples))
        offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.empty(int(offsets[-1]), dtype=np.int32)
        mask = np.empty(int(offsets[-1]), dtype=np.int8)
        for i, s in enumerate(samples):
            tokens[offsets[i] : offsets[i + 1]] = s.input_ids
            mask[offsets[i] : offsets[i + 1]] = s.loss_mask
        return cls(tokens, mask, offsets, [s.instance_id for s in samples])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @functools.cached_property
    def tokens_le32(self) -> np.ndarray:
        """Tokens as little-endian int32 (a view unless the store holds another type)."""
        return self.tokens.astype("<i4", copy=False)

    @functools.cached_property
    def mask_bytes(self) -> np.ndarray:
        """The loss mask as one uint8 per token (a view of an int8 or bool mask)."""
        m = self.loss_mask
        return m.view(np.uint8) if m.itemsize == 1 else (m != 0).astype(np.uint8)

    @functools.cached_property
    def mask_array(self) -> pa.Array:
        """``mask_bytes`` as an Arrow uint8 array (no copy): shards gather pieces from it."""
        m = np.ascontiguousarray(self.mask_bytes)
        return pa.Array.from_buffers(pa.uint8(), len(m), [None, pa.py_buffer(m)])

    @functools.cached_property
    def id_array(self) -> pa.StringArray:
        """The ids as one Arrow array: shards take from it without a Python object per id."""
        return pa.array(self.doc_ids, pa.string())


# --------------------------------------------------------------------------- materialise


SHARD_COLUMNS = (
    pw.Column("input_ids", pw.INT32, True),
    pw.Column("position_ids", pw.INT32, True),
    pw.Column("loss_mask", pw.BOOLEAN, True),
    pw.Column("doc_lengths", pw.INT32, True),
    pw.Column("doc_ids", pw.BYTE_ARRAY, True, pw.UTF8),
    pw.Column("doc_starts", pw.INT64, True),
    pw.Column("num_tokens", pw.INT32, False),
)


class ShardPages(NamedTuple):
    """A shard's pages per column (in ``SHARD_COLUMNS`` order) and the figures for stats.json."""

    pages: list[list[pw.Page]]
    sequences: int
    tokens: int
    loss_tokens: int
    pieces: int


class _GcPause:
    """Hundreds of thousands of short-lived slices and memoryviews would otherwise trigger
    full garbage collections over the whole heap (measured: 40% of shard building time).
    Counted, so threads building shards side by side do not re-enable it under each other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = True

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_gc_paused = _GcPause()


def _count_ones(packed: np.ndarray, mask: np.ndarray) -> int:
    """Set bits of the packed mask (numpy >= 2: a popcount over 1/8 of the bytes)."""
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(packed).sum(dtype=np.int64))
    return int(np.count_nonzero(mask))


def shard_pages(
    store: TokenStore,
    item_doc: np.ndarray,
    item_start: np.ndarray,
    item_len: np.ndarray,
    row_offsets: np.ndarray,
    doc_starts: np.ndarray | None = None,
    page_values: int = pw.PAGE_VALUES,
) -> ShardPages:
    """Pages of packed sequences. Row r holds items ``row_offsets[r]:row_offsets[r+1]``; item i
    is ``store`` tokens ``[item_start[i], +item_len[i])`` of document ``item_doc[i]``.

    ``doc_starts`` (default ``item_start``) is what is recorded as the piece's offset in its
    original document, for stores that already hold cut pieces. Token pages end at row
    boundaries, about ``page_values`` tokens each; token values stay views of the store.
    """
    with _gc_paused:
        return _shard_pages(store, item_doc, item_start, item_len, row_offsets, doc_starts,
                            page_values)  # fmt: skip


def _shard_pages(
    store: TokenStore,
    item_doc: np.ndarray,
    item_start: np.ndarray,
    item_len: np.ndarray,
    row_offsets: np.ndarray,
    doc_starts: np.ndarray | None,
    page_values: int,
) -> ShardPages:
    item_len = item_len.astype(np.int64, copy=False)
    n_items, n_rows = len(item_len), len(row_offsets) - 1
    row_len = np.add.reduceat(item_len, row_offsets[:-1]) if n_rows else item_len[:0]
    if n_rows and int(row_len.max()) >= 2**31:
        raise Fatal("a packed sequence holds >= 2^31 tokens: lower pack_max_len")
    src = store.offsets[item_doc] + item_start
    a4, b4 = (4 * src).tolist(), (4 * (src + item_len)).tolist()  # byte offsets of int32 tokens
    row_tok = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_len, out=row_tok[1:])
    page_id = row_tok[:-1] // page_values
    cuts = [0, *(np.flatnonzero(np.diff(page_id)) + 1).tolist(), n_rows] if n_rows else [0]
    tok_view = pw.as_buffer(store.tokens_le32)
    mask_pieces = pa.LargeListViewArray.from_arrays(
        pa.array(src, pa.int64()), pa.array(item_len, pa.int64()), store.mask_array
    )
    ids_pages, pos_pages, mask_pages = [], [], []
    loss = 0
    for r0, r1 in itertools.pairwise(cuts):
        i0, i1 = int(row_offsets[r0]), int(row_offsets[r1])
        n = int(row_tok[r1] - row_tok[r0])
        rep = pw.repetition_levels(row_len[r0:r1])
        dfn = pw.rle_constant(n, 3)
        ids: list[pw.Buffer] = [tok_view[s:e] for s, e in zip(a4[i0:i1], b4[i0:i1], strict=True)]
        flat = mask_pieces.slice(i0, i1 - i0).flatten()  # one C++ gather, no slice per piece
        mask = np.frombuffer(flat.buffers()[1], np.uint8, len(flat), flat.offset)
        ids_pages.append(pw.Page(n, r1 - r0, pw.PLAIN, rep, dfn, ids, 4 * n))
        pos = pw.delta_ramps(item_len[i0:i1])
        pos_pages.append(pw.Page(n, r1 - r0, pw.DELTA_BINARY_PACKED, rep, dfn, [pos]))
        packed = np.packbits(mask, bitorder="little")
        loss += _count_ones(packed, mask)
        mask_pages.append(pw.Page(n, r1 - r0, pw.PLAIN, rep, dfn, [packed.tobytes()]))
    per_row = np.diff(row_offsets)
    rep = pw.repetition_levels(per_row)
    dfn = pw.rle_constant(n_items, 3)
    piece_starts = item_start if doc_starts is None else doc_starts
    names = store.id_array.take(pa.array(item_doc))

    def doc_page(values: list[pw.Buffer], encoding: int = pw.PLAIN) -> list[pw.Page]:
        return [pw.Page(n_items, n_rows, encoding, rep, dfn, values)]

    pages = [
        ids_pages,
        pos_pages,
        mask_pages,
        doc_page([item_len.astype("<i4").tobytes()]),
        doc_page(pw.delta_length_strings(names), pw.DELTA_LENGTH_BYTE_ARRAY),
        doc_page([np.asarray(piece_starts, dtype="<i8").tobytes()]),
        [pw.Page(n_rows, n_rows, pw.PLAIN, b"", pw.rle_constant(n_rows, 1),
                 [row_len.astype("<i4").tobytes()])],
    ]  # fmt: skip
    return ShardPages(pages, n_rows, int(row_tok[-1]), loss, n_items)


def write_shard(path: str, shard: ShardPages, compression: str = "none") -> ShardInfo:
    """One Parquet file through Beam's FileSystems (local, gs://, s3://), written then renamed."""
    tmp = f"{path}.tmp"
    with FileSystems.create(tmp) as f:
        pw.write_file(f, SHARD_COLUMNS, shard.pages, shard.sequences, compression)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return ShardInfo(path, shard.sequences, shard.tokens, shard.loss_tokens, shard.pieces)


class ShardInfo(NamedTuple):
    """What one written shard file holds (feeds stats.json)."""

    path: str
    sequences: int
    tokens: int
    loss_tokens: int
    pieces: int


def shard_name(bucket: int, index: int) -> str:
    return f"part-b{bucket:04d}-{index:05d}.parquet"


def _shard_of(store: TokenStore, plan: PackResult, b0: int, b1: int) -> ShardPages:
    lo, hi = int(plan.bin_offsets[b0]), int(plan.bin_offsets[b1])
    sel = plan.bin_items[lo:hi]
    return shard_pages(
        store,
        plan.item_doc[sel],
        plan.item_start[sel],
        plan.item_len[sel],
        plan.bin_offsets[b0 : b1 + 1] - lo,
    )


def plan_shards(
    store: TokenStore, plan: PackResult, shard_rows: int = 1024
) -> Iterator[ShardPages]:
    """The pages of each shard of ``shard_rows`` sequences of ``plan``, in order."""
    for b0 in range(0, plan.num_bins, shard_rows):
        yield _shard_of(store, plan, b0, min(b0 + shard_rows, plan.num_bins))


def write_shards(
    store: TokenStore,
    plan: PackResult,
    out_dir: str,
    shard_rows: int = 1024,
    bucket: int = 0,
    compression: str = "none",
    writers: int = 2,
) -> list[ShardInfo]:
    """Materialise every sequence of ``plan`` into Parquet files of ``shard_rows`` rows.

    ``writers`` threads each build and write whole shards (numpy, ``os.writev`` and the codecs
    release the GIL); at most ``writers`` shards' pages are in memory at once.
    """
    _ = store.id_array, store.tokens_le32, store.mask_array  # built once, before the threads

    def one(index: int) -> ShardInfo:
        b0 = index * shard_rows
        shard = _shard_of(store, plan, b0, min(b0 + shard_rows, plan.num_bins))
        return write_shard(FileSystems.join(out_dir, shard_name(bucket, index)), shard, compression)

    n_shards = -(-plan.num_bins // shard_rows)
    with concurrent.futures.ThreadPoolExecutor(max(1, writers)) as pool:
        return list(pool.map(one, range(n_shards)))


# --------------------------------------------------------------------------- stats


@dataclasses.dataclass(frozen=True)
class BucketStats:
    """Packing figures of one bucket; summed into stats.json."""

    bucket: int
    documents: int
    documents_packed: int
    documents_split: int
    documents_dropped: int
    tokens_dropped: int
    sequences: int
    tokens: int

    @classmethod
    def of(cls, bucket: int, lengths: np.ndarray, plan: PackResult) -> BucketStats:
        return cls(
            bucket=bucket,
            documents=len(lengths),
            documents_packed=len(lengths) - len(plan.dropped),
            documents_split=plan.docs_split,
            documents_dropped=len(plan.dropped),
            tokens_dropped=int(lengths[plan.dropped].sum()) if len(plan.dropped) else 0,
            sequences=plan.num_bins,
            tokens=plan.packed_tokens,
        )


def pack_stats(
    buckets: Iterable[BucketStats], shards: Iterable[ShardInfo], config: PackConfig
) -> dict[str, Any]:
    """The stats.json document: totals, lower bound ceil(tokens / max_len), fill ratio."""
    bs = sorted(buckets, key=lambda b: b.bucket)
    sh = sorted(shards, key=lambda s: s.path)
    tokens = sum(b.tokens for b in bs)
    sequences = sum(b.sequences for b in bs)
    lower = math.ceil(tokens / config.pack_max_len)
    return {
        "max_len": config.pack_max_len,
        "mode": config.pack_mode,
        "buckets": config.pack_buckets,
        "tokenizer": config.render_tokenizer,
        "template": config.render_template,
        "documents": sum(b.documents for b in bs),
        "documents_packed": sum(b.documents_packed for b in bs),
        "documents_split": sum(b.documents_split for b in bs),
        "documents_dropped": sum(b.documents_dropped for b in bs),
        "tokens_dropped": sum(b.tokens_dropped for b in bs),
        "sequences": sequences,
        "tokens": tokens,
        "loss_tokens": sum(s.loss_tokens for s in sh),
        "lower_bound": lower,
        "sequences_over_lower_bound": (sequences / lower - 1.0) if lower else 0.0,
        "fill_ratio": tokens / (sequences * config.pack_max_len) if sequences else 1.0,
        "shards": [
            {"file": s.path.rsplit("/", 1)[-1], "sequences": s.sequences, "tokens": s.tokens}
            for s in sh
        ],
    }


def write_stats(path: str, stats: dict[str, Any]) -> None:
    with FileSystems.create(path) as f:
        f.write((json.dumps(stats, indent=2) + "\n").encode())


# --------------------------------------------------------------------------- pack transform


def bucket_of(instance_id: str, buckets: int) -> int:
    """Stable bucket of a document (same on every worker and run)."""
    digest = hashlib.blake2b(instance_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _repo_of(instance_id: str) -> str:
    owner, _, rest = instance_id.partition("__")
    return f"{owner}/{rest.rsplit('-', 1)[0]}" if rest else ""


class Placement(NamedTuple):
    """Where one piece of a document goes: sequence ``seq`` of ``bucket``, at ``slot``."""

    bucket: int
    seq: int
    slot: int
    start: int
    length: int


class Piece(NamedTuple):
    seq: int
    slot: int
    instance_id: str
    start: int
    input_ids: np.ndarray
    loss_mask: np.ndarray


STATS_TAG = "bucket_stats"


class PackBucketFn(beam.DoFn):
    """(bucket, [(instance_id, length)]) -> placements, too_long rejects, bucket stats."""

    def __init__(self, config: PackConfig) -> None:
        self._config = config

    def process(self, element: tuple[int, Iterable[tuple[str, int]]]) -> Iterator[Any]:
        bucket, docs = element
        cfg = self._config
        ordered = sorted(docs)  # GroupByKey order is arbitrary; the plan must not be
        unique: list[tuple[str, int]] = []
        for doc in ordered:
            if unique and unique[-1][0] == doc[0]:
                Metrics.counter(PACK_STAGE, f"rejected_{Reason.DUPLICATE.value}").inc()
                yield TaggedOutput(
                    REJECTS,
                    Rejection(
                        instance_id=doc[0],
                        stage=PACK_STAGE,
                        reason=Reason.DUPLICATE,
                        detail="another sample has the same instance_id",
                        repo=_repo_of(doc[0]),
                    ),
                )
                continue
            unique.append(doc)
        lengths = np.fromiter((n for _, n in unique), np.int64, len(unique))
        plan = pack_arrays(lengths, cfg.pack_max_len, cfg.pack_mode)  # type: ignore[arg-type]
        for d in plan.dropped.tolist():
            iid, n = unique[d]
            Metrics.counter(PACK_STAGE, f"rejected_{Reason.TOO_LONG.value}").inc()
            yield TaggedOutput(
                REJECTS,
                Rejection(
                    instance_id=iid,
                    stage=PACK_STAGE,
                    reason=Reason.TOO_LONG,
                    detail=f"{n} tokens > pack_max_len {cfg.pack_max_len}",
                    repo=_repo_of(iid),
                ),
            )
        seq_of = np.repeat(np.arange(plan.num_bins), np.diff(plan.bin_offsets))
        slot_of = np.arange(len(plan.bin_items)) - plan.bin_offsets[seq_of]
        for item, seq, slot in zip(
            plan.bin_items.tolist(), seq_of.tolist(), slot_of.tolist(), strict=True
        ):
            yield (
                unique[int(plan.item_doc[item])][0],
                Placement(bucket, seq, slot, int(plan.item_start[item]), int(plan.item_len[item])),
            )
        Metrics.counter(PACK_STAGE, "sequences").inc(plan.num_bins)
        yield TaggedOutput(STATS_TAG, BucketStats.of(bucket, lengths, plan))


def _cut_pieces(
    element: tuple[str, dict[str, list[Any]]], shard_rows: int
) -> Iterator[tuple[tuple[int, int], Piece]]:
    instance_id, joined = element
    places: list[Placement] = joined["place"]
    if not places:
        return
    sample = min(joined["sample"], key=lambda s: (len(s.input_ids), s.text))
    ids = np.asarray(sample.input_ids, dtype=np.int32)
    mask = np.asarray(sample.loss_mask, dtype=np.int8)
    for p in places:
        key = (p.bucket, p.seq // shard_rows)
        end = p.start + p.length
        yield (
            key,
            Piece(p.seq, p.slot, instance_id, p.start, ids[p.start : end], mask[p.start : end]),
        )


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, config: PackConfig) -> None:
        self._out_dir, self._config = out_dir, config

    def process(self, element: tuple[tuple[int, int], Iterable[Piece]]) -> Iterator[ShardInfo]:
        (bucket, index), pieces = element
        ps = sorted(pieces, key=lambda p: (p.seq, p.slot))
        lengths = np.fromiter((len(p.input_ids) for p in ps), np.int64, len(ps))
        offsets = np.zeros(len(ps) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        store = TokenStore(
            np.concatenate([p.input_ids for p in ps]),
            np.concatenate([p.loss_mask for p in ps]),
            offsets,
            [p.instance_id for p in ps],
        )
        seqs = np.fromiter((p.seq for p in ps), np.int64, len(ps))
        row_offsets = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1], True])
        shard = shard_pages(
            store,
            np.arange(len(ps)),
            np.zeros(len(ps), dtype=np.int64),
            lengths,
            row_offsets,
            doc_starts=np.fromiter((p.start for p in ps), np.int64, len(ps)),
        )
        path = FileSystems.join(self._out_dir, shard_name(bucket, index))
        info = write_shard(path, shard, self._config.shard_compression)
        Metrics.counter(PACK_STAGE, "shards").inc()
        yield info


def _write_stats(
    _: Any, out_dir: str, config: PackConfig, buckets: list[BucketStats], shards: list[ShardInfo]
) -> str:
    path = FileSystems.join(out_dir, STATS_FILE)
    write_stats(path, pack_stats(buckets, shards, config))
    return path


class PackShards(beam.PTransform):
    """Samples -> Parquet shards + stats.json under ``out_dir``; returns the rejects."""

    def __init__(self, config: PackConfig, out_dir: str, label: str | None = None) -> None:
        super().__init__(label)
        self._config, self._out_dir = config, out_dir

    def expand(self, samples: Any) -> Any:
        cfg, out = self._config, self._out_dir
        n = cfg.pack_buckets
        keyed = samples | "KeyById" >> beam.Map(lambda s: (s.instance_id, s))
        planned = (
            samples
            | "Lengths"
            >> beam.Map(lambda s: (bucket_of(s.instance_id, n), (s.instance_id, len(s.input_ids))))
            | "GatherLengths" >> beam.GroupByKey()
            | "PackBuckets"
            >> beam.ParDo(PackBucketFn(cfg)).with_outputs(REJECTS, STATS_TAG, main="placements")
        )
        infos = (
            {"sample": keyed, "place": planned.placements}
            | "JoinSamples" >> beam.CoGroupByKey()
            | "CutPieces" >> beam.FlatMap(_cut_pieces, cfg.shard_rows)
            | "GatherShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardFn(out, cfg))
        )
        _ = (
            samples.pipeline
            | "StatsTrigger" >> beam.Create([None])
            | "WriteStats"
            >> beam.Map(
                _write_stats,
                out,
                cfg,
                beam.pvalue.AsList(planned[STATS_TAG]),
                beam.pvalue.AsList(infos),
            )
        )
        return planned[REJECTS]
