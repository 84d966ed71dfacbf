"""Packing benchmark: smelter's BFD packer against TRL's ``pack_dataset``, end to end, fairly.

Run: ``.venv/bin/python tests/benchmarks/bench_packing.py`` (``--cases``, ``--rounds N``,
``--warmup N``, ``--out-dir /dev/shm``, ``--trl-batch 1000``, ``--json F``).
Needs TRL >= 1.0 (the first release with ``strategy="bfd_split"``) without torch, which
``pack_dataset`` never imports (trl.data_utils needs only datasets, pyarrow and transformers)::

    .venv/bin/uv pip install --python .venv/bin/python -e '.[bench]'
    .venv/bin/uv pip install --python .venv/bin/python --no-deps 'trl>=1.0'

(``--no-deps``: trl requires accelerate, which requires torch, several GB with its CUDA libraries.)

Why each choice (an earlier version swung 4.7x-14.5x between runs):
- One process, interleaved rounds: smelter, TRL bfd_split, TRL bfd, floor, smelter, ... so a
  busy neighbour or a page-cache flush hits every method alike. ``--warmup`` rounds (default 1)
  run every method and are discarded; figures are medians over ``--rounds`` (default 5).
  ``gc.collect()`` runs before each timed call, so nobody pays for another's garbage.
- The same work on every side: the same seeded lengths and token storage (built once, not
  timed), from tokens in to packed rows in Parquet files out. smelter: ``pack_arrays`` (split
  mode) + ``write_shards`` with the default ``PackConfig`` shard settings. TRL: ``pack_dataset``
  + ``pq.write_table`` of its table with pyarrow's fastest settings (no codec, dictionary or
  statistics). ``bfd_split`` is the like-for-like baseline: long documents are cut into
  max_len pieces, nothing truncated. ``bfd`` (truncating) is shown beside it.
- TRL runs in one ``map`` batch by default (``--trl-batch 0``): that is the global BFD, the same
  problem smelter solves, so both must use exactly the bins of a reference BFD. With TRL's own
  default of 1,000-document batches it packs each batch separately (more bins, less work).
- The floor: ``os.write`` of the bytes of smelter's shard files (read back untimed) into the
  same number of files in the same folder: no packing, no encoding, only the copy into the
  kernel that any writer of these bytes pays.
- Bins are counted from the written files (Parquet row counts) and compared with the
  Martello-Toth L2 bound of the pieces (``martello_toth_l2``) and with a plain item-by-item BFD
  (sorted list of rooms + bisect). Tokens lost are counted from the files too.
- CPU s = ``time.process_time`` (all threads of the process: smelter writes with 2 threads);
  wall s = ``time.perf_counter``. Both go through the page cache of ``--out-dir``; on a VM that
  hands free memory back to its host, disk folders add noise that tmpfs (``/dev/shm``) avoids.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smelter.transforms.pack.config import PackConfig
from smelter.transforms.pack.packing import martello_toth_l2, pack_arrays, split_items
from smelter.transforms.pack.shards import TokenStore, write_shards

CASES: dict[str, tuple[str, int, int]] = {
    # name: (length distribution, documents, max_len)
    "lognormal4k": ("lognormal", 100_000, 4096),
    "swe32k": ("swe", 10_000, 32768),
    "lognormal32k": ("lognormal", 100_000, 32768),
    "swe128k": ("swe", 10_000, 131072),
    "small": ("lognormal", 2_000, 4096),  # seconds, for trying the script out
}
DEFAULT_CASES = "lognormal4k,swe32k"
METHODS = ("smelter", "trl-bfd_split", "trl-bfd", "floor")
VOCAB = 151_643  # Qwen2.5's, so token values look like real ids


def lengths_for(dist: str, n: int, seed: int = 0) -> np.ndarray:
    """Seeded lengths: log-normal (median 600, sigma 1.2, heavy tail) or SWE-task-like
    (log-uniform 1k..60k tokens)."""
    rng = np.random.default_rng(seed)
    if dist == "lognormal":
        return np.maximum(1, rng.lognormal(math.log(600), 1.2, n)).astype(np.int64)
    return np.exp(rng.uniform(math.log(1000), math.log(60000), n)).astype(np.int64)


def reference_bfd_rooms(sizes: np.ndarray, capacity: int) -> list[int]:
    """Remaining room of every bin of a plain item-by-item Best-Fit Decreasing: a sorted list of
    rooms, the best fit found by bisect. Bins with the same room are interchangeable, so the
    tie break changes neither the count nor the rooms: the check for any exact BFD."""
    rooms: list[int] = []  # open bins with room left, sorted
    full = 0
    for s in sorted(sizes.tolist(), reverse=True):
        i = bisect.bisect_left(rooms, s)
        room = capacity - s if i == len(rooms) else rooms.pop(i) - s
        if room:
            bisect.insort(rooms, room)
        else:
            full += 1
    return [0] * full + rooms


@dataclass
class Case:
    """One benchmark input: lengths, the token storage both sides read, and the bounds."""

    name: str
    max_len: int
    lengths: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    doc_ids: list[str]
    l2: int
    reference_rooms: list[int]

    @classmethod
    def build(cls, name: str) -> Case:
        dist, n, max_len = CASES[name]
        lengths = lengths_for(dist, n)
        total = int(lengths.sum())
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rng = np.random.default_rng(1)
        pieces = split_items(lengths, max_len, "split")[2]
        return cls(
            name=name,
            max_len=max_len,
            lengths=lengths,
            tokens=rng.integers(0, VOCAB, total, dtype=np.int32),
            mask=(rng.random(total) < 0.7).astype(np.int8),
            offsets=offsets,
            doc_ids=[f"owner__repo-{i}" for i in range(n)],
            l2=martello_toth_l2(pieces, max_len),
            reference_rooms=reference_bfd_rooms(pieces, max_len),
        )

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])


@dataclass
class Row:
    """Figures of one method on one case, over the timed rounds."""

    case: str
    method: str
    bins: int = 0
    tokens_written: int = 0
    tokens_lost: int = 0
    bytes_written: int = 0
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    @property
    def cpu_s(self) -> float:
        return statistics.median(self.cpu)

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(CPU s, wall s, result) of one call, after collecting everyone's garbage untimed."""
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def parquet_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))


