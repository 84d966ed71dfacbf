"""Shards: packed Parquet files that `datasets` reads and that give back every document exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import apache_beam as beam
import datasets
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from smelter.schemas import Reason, Sample, ShardRow
from smelter.transforms.adapters.tokenizer import load_tokenizer
from smelter.transforms.pack.config import PackConfig
from smelter.transforms.pack.packing import pack_arrays
from smelter.transforms.pack.shards import (
    STATS_FILE,
    BucketStats,
    PackShards,
    TokenStore,
    bucket_of,
    pack_stats,
    shard_pages,
    write_shard,
    write_shards,
)

WORDS = ["def", "return", "x", " ", "\n", "é", "数据", "🚀", "<|im_end|>", "(", ")", "::", "\t"]


def make_samples(n: int, seed: int, max_words: int = 120) -> list[Sample]:
    """Real tokenized texts with an assistant-like trailing masked span."""
    tok = load_tokenizer("qwen2.5")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.randint(1, max_words) if rng.random() > 0.1 else rng.randint(200, 400)
        text = "".join(rng.choice(WORDS) for _ in range(words))
        ids = tok.encode(text)
        cut = rng.randint(0, len(ids))
        out.append(
            Sample(
                instance_id=f"acme__repo-{i}",
                text=text,
                input_ids=ids,
                loss_mask=[0] * cut + [1] * (len(ids) - cut),
                tokenizer=tok.name,
            )
        )
    return out


def load_rows(folder: Path, cache: Path) -> list[dict]:
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))
    return list(ds)


def rebuild(rows: list[dict]) -> dict[str, tuple[list[int], list[int]]]:
    """Documents (ids, mask) reassembled from shard rows; checks each row's invariants."""
    pieces: dict[str, list[tuple[int, list[int], list[int]]]] = {}
    for row in rows:
        ShardRow.model_validate(row)  # the schema describes what is stored
        lengths = row["doc_lengths"]
        assert row["num_tokens"] == len(row["input_ids"]) == sum(lengths)
        assert row["position_ids"] == [i for n in lengths for i in range(n)]
        pos = 0
        for doc_id, start, n in zip(row["doc_ids"], row["doc_starts"], lengths, strict=True):
            piece = (start, row["input_ids"][pos : pos + n], row["loss_mask"][pos : pos + n])
            pieces.setdefault(doc_id, []).append(piece)
            pos += n
    docs = {}
    for doc_id, ps in pieces.items():
        ps.sort()
        assert [p[0] for p in ps] == list(np.cumsum([0] + [len(p[1]) for p in ps[:-1]]))
        docs[doc_id] = ([t for p in ps for t in p[1]], [m for p in ps for m in p[2]])
    return docs


