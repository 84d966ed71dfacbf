"""Options: stage config dataclasses become flags and TOML keys; Beam's own options pass through.

Deliberate choices:
- Each stage owns a frozen config dataclass whose fields carry their help text
  (``field(metadata={"help": ...})``). This module turns those fields into ``--field-name`` flags
  and ``[section] field_name = …`` TOML keys, so one definition serves the CLI, the config file,
  ``--dry-run`` and the run manifest. Transforms never see argparse or PipelineOptions.
- Precedence: defaults < config file < flags.
- A setting several stages must agree on is one section, copied into each stage's config
  (a field with ``metadata={"from_section": ...}``): ``[paths]`` holds which paths are tests,
  and the miners and the snapshot stage each carry it, so it is part of their cache keys;
  ``[git]`` holds where mirrors live, carried by every stage that opens one; ``[filters]``
  holds which PRs both miners keep. Keys that moved (``RENAMED``) are a one-line error naming
  the new place, not a silent default.
- Every numeric field states its accepted range in its metadata (``"min"``, ``"max"``; a byte
  size string such as ``"4g"`` has ``"min_bytes"``). ``build_stage_configs`` checks each value
  from a file or flag against it before Beam starts, so ``--validate-pids-limit -1`` (which
  Docker would read as "no limit") is one line naming the option and its range, not a silent
  setting; ``--help`` and the README table show the same range.
- Nothing here imports Beam at module level (``PipelineOptions`` is imported where Beam flags
  are checked), and the config classes live in Beam-free modules, so ``--help`` and the option
  reference start fast.
- Arguments we do not know are handed to Beam only if a Beam ``PipelineOptions`` subclass knows
  them (``--runner``, ``--direct_num_workers``…); anything else is a one-line usage error instead
  of Beam's silent "discarding unparseable args". Beam's Dask options (``--dask_client_address``
  …) live in the Dask runner's module, which Beam never imports by itself: it is imported here.
- ``--runner DaskRunner`` (Beam knows no such short name) and Beam's own Dask runner class both
  mean smelter's fixed subclass (``pipeline/dask_runner.py``: Beam's loses tagged outputs).
- A runner that cannot start here (Flink/Spark without a job-server jar, Dataflow without its
  project, region, GCS folders or Beam's GCP extra) is one line naming what is missing, checked
  before Beam starts: Beam itself would try a download at run time and print a long traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import re
import shutil
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smelter.transforms.errors import Fatal

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

# section name -> (module, class). Order is the order of stages and of --help groups. Every module
# here must stay Beam-free: --help and the README reference import them all.
STAGE_CONFIGS: dict[str, tuple[str, str]] = {
    "paths": ("smelter.transforms.testpaths", "PathsConfig"),
    "git": ("smelter.transforms.adapters.git", "GitConfig"),
    "filters": ("smelter.transforms.mine.config", "FiltersConfig"),
    "mine": ("smelter.transforms.mine.config", "MineConfig"),
    "github": ("smelter.transforms.mine.github_config", "GitHubConfig"),
    "snapshot": ("smelter.transforms.snapshot.config", "SnapshotConfig"),
    "registry": ("smelter.transforms.environment.config", "RegistryConfig"),
    "environment": ("smelter.transforms.environment.config", "EnvConfig"),
    "validate": ("smelter.transforms.validate.config", "ValidateConfig"),
    "clean": ("smelter.transforms.clean.config", "CleanConfig"),
    "pack": ("smelter.transforms.pack.config", "PackConfig"),
}


# Keys that moved: old TOML key (or flag, with dashes) -> (section, new key). A file or command
# line still using one gets a one-line error naming the new place instead of "unknown key".
RENAMED: dict[str, tuple[str, str]] = {
    **{
        f"{stage}_test_{what}": ("paths", f"test_{what}")
        for stage in ("mine", "snapshot", "github")
        for what in ("dir_names", "file_globs")
    },
    **{
        f"{stage}_mirror_dir": ("git", "mirror_dir")
        for stage in ("mine", "github", "snapshot", "render")
    },
    "mine_max_files": ("filters", "max_files"),
    "github_max_changed_files": ("filters", "max_files"),
    "mine_max_changed_lines": ("filters", "max_changed_lines"),
    "github_max_changed_lines": ("filters", "max_changed_lines"),
    "mine_require_tests_and_code": ("filters", "require_tests_and_code"),
    "github_require_tests_and_code": ("filters", "require_tests_and_code"),
}


def load_config_classes() -> dict[str, type]:
    """The stage config classes that are installed (a missing module is skipped)."""
    found: dict[str, type] = {}
    for section, (module_name, cls_name) in STAGE_CONFIGS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        cls = getattr(module, cls_name, None)
        if cls is not None:
            found[section] = cls
    return found


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def is_option(f: dataclasses.Field[Any]) -> bool:
    """A field that is its section's own TOML key; ``from_section`` fields copy another section."""
    return not f.metadata.get("from_section")