def written(folder: str, length_column: str) -> tuple[int, int, int]:
    """(rows, tokens, bytes) of the Parquet files in ``folder``, read back from the files."""
    rows = tokens = size = 0
    for path in parquet_files(folder):
        f = pq.ParquetFile(path)
        rows += f.metadata.num_rows
        col = f.read(columns=[length_column]).column(0)
        tokens += int(pc.sum(pc.list_flatten(col) if pa.types.is_list(col.type) else col).as_py())
        size += os.path.getsize(path)
    return rows, tokens, size


class Runner:
    """Runs each method on one case into fresh folders under ``out_root``."""

    def __init__(self, case: Case, out_root: str, trl_batch: int) -> None:
        import datasets

        datasets.disable_progress_bars()
        self.case, self.out_root = case, out_root
        self.config = PackConfig()
        off = pa.array(case.offsets)
        # Zero-copy views of the same storage: TRL reads the tokens smelter reads.
        table = pa.table(
            {
                "input_ids": pa.LargeListArray.from_arrays(off, pa.array(case.tokens)),
                "completion_mask": pa.LargeListArray.from_arrays(off, pa.array(case.mask)),
            }
        )
        self.dataset = datasets.Dataset(table)
        self.trl_batch = trl_batch or len(case.lengths)
        self.floor_bytes: list[bytes] = []

    def fresh_dir(self, method: str) -> str:
        return tempfile.mkdtemp(prefix=f"bench-pack-{method}-", dir=self.out_root)

    def smelter(self, out: str) -> None:
        c = self.case
        # A fresh store: its cached views and id array are built inside the timed call.
        store = TokenStore(c.tokens, c.mask, c.offsets, c.doc_ids)
        plan = pack_arrays(c.lengths, c.max_len, mode="split")
        write_shards(
            store,
            plan,
            out,
            shard_rows=self.config.shard_rows,
            compression=self.config.shard_compression,
        )

    def trl(self, strategy: str, out: str) -> None:
        from trl.data_utils import pack_dataset

        packed = pack_dataset(
            self.dataset,
            self.case.max_len,
            strategy=strategy,
            map_kwargs={"batch_size": self.trl_batch},
        )
        pq.write_table(
            packed.data.table,
            os.path.join(out, "packed.parquet"),
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        )

    def floor(self, out: str) -> None:
        for i, data in enumerate(self.floor_bytes):
            fd = os.open(os.path.join(out, f"raw-{i:05d}.parquet"), os.O_WRONLY | os.O_CREAT)
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)

    def run(self, method: str, row: Row | None) -> None:
        """One timed call of ``method``; its figures go to ``row`` (None: a warm-up round)."""
        out = self.fresh_dir(method)
        try:
            if method == "smelter":
                fn: Callable[[], None] = lambda: self.smelter(out)  # noqa: E731
            elif method == "floor":
                fn = lambda: self.floor(out)  # noqa: E731
            else:
                fn = lambda: self.trl(method.removeprefix("trl-"), out)  # noqa: E731
            cpu, wall, _ = timed(fn)
            if method == "smelter" and not self.floor_bytes:
                for path in parquet_files(out):
                    with open(path, "rb") as f:
                        self.floor_bytes.append(f.read())
            if row is None:
                return
            row.cpu.append(cpu)
            row.wall.append(wall)
            if method == "floor":
                row.bytes_written = sum(os.path.getsize(p) for p in parquet_files(out))
            elif not row.bins:  # the outputs are deterministic: read them back once
                column = "num_tokens" if method == "smelter" else "seq_lengths"
                row.bins, row.tokens_written, row.bytes_written = written(out, column)
                row.tokens_lost = self.case.total_tokens - row.tokens_written
        finally:
            shutil.rmtree(out, ignore_errors=True)


