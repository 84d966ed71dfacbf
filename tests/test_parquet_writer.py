"""The shard Parquet writer, checked byte for byte by two independent readers: pyarrow (C++) and
polars (Rust). Every encoder is exercised through a real file, never compared with our own
decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smelter.transforms.pack import parquet_writer as pw


def read_both(path: Path | bytes) -> list[pa.Table]:
    """The file as pyarrow and as polars read it."""
    if isinstance(path, bytes):
        return [pq.read_table(pa.BufferReader(path)), pl.read_parquet(io.BytesIO(path)).to_arrow()]
    return [pq.read_table(path), pl.read_parquet(path).to_arrow()]


def scalar_file(
    path: Path, ptype: int, pages: list[tuple[int, int, list[pw.Buffer]]], codec: str = "none"
) -> Path:
    """A one-column file of a nullable scalar column: ``pages`` = (values, encoding, buffers)."""
    col = pw.Column("v", ptype, False)
    built = [pw.Page(n, n, enc, b"", pw.rle_constant(n, 1), bufs) for n, enc, bufs in pages]
    with open(path, "wb") as f:
        pw.write_file(f, [col], [built], sum(n for n, _, _ in pages), codec)
    return path


def ramps(lengths: list[int]) -> list[int]:
    return [i for n in lengths for i in range(n)]


@pytest.mark.parametrize(
    "lengths",
    [
        [1],
        [2],
        [1, 1, 1, 1],
        [129],  # one full block and one delta over
        [128, 1, 128],  # piece starts on block edges
        [32, 32, 32, 33, 1, 1, 200, 5000],  # starts on miniblock edges, runs of 1s
        [131072, 7, 131072],  # long ramps (max_len 128k)
    ],
)
def test_delta_ramps_decode_to_position_ids(tmp_path: Path, lengths: list[int]) -> None:
    lens = np.array(lengths, dtype=np.int64)
    path = scalar_file(
        tmp_path / "p.parquet",
        pw.INT32,
        [(int(lens.sum()), pw.DELTA_BINARY_PACKED, [pw.delta_ramps(lens)])],
    )
    for table in read_both(path):
        assert table.column("v").to_pylist() == ramps(lengths)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=80))
def test_delta_ramps_any_lengths(
    tmp_path_factory: pytest.TempPathFactory, lengths: list[int]
) -> None:
    path = tmp_path_factory.mktemp("ramps") / "p.parquet"
    lens = np.array(lengths, dtype=np.int64)
    scalar_file(path, pw.INT32, [(len(ramps(lengths)), pw.DELTA_BINARY_PACKED,
                                  [pw.delta_ramps(lens)])])  # fmt: skip
    for table in read_both(path):
        assert table.column("v").to_pylist() == ramps(lengths)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=700))
def test_delta_wide_any_lengths(
    tmp_path_factory: pytest.TempPathFactory, values: list[int]
) -> None:
    # Any non-negative int32 (string lengths): deltas span up to 2^32 - 2, still 32 bits.
    path = tmp_path_factory.mktemp("wide") / "w.parquet"
    arr = np.array(values, dtype=np.int64)
    scalar_file(path, pw.INT64, [(len(values), pw.DELTA_BINARY_PACKED, [pw.delta_wide(arr)])])
    for table in read_both(path):
        assert table.column("v").to_pylist() == values


def list_file(
    path: Path | io.BytesIO, col: pw.Column, rows: list[list], buffers: list[pw.Buffer], enc: int
) -> None:
    counts = np.array([len(r) for r in rows])
    n = int(counts.sum())
    page = pw.Page(n, len(rows), enc, pw.repetition_levels(counts), pw.rle_constant(n, 3), buffers)
    if isinstance(path, io.BytesIO):
        pw.write_file(path, [col], [[page]], len(rows))
        return
    with open(path, "wb") as f:
        pw.write_file(f, [col], [[page]], len(rows))


def test_delta_length_strings_with_unicode_empty_and_sliced_arrays(tmp_path: Path) -> None:
    words = ["", "a", "é", "数据", "🚀" * 40, "", "x" * 300] * 60
    arr = pa.array(["skip", *words, "skip"], pa.string()).slice(1, len(words))  # offset != 0
    rows = [words[i : i + 7] for i in range(0, len(words), 7)]
    col = pw.Column("s", pw.BYTE_ARRAY, True, pw.UTF8)
    path = tmp_path / "s.parquet"
    list_file(path, col, rows, pw.delta_length_strings(arr), pw.DELTA_LENGTH_BYTE_ARRAY)
    for table in read_both(path):
        assert table.column("s").to_pylist() == rows
    assert pq.read_schema(path).field("s").type == pa.list_(pa.string())


def test_repetition_levels_for_rows_of_one_and_of_many() -> None:
    # 1 row of 1, then 1 row of 300: runs (1 x 0), (1 x 0) (299 x 1).
    assert pw.repetition_levels(np.array([1, 300])) == bytes([2, 0, 2, 0, 0xD6, 0x04, 1])


def test_non_file_sink_and_every_codec(tmp_path: Path) -> None:
    rows = [[1, 2, 3], [4], list(range(5000))]
    values = np.array([v for r in rows for v in r], dtype="<i4")
    col = pw.Column("x", pw.INT32, True)
    for codec in pw.CODECS:
        buf = io.BytesIO()  # no file descriptor: plain writes
        counts = np.array([len(r) for r in rows])
        levels = pw.repetition_levels(counts), pw.rle_constant(len(values), 3)
        parts: list[pw.Buffer] = [values[:2].tobytes(), pw.as_buffer(values[2:])]
        page = pw.Page(len(values), len(rows), pw.PLAIN, *levels, parts)
        size = pw.write_file(buf, [col], [[page]], len(rows), codec)
        assert size == len(buf.getvalue())
        for table in read_both(buf.getvalue()):
            assert table.column("x").to_pylist() == rows, codec
        meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).metadata
        assert meta.row_group(0).column(0).compression.lower() == (
            "uncompressed" if codec == "none" else codec
        )


def test_thrift_field_ids_beyond_15_and_long_lists() -> None:
    # Field-id jumps > 15 use the long form; lists of >= 15 elements the long header.
    out = pw.thrift_struct([(1, "i32", 1), (20, "list_i32", list(range(20)))])
    assert out[:2] == bytes([0x15, 0x02])
    assert out[2:4] == bytes([0x09, 40])  # type, then zigzag(20)
    assert out[4:6] == bytes([0xF5, 20])  # i32 elements, then the size
    assert out[-1] == 0


def test_delta_wide_refuses_deltas_beyond_32_bits() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        pw.delta_wide(np.array([0, -(2**31), 2**31]))