@pytest.mark.parametrize("mode", ["split", "drop"])
def test_write_shards_then_rebuild_every_document_byte_for_byte(tmp_path: Path, mode: str) -> None:
    samples = make_samples(150, seed=1)
    max_len = 256
    store = TokenStore.from_samples(samples)
    plan = pack_arrays(store.lengths, max_len, mode=mode)  # type: ignore[arg-type]
    infos = write_shards(store, plan, str(tmp_path / "shards"), shard_rows=7)
    assert len(infos) == -(-plan.num_bins // 7)
    rows = load_rows(tmp_path / "shards", tmp_path / "hf")
    assert len(rows) == plan.num_bins == sum(i.sequences for i in infos)
    assert all(r["num_tokens"] <= max_len for r in rows)
    docs = rebuild(rows)
    tok = load_tokenizer("qwen2.5")
    dropped = {samples[d].instance_id for d in plan.dropped.tolist()}
    long = {s.instance_id for s in samples if len(s.input_ids) > max_len}
    assert long, "the fixture must exercise documents longer than max_len"
    assert dropped == (long if mode == "drop" else set())
    for s in samples:
        if s.instance_id in dropped:
            assert s.instance_id not in docs
            continue
        ids, mask = docs[s.instance_id]
        assert ids == s.input_ids and mask == s.loss_mask
        assert tok.decode(ids).encode() == s.text.encode()
    schema = pq.read_schema(infos[0].path)
    assert {f.name: str(f.type) for f in schema} == {
        "input_ids": "list<element: int32>",
        "position_ids": "list<element: int32>",
        "loss_mask": "list<element: bool>",
        "doc_lengths": "list<element: int32>",
        "doc_ids": "list<element: string>",
        "doc_starts": "list<element: int64>",
        "num_tokens": "int32",
    }


@pytest.mark.parametrize("compression", ["none", "zstd", "snappy"])
def test_many_pages_per_shard_read_the_same_by_pyarrow_and_polars(
    tmp_path: Path, compression: str
) -> None:
    samples = make_samples(120, seed=5)
    store = TokenStore.from_samples(samples)
    plan = pack_arrays(store.lengths, 300, mode="split")
    sel = plan.bin_items
    path = str(tmp_path / "s.parquet")
    for page_values in (1, 257, 10**6):  # one row a page, a few rows a page, one page
        shard = shard_pages(
            store, plan.item_doc[sel], plan.item_start[sel], plan.item_len[sel],
            plan.bin_offsets, page_values=page_values,
        )  # fmt: skip
        assert len(shard.pages[0]) == (plan.num_bins if page_values == 1 else len(shard.pages[0]))
        info = write_shard(path, shard, compression)
        assert (info.sequences, info.tokens) == (plan.num_bins, plan.packed_tokens)
        assert info.loss_tokens == sum(sum(s.loss_mask) for s in samples)
        ours = pq.read_table(path)
        assert ours.equals(pl.read_parquet(path).to_arrow().cast(ours.schema))
        docs = rebuild(ours.to_pylist())
        assert all(docs[s.instance_id] == (s.input_ids, s.loss_mask) for s in samples)


def test_stats_figures(tmp_path: Path) -> None:
    samples = make_samples(60, seed=2)
    store = TokenStore.from_samples(samples)
    plan = pack_arrays(store.lengths, 128, mode="drop")
    infos = write_shards(store, plan, str(tmp_path), shard_rows=1000)
    cfg = PackConfig(pack_max_len=128)
    stats = pack_stats([BucketStats.of(0, store.lengths, plan)], infos, cfg)
    total = int(store.lengths.sum())
    assert stats["tokens"] + stats["tokens_dropped"] == total
    assert stats["documents_dropped"] == len(plan.dropped) > 0
    assert stats["sequences"] == plan.num_bins
    assert stats["lower_bound"] == -(-stats["tokens"] // 128)
    assert stats["fill_ratio"] == pytest.approx(stats["tokens"] / (plan.num_bins * 128))
    kept = [s for i, s in enumerate(samples) if i not in set(plan.dropped.tolist())]
    assert stats["loss_tokens"] == sum(sum(s.loss_mask) for s in kept)


def test_bucket_of_is_stable_and_spreads() -> None:
    assert bucket_of("acme__repo-1", 8) == bucket_of("acme__repo-1", 8)
    assert len({bucket_of(f"acme__repo-{i}", 8) for i in range(200)}) == 8


def test_pack_shards_in_a_beam_pipeline(tmp_path: Path) -> None:
    samples = make_samples(80, seed=3)
    dup = samples[0].model_copy(update={"text": "zzz"})
    cfg = PackConfig(pack_max_len=200, pack_mode="drop", pack_buckets=3, shard_rows=4)
    out = tmp_path / "shards"
    long = sorted(s.instance_id for s in samples if len(s.input_ids) > 200)
    assert long
    with test_pipeline.TestPipeline() as p:
        rejects = p | beam.Create([*samples, dup]) | PackShards(cfg, str(out))
        assert_that(
            rejects | beam.Map(lambda r: (r.instance_id, r.stage, r.reason)),
            equal_to(
                [(i, "pack", Reason.TOO_LONG) for i in long]
                + [(samples[0].instance_id, "pack", Reason.DUPLICATE)]
            ),
        )
    stats = json.loads((out / STATS_FILE).read_text())
    rows = load_rows(out, tmp_path / "hf")
    assert stats["sequences"] == len(rows)
    assert stats["documents"] == len(samples)  # the duplicate is a reject, not a document
    assert stats["documents_dropped"] == len(long)
    assert stats["tokens"] == sum(r["num_tokens"] for r in rows)
    assert len(stats["shards"]) == len(list(out.glob("*.parquet")))
    assert {f.name[:11] for f in out.glob("*.parquet")} == {
        "part-b0000-",
        "part-b0001-",
        "part-b0002-",
    }
    docs = rebuild(rows)
    kept = [s for s in samples if s.instance_id not in long]
    assert sorted(docs) == sorted(s.instance_id for s in kept)
    for s in kept:
        assert docs[s.instance_id] == (s.input_ids, s.loss_mask)
    # Every bucket packed close to its own lower bound: at most one extra sequence each.
    assert stats["sequences"] <= stats["lower_bound"] + cfg.pack_buckets + 1


def test_pack_shards_split_mode_and_no_samples(tmp_path: Path) -> None:
    samples = make_samples(30, seed=4)
    cfg = PackConfig(pack_max_len=64, pack_mode="split", shard_rows=5)
    with test_pipeline.TestPipeline() as p:
        rejects = p | beam.Create(samples) | PackShards(cfg, str(tmp_path / "a"))
        assert_that(rejects, equal_to([]))
    docs = rebuild(load_rows(tmp_path / "a", tmp_path / "hf"))
    assert all(docs[s.instance_id] == (s.input_ids, s.loss_mask) for s in samples)
    stats = json.loads((tmp_path / "a" / STATS_FILE).read_text())
    assert stats["documents_split"] == sum(len(s.input_ids) > 64 for s in samples) > 0
    assert stats["tokens_dropped"] == 0

    with test_pipeline.TestPipeline() as p:
        rejects = p | beam.Create([]) | PackShards(cfg, str(tmp_path / "b"))
        assert_that(rejects, equal_to([]))
    stats = json.loads((tmp_path / "b" / STATS_FILE).read_text())
    assert stats["sequences"] == stats["tokens"] == 0


def test_pack_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="pack_mode"):
        PackConfig(pack_mode="truncate")
    with pytest.raises(ValueError, match="shard_rows"):
        PackConfig(shard_rows=0)


def test_stores_of_wider_types_are_converted_once_not_misread(tmp_path: Path) -> None:
    # A byte view of an int64 mask or int64 tokens would silently write garbage.
    samples = make_samples(20, seed=6)
    narrow = TokenStore.from_samples(samples)
    wide = TokenStore(
        narrow.tokens.astype(np.int64), narrow.loss_mask.astype(np.int64), narrow.offsets,
        narrow.doc_ids,
    )  # fmt: skip
    plan = pack_arrays(wide.lengths, 256, mode="split")
    infos = write_shards(wide, plan, str(tmp_path), shard_rows=3)
    docs = rebuild([r for i in infos for r in pq.read_table(i.path).to_pylist()])
    assert all(docs[s.instance_id] == (s.input_ids, s.loss_mask) for s in samples)


def test_strided_mask_store_writes_the_same_bytes(tmp_path: Path) -> None:
    # Mask pieces are gathered by Arrow from one buffer: a strided mask must be made contiguous.
    samples = make_samples(20, seed=7)
    store = TokenStore.from_samples(samples)
    doubled = np.repeat(store.loss_mask, 2)
    strided = TokenStore(store.tokens, doubled[::2], store.offsets, store.doc_ids)
    plan = pack_arrays(store.lengths, 256, mode="split")
    a = write_shards(store, plan, str(tmp_path / "a"), shard_rows=3)
    b = write_shards(strided, plan, str(tmp_path / "b"), shard_rows=3)
    assert [i.loss_tokens for i in a] == [i.loss_tokens for i in b]
    assert [Path(i.path).read_bytes() for i in a] == [Path(i.path).read_bytes() for i in b]
    assert sum(i.loss_tokens for i in a) == sum(sum(s.loss_mask) for s in samples)
