"""The job spec: what a user writes in job.yaml, validated once and passed down explicitly.

Names follow Azure ML's ParallelRunConfig so that its users recognise them. Paths that are not
URIs are resolved against the folder of the job file, so a job file can be run from anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetrun.common.errors import SpecError
from fleetrun.common.storage import is_local, resolve_uri

InputFormat = Literal["files", "csv", "parquet", "jsonl"]
OutputAction = Literal["append_row", "summary_only"]
OutputFormat = Literal["text", "csv", "jsonl", "parquet"]
TABULAR_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)
LoggingLevel = Literal["WARNING", "INFO", "DEBUG"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SECRET_OPTIONS = {
    "key",
    "secret",
    "token",
    "password",
    "account_key",
    "connection_string",
    "sas_token",
    "credential",
    "credentials",
    "client_secret",
    "access_key",
    "secret_key",
    "session_token",
    "aws_secret_access_key",
    "aws_session_token",
}
_FORBIDDEN_FILE_NAME_CHARS = set('~"#%&*:<>?/\\{}|')
# Keys that change what a batch produces; everything else (thresholds, tries, timeouts, fleet
# size) may change between runs of one job without invalidating its finished batches.
_IDENTITY_KEYS = (
    "name",
    "inputs",
    "input_format",
    "output",
    "entry_script",
    "arguments",
    "side_inputs",
    "mini_batch_size",
    "mini_batch_rows",
    "partition_keys",
    "output_action",
    "append_row_file_name",
    "append_row_format",
    "keep_columns",
    "environment_variables",
)


class JobSpec(BaseModel):
    """A validated job spec. Build it with :func:`load_spec` or directly in Python."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    job_id: str | None = None
    inputs: list[str] = Field(min_length=1)
    input_format: InputFormat | None = None
    output: str
    entry_script: str
    source_directory: str = "."
    arguments: list[str] = Field(default_factory=list)
    side_inputs: dict[str, str] = Field(default_factory=dict)
    mini_batch_size: int | str | None = None
    mini_batch_rows: int | None = Field(default=None, ge=1)
    partition_keys: list[str] | None = None
    output_action: OutputAction = "append_row"
    append_row_file_name: str = "parallel_run_step.txt"
    append_row_format: OutputFormat = "text"
    keep_columns: list[str] = Field(default_factory=list)
    error_threshold: int = Field(default=-1, ge=-1)
    allowed_failed_count: int = Field(default=-1, ge=-1)
    allowed_failed_percent: float = Field(default=100, ge=0, le=100)
    run_max_try: int = Field(default=3, ge=1, le=100)
    run_invocation_timeout: float = Field(default=60, gt=0, le=259200)
    process_count_per_node: int = Field(default=1, ge=1, le=256)
    node_count: int | None = Field(default=None, ge=1)
    logging_level: LoggingLevel = "INFO"
    environment_variables: dict[str, str] = Field(default_factory=dict)
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    allow_reuse: bool = True

    @field_validator("name")
    @classmethod
    def _name_is_usable_in_paths_and_queues(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input_may_be_a_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("append_row_file_name")
    @classmethod
    def _file_name_is_plain(cls, value: str) -> str:
        bad = sorted(_FORBIDDEN_FILE_NAME_CHARS.intersection(value))
        if not value or bad:
            raise ValueError(f"a plain file name is needed; remove {''.join(bad) or 'nothing'}")
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials_in_the_spec(
        cls, value: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        for protocol, options in value.items():
            secrets = sorted(k for k in options if k.lower() in _SECRET_OPTIONS)
            if secrets:
                raise ValueError(
                    f"{protocol}: {', '.join(secrets)} would put credentials in the job spec, "
                    "which is stored with the job and sent to every worker; set them in the "
                    "environment "
                    "instead (AZURE_STORAGE_CONNECTION_STRING, AWS_ACCESS_KEY_ID, ...) and keep "
                    "only endpoints, regions and the like here"
                )
        return value

    @field_validator("logging_level", mode="before")
    @classmethod
    def _level_upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _env_values_are_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _batch_size_fits_the_format(self) -> JobSpec:
        # The spec is frozen; these fill in what was left to be inferred, once, here.
        fmt = self.input_format or infer_input_format(self.inputs)
        object.__setattr__(self, "input_format", fmt)
        if fmt == "files":
            for key in ("partition_keys", "mini_batch_rows", "keep_columns"):
                if getattr(self, key):
                    raise ValueError(
                        f"{key} applies to tabular inputs (input_format csv, "
                        "parquet or jsonl), not to files"
                    )
            size = 10 if self.mini_batch_size is None else self.mini_batch_size
            if isinstance(size, str):
                if not size.strip().isdigit():
                    raise ValueError(
                        f"mini_batch_size {size!r}: file inputs take a count of files, e.g. 10"
                    )
                size = int(size)
            if size < 1:
                raise ValueError("mini_batch_size must be at least 1 file")
            object.__setattr__(self, "mini_batch_size", size)
        else:
            size = "1MB" if self.mini_batch_size is None else self.mini_batch_size
            object.__setattr__(self, "mini_batch_size", parse_size(size))
        if self.append_row_format != "text" and self.output_action != "append_row":
            raise ValueError("append_row_format applies to output_action: append_row")
        for key in self.side_inputs:
            if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", key):
                raise ValueError(f"side_inputs name {key!r} must be usable as --{key}")
        return self

    @property
    def batch_size(self) -> int:
        """Files per mini-batch (file inputs), or bytes per mini-batch (tabular inputs)."""
        return int(self.mini_batch_size or 0)

    @property
    def tabular(self) -> bool:
        return self.input_format != "files"

    @property
    def state_uri(self) -> str:
        """The job's state folder: spec, code snapshot, result parts, progress."""
        return self.output.rstrip("/") + "/_fleetrun"

    @property
    def output_file_uri(self) -> str:
        return self.output.rstrip("/") + "/" + self.append_row_file_name

    def identity(self, code_digest: str) -> str:
        """A digest of everything that decides what the batches produce."""
        fields = self.model_dump(include=set(_IDENTITY_KEYS))
        fields["code"] = code_digest
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def resolved_job_id(self, code_digest: str) -> str:
        """``job_id`` if given, else ``name`` plus a short hash of the job's identity."""
        return self.job_id or f"{self.name}-{self.identity(code_digest)[:10]}"


def parse_size(value: int | str) -> int:
    """``1024``, ``"512KB"``, ``"10MB"``, ``"1GB"`` (1024-based) as a number of bytes."""
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(
                f"mini_batch_size {value!r}: tabular inputs take a size such as 1024, 512KB, 10MB "
                "or 1GB (or set mini_batch_rows for a row count)"
            )
        unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        size = int(match.group(1)) * unit
    if size < 1:
        raise ValueError("mini_batch_size must be at least 1 byte")
    return size


def infer_input_format(inputs: list[str]) -> InputFormat:
    """A tabular format when every input (file or glob) ends in its extension; else files.

    Folders stay ``files``: a folder of CSV files is as often a set of files to hand over as
    it is a table, and ParallelRunStep's FileDataset users expect paths.
    """
    formats = set()
    for uri in inputs:
        suffix = "." + uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
        formats.add(TABULAR_EXTENSIONS.get(suffix))
    if len(formats) == 1 and None not in formats:
        fmt = formats.pop()
        return fmt  # type: ignore[return-value]
    return "files"


def describe_validation_error(error: ValidationError, source: str) -> str:
    """Turn pydantic's report into sentences that name each key and how to fix it."""
    lines = [f"{source} is not a valid job spec:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(spec)"
        kind = item["type"]
        if kind == "extra_forbidden":
            known = ", ".join(JobSpec.model_fields)
            lines.append(f"  - unknown key {key!r}: remove it or use one of: {known}")
        elif kind == "missing":
            lines.append(f"  - {key!r} is required: add it to the spec")
        else:
            message = item["msg"].removeprefix("Value error, ")
            # Never echo what storage_options held: it may be the secret being refused.
            got = "" if key.startswith("storage_options") else f" (got {item.get('input')!r})"
            lines.append(f"  - {key}: {message}{got}")
    return "\n".join(lines)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs; values are YAML scalars or lists (``[a, b]``)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {pair!r}: write it as key=value, e.g. --set mini_batch_size=5")
        overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return overrides


def build_spec(raw: Mapping[str, Any], base_dir: Path, source: str = "the job spec") -> JobSpec:
    """Validate a raw mapping and resolve its relative paths against ``base_dir``."""
    try:
        spec = JobSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, source)) from None
    source_directory = resolve_uri(spec.source_directory, base_dir)
    resolved = spec.model_copy(
        update={
            "inputs": [resolve_uri(uri, base_dir) for uri in spec.inputs],
            "output": resolve_uri(spec.output, base_dir),
            "source_directory": source_directory,
            "side_inputs": {k: resolve_uri(v, base_dir) for k, v in spec.side_inputs.items()},
        }
    )
    if is_local(source_directory):
        script = Path(source_directory) / resolved.entry_script
        if not script.is_file():
            raise SpecError(
                f"{source}: entry_script {resolved.entry_script!r} was not found at {script}; "
                "entry_script is relative to source_directory "
                f"({source_directory}): fix the path or set source_directory"
            )
    return resolved


def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Read a YAML or JSON job file, apply ``--set`` overrides, validate and resolve it."""
    job_file = Path(path)
    try:
        text = job_file.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the job file {job_file}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{job_file} is not valid YAML or JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{job_file} must hold a mapping of keys (name, inputs, output, ...)")
    raw.update(overrides or {})
    return build_spec(raw, job_file.resolve().parent, source=str(job_file))
