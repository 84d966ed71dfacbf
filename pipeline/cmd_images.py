"""``smelter images bootstrap|ls|prune`` and ``smelter engine ensure``: Docker housekeeping.

Deliberate: these are thin wrappers over ``transforms.base_images`` / ``transforms.docker_engine``
so the Makefile, CI and users run exactly what the pipeline runs; every failure is a ``Fatal``
(one line), progress goes to stderr and the summary to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from smelter.transforms.adapters import base_images as bi
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import docker_prune as dprune


def _err() -> Console:
    return Console(stderr=True)


def _out() -> Console:
    """stdout; wide when piped, so tags are never cut to fit 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    # bookworm alone by default: the pipeline bootstraps other suites when a PR needs them, and
    # `make engine` should not spend minutes on interpreters a run may never use.
    suites = bi.DEFAULT_SUITES if args.all else tuple(dict.fromkeys(args.suite or ("bookworm",)))
    for s in suites:
        bi.python_for_suite(s)  # unknown suite: one-line error before any work
    err = _err()
    client = eng.connect()
    with err.status(f"bootstrapping base images for {', '.join(suites)}…"):
        images = bi.bootstrap(
            suites, cache_dir=args.cache_dir, source=args.source, client=client,
            mirror=args.mirror, say=lambda m: err.print(f"  {m}"),
        )  # fmt: skip
    table = Table("suite", "python", "tag", "source", "seconds", "what happened")
    for b in images:
        what = "built" if b.built else "already present"
        if b.source == "local":
            what += ", rootfs " + ("from cache" if b.rootfs_cached else "debootstrapped")
        table.add_row(b.suite, b.python_version, b.tag, b.source, f"{b.seconds:.1f}", what)
    _out().print(table)
    return 0


def _size(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.0f} MB"


def cmd_ls(args: argparse.Namespace) -> int:
    client = eng.connect()
    images = client.images.list(filters={"label": f"{eng.LABEL}=1"})
    table = Table("kind", "tag", "size", "created", "repo / suite")
    order = {k: i for i, k in enumerate((eng.KIND_ROOTFS, eng.KIND_BASE, eng.KIND_ENV,
                                         eng.KIND_INSTANCE))}  # fmt: skip

    def key(img: Any) -> tuple[int, str]:
        return order.get(img.labels.get(eng.LABEL_KIND, ""), 9), img.attrs.get("Created", "")

    for img in sorted(images, key=key):
        lab = img.labels or {}
        created = img.attrs.get("Created", "")[:19].replace("T", " ")
        where = lab.get(eng.LABEL_REPO) or lab.get(eng.LABEL_SUITE, "")
        tags = ", ".join(img.tags) or img.short_id
        table.add_row(lab.get(eng.LABEL_KIND, "?"), tags, _size(img.attrs.get("Size")), created,
                      where)  # fmt: skip
    containers = client.api.containers(all=True, filters={"label": f"{eng.LABEL}=1"})
    _out().print(table)
    print(f"{len(images)} images, {len(containers)} smelter containers "
          f"(at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)")  # fmt: skip
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    client = eng.connect()
    err = _err()
    removed = dprune.prune(
        client, images=not args.keep_instances, all_images=args.all,
        all_owners=args.all_owners, match={eng.LABEL_REPO: args.repo} if args.repo else None,
        say=lambda m: err.print(f"  {m}"),
    )  # fmt: skip
    what = "all smelter images" if args.all else (
        "no images" if args.keep_instances else "instance images")  # fmt: skip
    print(f"removed {removed['containers']} containers and {removed['images']} images ({what})")
    if removed["containers_spared"]:
        print(f"kept {removed['containers_spared']} containers of running smelter processes or "
              "image builds (--all-owners removes them too)")  # fmt: skip
    if removed["spared"]:
        print(f"kept {removed['spared']} instance images that running smelter runs still hold "
              "(--all-owners removes them too)")  # fmt: skip
    if removed["base_spared"]:
        print(f"kept {removed['base_spared']} env/base images: smelter runs still running may "
              "build on them (--all-owners removes them too)")  # fmt: skip
    if removed["layers_spared"]:
        print(f"kept {removed['layers_spared']} untagged layers younger than "
              f"{dprune.BUILD_GRACE_SECONDS:.0f}s: image builds in progress may need them "
              "(a later prune removes them)")  # fmt: skip
    return 0