def renamed_message(old_key: str, file_section: str | None = None) -> str:
    """One line naming where a moved key lives now (``file_section``: found in a config file)."""
    section, new_key = RENAMED[old_key]
    if file_section is not None:
        return (
            f"config file: [{file_section}] {old_key} is now [{section}] {new_key}, "
            "one setting for every stage"
        )
    return (
        f"{flag_name(old_key)} is now {flag_name(new_key)} ([{section}] {new_key} in a config "
        "file), one setting for every stage"
    )


_SIZE = re.compile(r"^(\d+)([bkmg]?)b?$", re.IGNORECASE)  # whole units: tmpfs takes no "1.5g"
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int | None:
    """Bytes of a Docker-style size (``512m``, ``4g``, ``1048576``); None if it is not one."""
    m = _SIZE.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _show_size(n: int) -> str:
    for unit in ("g", "m", "k"):
        if n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def accepted_range(f: dataclasses.Field[Any]) -> str | None:
    """The range a field accepts, as shown in errors, ``--help`` and the README; None: any."""
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if "min_bytes" in f.metadata:
        return f"a size like 512m or 4g, at least {_show_size(f.metadata['min_bytes'])}"
    if low is not None and high is not None:
        return f"{low}..{high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return None


def range_problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    """Why ``value`` (already coerced to the field's type) is refused, naming the accepted
    range; None when the field takes it."""
    accepted = accepted_range(f)
    if value is None or accepted is None:
        return None
    if "min_bytes" in f.metadata:
        size = parse_size(str(value))
        if size is None:
            return f"not a size, accepted: {accepted}"
        return None if size >= f.metadata["min_bytes"] else f"out of range, accepted: {accepted}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"not a number, accepted: {accepted}"
    if not math.isfinite(value):
        return f"not a finite number, accepted: {accepted}"
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        return f"out of range, accepted: {accepted}"
    return None


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(tp: Any, value: Any) -> Any:
    """Convert a TOML/flag value to a field's declared type, with a clear error if impossible."""
    base, _ = _unwrap_optional(tp)
    if value is None:
        return None
    if typing.get_origin(base) is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        (item_type, *_) = typing.get_args(base) or (str,)
        return tuple(item_type(v) for v in items)
    if base is bool:
        if isinstance(value, str):
            return value.lower() in {"1", "true", "yes", "on"}
        return bool(value)
    if isinstance(base, type) and not isinstance(value, base):
        return base(value)
    return value


def _type_name(tp: Any) -> str:
    base, _ = _unwrap_optional(tp)
    return {int: "whole number", float: "number", bool: "true/false"}.get(base, "value")