def bench_case(
    name: str, rounds: int, warmup: int, out_root: str, trl_batch: int
) -> tuple[list[Row], int, bool]:
    """Rows of every method, the case's L2 bound, and whether smelter's plan is exact BFD."""
    t0 = time.perf_counter()
    case = Case.build(name)
    runner = Runner(case, out_root, trl_batch)
    plan = pack_arrays(case.lengths, case.max_len, mode="split")
    print(
        f"{name}: {len(case.lengths):,} documents, {case.total_tokens:,} tokens, max_len "
        f"{case.max_len:,}, {len(plan.item_len):,} pieces; L2 = {case.l2:,}, "
        f"ceil(tokens/max_len) = {math.ceil(case.total_tokens / case.max_len):,} "
        f"(inputs built in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    rows = {m: Row(name, m) for m in METHODS}
    for r in range(warmup + rounds):
        for method in METHODS:
            runner.run(method, rows[method] if r >= warmup else None)
        tag = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        cpus = "  ".join(f"{m} {rows[m].cpu[-1]:.3f}" for m in METHODS if r >= warmup)
        print(f"  {tag} done{': CPU s ' + cpus if cpus else ''}", file=sys.stderr, flush=True)
    rooms = sorted((case.max_len - plan.bin_loads()).tolist())
    exact = rooms == sorted(case.reference_rooms)
    print(
        f"  exact BFD: smelter {plan.num_bins:,} bins, reference BFD "
        f"{len(case.reference_rooms):,} bins, rooms of every bin identical: {exact}; "
        f"written: smelter {rows['smelter'].bins:,} rows, TRL bfd_split "
        f"{rows['trl-bfd_split'].bins:,} rows",
        flush=True,
    )
    return list(rows.values()), case.l2, exact


def print_table(rows: list[Row], l2: int) -> None:
    by = {r.method: r for r in rows}
    base, floor = by["trl-bfd_split"], by["floor"]
    head = (
        f"{'method':<15}{'bins':>9}{'bins/L2':>9}{'tok lost':>12}{'MB out':>8}{'CPU s':>8}"
        f"{'wall s':>8}{'CPU xTRLs':>10}{'wall xTRLs':>11}{'CPU xfloor':>11}{'wall xfloor':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        bins = f"{r.bins:>9,}{r.bins / l2:>9.4f}{r.tokens_lost:>12,}" if r.bins else f"{'-':>30}"
        print(
            f"{r.method:<15}{bins}{r.bytes_written / 2**20:>8.0f}{r.cpu_s:>8.3f}{r.wall_s:>8.3f}"
            f"{r.cpu_s / base.cpu_s:>10.3f}{r.wall_s / base.wall_s:>11.3f}"
            f"{r.cpu_s / floor.cpu_s:>11.3f}{r.wall_s / floor.wall_s:>12.3f}"
        )
    print(
        "bins from the written files; L2 = Martello-Toth bound of the pieces; xTRLs / xfloor = "
        "this method's median time / TRL bfd_split's / the floor's (< 1: faster)"
    )
    spread = "  ".join(f"{m} {min(by[m].cpu):.3f}-{max(by[m].cpu):.3f}" for m in METHODS)
    print(f"CPU s range over rounds: {spread}")


def verdict(rows: list[Row], exact: bool) -> list[str]:
    """The done-when lines of issue 15, each with its figure."""
    by = {r.method: r for r in rows}
    ours, base, floor = by["smelter"], by["trl-bfd_split"], by["floor"]
    speed = base.cpu_s / ours.cpu_s
    over_floor = ours.cpu_s / floor.cpu_s

    # Paired per round too: a neighbour's load or a writeback that hits one round hits both.
    paired = statistics.median(o / f for o, f in zip(ours.cpu, floor.cpu, strict=True))
    paired_trl = statistics.median(b / o for b, o in zip(base.cpu, ours.cpu, strict=True))

    def mark(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    return [
        f"  {mark(speed >= 5)}: CPU, TRL bfd_split / smelter = {speed:.2f}x (target >= 5x; "
        f"wall {base.wall_s / ours.wall_s:.2f}x; median of per-round ratios {paired_trl:.2f}x)",
        f"  {mark(over_floor <= 1.5)}: CPU, smelter / raw-write floor = {over_floor:.2f}x "
        f"(target <= 1.5x; wall {ours.wall_s / floor.wall_s:.2f}x; median of per-round ratios "
        f"{paired:.2f}x)",
        f"  {mark(exact)}: exact BFD (same bins and rooms as the reference BFD)",
        f"  {mark(ours.tokens_lost == 0)}: tokens lost = {ours.tokens_lost:,} (target 0)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median shown)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds of every method")
    parser.add_argument("--out-dir", help="where files are written (default: system temp)")
    parser.add_argument(
        "--trl-batch",
        type=int,
        default=0,
        help="documents per TRL map batch; 0 (default) = one batch = global BFD",
    )
    parser.add_argument("--json", help="also write the per-round figures to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "PyTorch was not found"
    out_root = tempfile.mkdtemp(prefix="bench-packing-", dir=args.out_dir)
    print(
        f"rounds {args.rounds} (+{args.warmup} warm-up, every method), interleaved in one "
        f"process; out-dir {out_root}; TRL batch {args.trl_batch or 'all'}; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    everything: list[dict[str, Any]] = []
    try:
        for name in args.cases.split(","):
            rows, l2, exact = bench_case(name, args.rounds, args.warmup, out_root, args.trl_batch)
            print_table(rows, l2)
            print("done when (issue 15), on " + name + ":")
            print("\n".join(verdict(rows, exact)), flush=True)
            everything += [asdict(r) | {"l2": l2} for r in rows]
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=2)


if __name__ == "__main__":
    main()