def cmd_engine_ensure(args: argparse.Namespace) -> int:
    print(eng.ensure_engine(start=not args.no_start, say=lambda m: _err().print(m)))
    return 0


def register(sub: Any) -> None:
    images = sub.add_parser(
        "images", help="base images (bootstrap without a registry), list, prune",
        description="Manage smelter's Docker images: base images are built locally "
                    "(debootstrap -> docker import) when no registry answers.",
    )  # fmt: skip
    isub = images.add_subparsers(dest="images_command", metavar="SUBCOMMAND")

    boot = isub.add_parser(
        "bootstrap", help="build the base images (OS + Python + git + uv)",
        description="Build base images: "
                    + ", ".join(f"{s} = {v}" for s, v in bi.SUITE_PYTHON.items())
                    + " (Python). The pipeline builds a missing one the first time a PR needs "
                    "its Python; this builds them ahead. The root filesystem tarball is cached, "
                    "so a second run takes seconds.",
    )  # fmt: skip
    which = boot.add_mutually_exclusive_group()
    which.add_argument("--suite", action="append", choices=list(bi.SUITE_PYTHON),
                       help="Debian suite (repeatable; default: bookworm)")  # fmt: skip
    which.add_argument("--all", action="store_true",
                       help=f"every known suite ({', '.join(bi.SUITE_PYTHON)})")  # fmt: skip
    boot.add_argument(
        "--source", choices=("auto", "local", "registry"), default="auto",
        help="local debootstrap, registry python:X.Y-slim, or auto (registry only if it "
             "answers within seconds; default)",
    )  # fmt: skip
    boot.add_argument("--cache-dir", default=None,
                      help="rootfs tarball cache (default ~/.cache/smelter)")  # fmt: skip
    boot.add_argument("--mirror", default=bi.DEFAULT_MIRROR, help="Debian mirror for debootstrap")
    boot.set_defaults(func=cmd_bootstrap)

    ls = isub.add_parser("ls", help="list smelter images (base, env, instance)")
    ls.set_defaults(func=cmd_ls)

    prune = isub.add_parser(
        "prune", help="remove leftover smelter containers and instance images",
        description="Remove every container labelled dev.smelter=1 and, unless "
                    "--keep-instances, the instance images; --all also removes env, base and "
                    "rootfs images. Nothing without smelter's label is touched. Containers and "
                    "instance images held by a smelter process still running (or on another "
                    "machine) are kept, and so are the steps and untagged layers of image builds "
                    "that may be in progress (younger than "
                    f"{dprune.BUILD_GRACE_SECONDS / 60:.0f} minutes); those of runs that died "
                    "(e.g. SIGKILLed) go.",
    )  # fmt: skip
    prune.add_argument("--all", action="store_true", help="also env, base and rootfs images")
    prune.add_argument("--keep-instances", action="store_true", help="remove containers only")
    prune.add_argument("--all-owners", action="store_true",
                       help="also containers and instance images of smelter processes still "
                            "running, or of other machines")  # fmt: skip
    prune.add_argument("--repo", default=None, help="only objects of this owner/name repository")
    prune.set_defaults(func=cmd_prune)
    images.set_defaults(func=lambda _a: images.print_help() or 2)

    engine = sub.add_parser(
        "engine", help="make sure a Docker engine answers",
        description="Check the Docker engine (DOCKER_HOST or the local socket).",
    )  # fmt: skip
    esub = engine.add_subparsers(dest="engine_command", metavar="SUBCOMMAND")
    ensure = esub.add_parser(
        "ensure", help="start dockerd if none answers (root; installs docker.io if missing)",
        description="If no engine answers and we are root: install Debian's docker.io when "
                    "dockerd is missing, start `dockerd --bridge=none --iptables=false` in the "
                    "background (log in /var/log/smelter-dockerd.log) and wait until it answers.",
    )  # fmt: skip
    ensure.add_argument("--no-start", action="store_true", help="only check, never start one")
    ensure.set_defaults(func=cmd_engine_ensure)
    engine.set_defaults(func=lambda _a: engine.print_help() or 2)
