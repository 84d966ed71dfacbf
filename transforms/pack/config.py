"""The ``[pack]`` options, apart from the Beam transforms so the CLI can list them without
importing Beam or numpy."""

from __future__ import annotations

import dataclasses

from smelter.transforms.adapters.git import FROM_GIT_SECTION, GitConfig

PACK_MODES: tuple[str, ...] = ("split", "drop")  # packing.py takes them from here
SHARD_CODECS = ("none", "zstd", "snappy")


@dataclasses.dataclass(frozen=True)
class PackConfig:
    """Render, tokenize and pack options (one section: ``[pack]``)."""

    render_template: str = dataclasses.field(
        default="chatml_v1",
        metadata={"help": "versioned chat template (templates/<name>.*.txt), recorded per sample"},
    )
    render_tokenizer: str = dataclasses.field(
        default="qwen2.5",
        metadata={
            "help": "qwen2.5 (= Qwen3 / Qwen3-Coder ids), qwen3.6, or hf:/path/to/tokenizer folder"
        },
    )
    pack_max_len: int = dataclasses.field(
        default=32768, metadata={"min": 1, "help": "tokens per packed sequence"}
    )
    pack_mode: str = dataclasses.field(
        default="drop",
        metadata={
            "help": "documents longer than pack_max_len: drop (rejected as too_long) "
            "or split into pack_max_len pieces"
        },
    )
    pack_buckets: int = dataclasses.field(
        default=1,
        metadata={
            "min": 1,
            "help": "independent packing buckets (parallelism; each may add one partly "
            "filled sequence)",
        },
    )
    shard_rows: int = dataclasses.field(
        default=1024, metadata={"min": 1, "help": "packed sequences per Parquet shard file"}
    )
    shard_compression: str = dataclasses.field(
        default="none",
        metadata={
            "help": "codec for the token values: none, zstd (code tokens ~4x smaller, writes "
            "~2x slower) or snappy; position_ids and loss_mask are compact either way"
        },
    )
    git: GitConfig = dataclasses.field(default=GitConfig(), metadata=FROM_GIT_SECTION)

    def __post_init__(self) -> None:
        if self.shard_compression not in SHARD_CODECS:
            raise ValueError(f"shard_compression must be one of {', '.join(SHARD_CODECS)}")
        if self.pack_mode not in PACK_MODES:
            raise ValueError(f"pack_mode must be one of {', '.join(PACK_MODES)}")
        for name in ("pack_max_len", "pack_buckets", "shard_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def render_part(self) -> dict[str, str]:
        """The fields that change a Sample (the render cache key ignores the packing ones)."""
        return {"template": self.render_template, "tokenizer": self.render_tokenizer}