def add_stage_arguments(parser: argparse.ArgumentParser, classes: dict[str, type]) -> None:
    """One argument group per stage config; every field becomes a flag defaulting to None."""
    seen: dict[str, str] = {}
    for section, cls in classes.items():
        group = parser.add_argument_group(f"{section} options")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is False or not is_option(f):
                continue
            if f.name in seen:
                raise RuntimeError(f"config field {f.name!r} in both {seen[f.name]} and {section}")
            seen[f.name] = section
            base, _ = _unwrap_optional(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            help_text = f.metadata.get("help", "")
            accepted = accepted_range(f)
            shown = f"default: {default!r}" + (f"; accepted: {accepted}" if accepted else "")
            help_text = f"{help_text} ({shown})" if help_text else None
            if help_text:
                help_text = help_text.replace("%", "%%")  # argparse %-formats help ("~20%")
            kwargs: dict[str, Any] = {
                "dest": f"{section}.{f.name}",
                "default": None,
                "help": help_text,
            }
            if base is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(base) is tuple:
                kwargs["nargs"] = "+"
                kwargs["metavar"] = f.name.upper()
            else:
                kwargs["type"] = base if base in (int, float) else str
                kwargs["metavar"] = f.name.rsplit("_", 1)[-1].upper()
            group.add_argument(flag_name(f.name), **kwargs)


def read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    try:
        with Path(path).open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise Fatal(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Fatal(f"cannot read config file {path}: {e}") from None
    if not all(isinstance(v, dict) for v in doc.values()):
        raise Fatal(f"{path}: expected only [sections] at top level, like [validate]")
    return doc


def build_stage_configs(
    args: argparse.Namespace, classes: dict[str, type], file_doc: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Instantiate every stage config from defaults < file section < flags.

    A field marked ``from_section`` (e.g. every stage's ``test_paths``) is no key of its own
    section: it is set to the built config of the section it names, so stages that must agree
    share one setting.
    """
    configs: dict[str, Any] = {}
    known_sections = set(classes) | {"run"}
    for section in file_doc:
        if section not in known_sections:
            known = ", ".join(sorted(known_sections))
            raise Fatal(f"config file: unknown section [{section}] (known: {known})")
    for section, cls in classes.items():
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if is_option(f)}
        values: dict[str, Any] = {}
        where: dict[str, str] = {}  # how an error names the setting: its flag or its file key
        for key, value in file_doc.get(section, {}).items():
            if key in RENAMED:
                raise Fatal(renamed_message(key, section))
            if key not in names:
                raise Fatal(f"config file: unknown key {key!r} in [{section}]")
            values[key] = value
            where[key] = f"config file: [{section}] {key} = {value!r}"
        for name in names:
            flag_value = getattr(args, f"{section}.{name}", None)
            if flag_value is not None:
                values[name] = flag_value
                where[name] = f"{flag_name(name)} {flag_value}"
        fields = {f.name: f for f in dataclasses.fields(cls)}
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            try:
                coerced[key] = _coerce(hints[key], value)
            except (TypeError, ValueError):
                raise Fatal(f"{where[key]}: not a valid {_type_name(hints[key])}") from None
            problem = range_problem(fields[key], coerced[key])
            if problem is not None:
                raise Fatal(f"{where[key]}: {problem}")
        try:
            configs[section] = cls(**coerced)
        except (TypeError, ValueError) as e:
            raise Fatal(f"bad value in [{section}] options: {e}") from None
    for section, config in configs.items():
        shared = {
            f.name: configs[f.metadata["from_section"]]
            for f in dataclasses.fields(config)
            if not is_option(f) and f.metadata["from_section"] in configs
        }
        if shared:
            configs[section] = dataclasses.replace(config, **shared)
    return configs


def _beam_option_classes() -> list[type[PipelineOptions]]:
    # Imported here, not at the top: Beam takes seconds to import and --help never needs it.
    from apache_beam.options.pipeline_options import PipelineOptions

    with contextlib.suppress(ImportError):  # defines DaskOptions (needs dask + distributed)
        import apache_beam.runners.dask.dask_runner  # noqa: F401

    out: list[type[PipelineOptions]] = []
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def refuse_renamed_flags(extra: Sequence[str]) -> None:
    """A leftover flag that moved (``RENAMED``) is a one-line error naming its new place; checked
    before anything imports Beam, whose import alone takes seconds."""
    for arg in extra:
        old_key = arg.split("=", 1)[0].removeprefix("--").replace("-", "_")
        if arg.startswith("--") and old_key.removeprefix("no_") in RENAMED:  # --no-…: a bool
            raise Fatal(renamed_message(old_key.removeprefix("no_")))


def beam_options(extra: Sequence[str], default_flags: Sequence[str] = ()) -> PipelineOptions:
    """Beam options from leftover flags; unknown flags are a usage error, not a silent drop.

    ``default_flags`` come first so a user's flag of the same name (argparse: last one wins)
    overrides them.
    """
    refuse_renamed_flags(extra)
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    for cls in _beam_option_classes():
        try:
            cls._add_argparse_args(parser)  # type: ignore[attr-defined, arg-type]
        except argparse.ArgumentError:
            continue  # several Beam classes register the same flag
    try:
        _, unknown = parser.parse_known_args(list(extra))
    except argparse.ArgumentError as e:  # a bad value: one line, not Beam's 200-line usage
        raise Fatal(f"Beam option {e}") from None
    if unknown:
        raise Fatal(f"unrecognized arguments: {' '.join(unknown)} (see smelter COMMAND --help)")
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(runner_aliases([*default_flags, *extra]))
    check_runner(options)
    return options


DASK_RUNNER = "smelter.pipeline.dask_runner.DaskRunner"
# --runner values that mean smelter's Dask runner (Beam's own class loses tagged outputs).
RUNNER_ALIASES = {
    "DaskRunner": DASK_RUNNER,
    "apache_beam.runners.dask.dask_runner.DaskRunner": DASK_RUNNER,
}


def runner_aliases(flags: Sequence[str]) -> list[str]:
    """``flags`` with ``--runner DaskRunner`` (or ``=``) spelled as the class Beam imports."""
    out = list(flags)
    for i, flag in enumerate(out):
        if flag.startswith("--runner="):
            name = flag.split("=", 1)[1]
            out[i] = f"--runner={RUNNER_ALIASES.get(name, name)}"
        elif flag == "--runner" and i + 1 < len(out):
            out[i + 1] = RUNNER_ALIASES.get(out[i + 1], out[i + 1])
    return out


def runner_name(options: PipelineOptions) -> str:
    """The runner's short name (``FlinkRunner``), whichever way it was given."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if not isinstance(runner, str):
        runner = type(runner).__name__
    return runner.rsplit(".", 1)[-1]


def _job_server_problem(name: str, jar_flag: str, values: dict[str, Any]) -> str | None:
    if values.get("job_endpoint"):
        return None
    jar = values.get(jar_flag)
    if not jar:
        return (
            f"--runner {name} needs its Beam job server, which cannot be downloaded here: give "
            f"--{jar_flag} PATH (a local copy of Beam's {name.removesuffix('Runner').lower()} "
            "job-server jar for this Beam version) or --job_endpoint HOST:PORT of a running one"
        )
    if not Path(jar).is_file():
        return f"--{jar_flag} {jar}: no such file"
    if shutil.which("java") is None:
        return f"--runner {name} with --{jar_flag}: the job server needs java on PATH"
    return None


def check_runner(options: PipelineOptions) -> None:
    """Refuse, in one line, a runner that cannot start with these options on this machine."""
    name = runner_name(options)
    values = options.get_all_options()
    problem: str | None = None
    if name == "DaskRunner" and importlib.util.find_spec("distributed") is None:
        problem = "--runner DaskRunner needs dask and distributed: pip install 'apache-beam[dask]'"
    elif name == "FlinkRunner":
        problem = _job_server_problem(name, "flink_job_server_jar", values)
    elif name == "SparkRunner":
        problem = _job_server_problem(name, "spark_job_server_jar", values)
    elif name == "PortableRunner" and not values.get("job_endpoint"):
        problem = "--runner PortableRunner needs --job_endpoint HOST:PORT of a running job server"
    elif name == "DataflowRunner":
        gcp = ("project", "region", "temp_location")
        if importlib.util.find_spec("apitools") is None:
            problem = f"--runner {name} needs Beam's GCP extra: pip install 'apache-beam[gcp]'"
        elif missing := [f"--{k}" for k in gcp if not values.get(k)]:
            problem = (
                f"--runner {name} needs {', '.join(missing)} (a GCP project, its region and a "
                "gs:// folder) and network access to Google Cloud"
            )
    if problem:
        raise Fatal(problem)


def reference_markdown(classes: dict[str, type] | None = None) -> str:
    """The configuration reference (README): one table per stage, generated from the fields."""
    classes = classes if classes is not None else load_config_classes()
    parts = []
    for section, cls in classes.items():
        rows = ["| flag | TOML key | default | accepted | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is False or not is_option(f):
                continue
            default: Any = f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            shown = "—" if default in (None, "", ()) else f"`{default!r}`"
            help_text = str(f.metadata.get("help", "")).replace("|", "\\|")
            accepted = accepted_range(f) or ""
            rows.append(
                f"| `{flag_name(f.name)}` | `{f.name}` | {shown} | {accepted} | {help_text} |"
            )
        parts.append(f"### [{section}]\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
