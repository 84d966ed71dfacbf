"""Environment benchmark: base bootstrap (warm; cold with --cold), rootfs import, demo env builds.

Run: ``.venv/bin/python tests/benchmarks/bench_environment.py [--cold] [--keep]``

What is measured (printed, never asserted):
- bootstrap warm = ``bootstrap(("bookworm",))`` when the base image exists (tag lookups only);
- rootfs import = ``docker import`` of the cached bookworm tarball under a throwaway tag, i.e. a
  bootstrap on a fresh engine with the tarball cache kept;
- bootstrap cold (``--cold``) = debootstrap of bookworm into a temporary cache folder + tar;
- the demo repository's candidates through ``EnvironmentFn`` twice: pass 1 builds what the
  engine lacks (env layers shared across PRs), pass 2 must be all env cache hits; per PR: the
  rung, seconds, env cache hit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests helpers, run as a script

from _demo_stages import HOST_CA, demo_candidates  # noqa: E402

from smelter.pipeline.demo.build import create_demo_repo  # noqa: E402
from smelter.schemas import Candidate  # noqa: E402
from smelter.transforms.adapters import base_images as bi  # noqa: E402
from smelter.transforms.adapters import docker_engine as eng  # noqa: E402
from smelter.transforms.environment.builder import EnvironmentFn  # noqa: E402
from smelter.transforms.environment.config import EnvConfig  # noqa: E402
from smelter.transforms.errors import Rejected  # noqa: E402


def timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="also time a cold debootstrap (minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the demo instance images")
    args = ap.parse_args()
    eng.ensure_engine(say=lambda m: print(m, file=sys.stderr))
    client = eng.connect()

    (base,), warm = timed(lambda: bi.bootstrap(("bookworm",), source="local", client=client,
                                               say=lambda _m: None))  # fmt: skip
    print(f"bootstrap warm (image present): {warm:.2f}s -> {base.tag}")
    tarball, _ = bi.ensure_rootfs("bookworm", bi.default_cache_dir(), say=lambda _m: None)
    tag = f"smelter/rootfs-bench:{int(time.time())}"
    _, imp = timed(lambda: client.api.import_image_from_file(str(tarball), *tag.split(":")))
    client.images.remove(tag, force=True)
    print(f"rootfs import (fresh engine, cached tarball {tarball.stat().st_size / 1e6:.0f} MB): "
          f"{imp:.1f}s")  # fmt: skip
    if args.cold:
        with tempfile.TemporaryDirectory(dir=bi.default_cache_dir()) as tmp:
            (_, cached), cold = timed(lambda: bi.ensure_rootfs("bookworm", Path(tmp),
                                                               say=lambda _m: None))  # fmt: skip
            print(f"bootstrap cold (debootstrap + tar, cached={cached}): {cold:.1f}s")

    with tempfile.TemporaryDirectory() as tmp:
        demo = create_demo_repo(Path(tmp) / "demo")
        cands = demo_candidates(demo, Path(tmp))
        config = EnvConfig(env_base_source="local", env_extra_ca_bundle=HOST_CA,
                           env_cache_dir=str(Path(tmp) / "cache"))  # fmt: skip
        fn = EnvironmentFn(config)
        fn.setup()
        built: list[str] = []
        try:
            for label in ("pass 1", "pass 2"):
                secs, hits, rejected = [], 0, 0
                t0 = time.monotonic()
                for number, cand in sorted(cands.items()):
                    try:
                        (out,) = list(fn.run(cand))
                    except Rejected as r:
                        rejected += 1
                        print(f"  {label} PR {number}: rejected {r.reason.value}")
                        continue
                    assert isinstance(out, Candidate) and out.environment
                    env = out.environment
                    secs.append(env.build_seconds)
                    hits += env.env_cache_hit
                    built.append(env.instance_image)
                    how = "hit " if env.env_cache_hit else "built"
                    print(f"  {label} PR {number}: {env.recipe:<14} {env.build_seconds:6.1f}s "
                          f"env {how} {env.env_image}")  # fmt: skip
                total = time.monotonic() - t0
                n = len(secs)
                print(f"{label}: {n} environments + {rejected} rejected in {total:.1f}s; "
                      f"env cache hits {hits}/{n}, builds {n - hits}; median per PR "
                      f"{statistics.median(secs) if secs else 0:.1f}s")  # fmt: skip
        finally:
            fn.teardown()
            if not args.keep:
                for image in set(built):
                    eng.remove_image(client, image)


if __name__ == "__main__":
    main()
