"""The ``[environment]`` and ``[registry]`` options, apart from the Beam stage so the CLI can
list them without importing Beam.

``[registry]`` is its own section because two stages read it (environment pushes and pulls env
images, validate pushes kept instance images) and each receives it whole (``from_section``), so
only the registry, not the other stage's options, enters their cache keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# HOST[:PORT]/prefix as Docker parses a reference: a host is the first component when it has a
# dot or a port or is "localhost"; the prefix is lowercase path components.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = re.compile(
    rf"^(?P<host>(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?)"
    rf"/(?P<prefix>{_COMPONENT}(?:/{_COMPONENT})*)$"
)
REGISTRY_FORM = "HOST:PORT/prefix, e.g. 127.0.0.1:5000/smelter or registry.example.com/team/smelter"


def parse_registry(text: str) -> tuple[str, str]:
    """(host, prefix) of ``HOST[:PORT]/prefix``; ``ValueError`` naming the form otherwise."""
    m = _REGISTRY.match(text.strip().rstrip("/"))
    host = m.group("host") if m else ""
    if not m or not ("." in host or ":" in host or host == "localhost"):
        # Without a dot, a port or "localhost" Docker reads the first part as a Docker Hub
        # namespace, and images would go to the Hub instead.
        raise ValueError(f"--image-registry {text!r}: expected {REGISTRY_FORM}")
    return host, m.group("prefix")


@dataclass(frozen=True)
class RegistryConfig:
    """Where workers share images (flag ``--image-registry``, TOML section ``[registry]``)."""

    image_registry: str | None = field(
        default=None,
        metadata={"help": "HOST:PORT/prefix of a Docker registry: env images are pushed after "
                          "a build and pulled by workers that lack them; kept tasks' instance "
                          "images are pushed and tasks name them there (default: none, images "
                          "stay on the engine that built them)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.image_registry is not None:
            parse_registry(self.image_registry)


FROM_REGISTRY_SECTION = {"from_section": "registry", "help": "image registry, from [registry]"}


@dataclass(frozen=True)
class EnvConfig:
    """Options of the environment stage (flags ``--env-...``, TOML section ``[environment]``)."""

    env_base_suites: tuple[str, ...] = field(
        # Every known suite (transforms.base_images.SUITE_PYTHON; kept literal here so --help
        # imports nothing heavy): offering a Python costs nothing until a PR needs it.
        default=("bullseye", "bookworm", "trixie", "forky"),
        metadata={"help": "Debian suites whose Pythons PRs may get (bullseye=3.9, bookworm=3.11,"
                          " trixie=3.13, forky=3.14); each is bootstrapped the first time a PR "
                          "needs its Python, never at start"},
    )  # fmt: skip
    env_base_source: str = field(
        default="auto",
        metadata={"help": "base images from 'local' debootstrap, a 'registry' (python:X.Y-slim)"
                          " or 'auto' (registry only if it answers)"},
    )  # fmt: skip
    env_extra_ca_bundle: str | None = field(
        default="auto",
        metadata={"help": "PEM bundle added to the images' trust store so builds verify TLS "
                          "behind a proxy; 'auto' = $SSL_CERT_FILE if set, 'none' = no bundle"},
    )  # fmt: skip
    env_index_url: str | None = field(
        default=None,
        metadata={"help": "package index URL passed to uv as a build argument (never stored); "
                          "default: $UV_DEFAULT_INDEX if set, else PyPI"},
    )  # fmt: skip
    env_exclude_newer: bool = field(
        default=True,
        metadata={"help": "resolve dependencies as of the PR date (uv --exclude-newer)"},
    )
    env_exclude_newer_bucket_days: int = field(
        default=30,
        metadata={"help": "env layers resolve as of the PR date rounded down to buckets of this "
                          "many days, so neighbouring PRs share one env image (1 = exact day)",
                  "min": 1, "max": 3650},
    )  # fmt: skip
    env_build_parallelism: int = field(
        default=2, metadata={"min": 1, "help": "image builds running at once on this machine"}
    )
    env_build_timeout_seconds: int = field(
        default=1800, metadata={"min": 1, "help": "wall-clock limit of one image build"}
    )
    env_check_timeout_seconds: int = field(
        default=300,
        metadata={"min": 1, "help": "limit of the import + pytest --collect-only check"},
    )
    env_max_rungs: int = field(
        default=3,
        metadata={"min": 1, "help": "install-ladder rungs tried per candidate before rejecting"},
    )
    env_max_pythons: int = field(
        default=2,
        metadata={"help": "Python versions tried per candidate (best guess first) when every "
                          "rung fails on one", "min": 1},
    )  # fmt: skip
    env_compiler_rung: bool = field(
        default=True,
        metadata={"help": "retry a rung whose build wanted a C compiler with gcc and the Python "
                          "headers in its env layer"},
    )  # fmt: skip
    env_keep_instance_images: bool = field(
        default=False,
        metadata={"help": "keep instance images of rejected candidates (for debugging)"},
    )
    env_bootstrap_missing: bool = field(
        default=True,
        metadata={"help": "bootstrap a missing base image the first time a PR needs its "
                          "Python (off: that version is unavailable, the next one is tried)"},
    )  # fmt: skip
    env_scm_pretend_version: str = field(
        default="0.0.0",
        metadata={"help": "version given to git-versioned projects (setuptools-scm, hatch-vcs)"},
    )
    registry: RegistryConfig = field(default=RegistryConfig(), metadata=FROM_REGISTRY_SECTION)
    env_cache_dir: str | None = field(
        default=None,
        metadata={"help": "where rootfs tarballs, repo mirrors and remembered recipes live "
                          "(default ~/.cache/smelter or $SMELTER_CACHE_DIR)"},
    )  # fmt: skip
