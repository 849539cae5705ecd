"""Settings of the daemons: one pydantic-settings model each, built once in ``main()``.

Precedence, highest first: command-line flags, the environment (``FLEETRUN_*``), a ``.env``
file in the working directory, the daemon's TOML file (``/etc/fleetrun/worker.toml`` or
``/etc/fleetrun/coordinator.toml``, or ``--config``), the defaults. Keys in the TOML file are
the environment names in lower case without the prefix (``broker = "amqp://..."``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetrun.common.broker.base import TlsFiles
from fleetrun.common.errors import SpecError


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLEETRUN_CACHE_DIR") or Path.home() / ".cache" / "fleetrun")


class DaemonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETRUN_", env_file=".env", extra="ignore")
    config_file: ClassVar[Path | None] = None

    broker: str = Field(default="", description="RabbitMQ URL(s), comma-separated for a cluster")
    namespace: str = "fleetrun"
    log_level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if cls.config_file is not None and cls.config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config: Path | None, default_config: Path | None, **flags: Any) -> Any:
        """The settings from every source; flags that were not given (None) do not count."""
        cls.config_file = config or default_config
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} ({e['msg']}; got {e.get('input')!r})"
                for e in exc.errors()
            )
            raise SpecError(
                f"invalid settings: {problems}. Fix the flag, the FLEETRUN_* variable or the "
                f"settings file ({cls.config_file})"
            ) from None

    @property
    def broker_urls(self) -> list[str]:
        return [u.strip() for u in self.broker.split(",") if u.strip()]

    @property
    def tls(self) -> TlsFiles | None:
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        return TlsFiles(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity: what a container or cgroup allows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerDaemonSettings(DaemonSettings):
    processes: int = Field(default_factory=usable_cpus, ge=1)
    drain_timeout: float = Field(default=3600.0, gt=0)
    prefetch: int = Field(default=0, ge=0)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    idle_runner_timeout: float = Field(default=300.0, gt=0)
    gpu_count: int = Field(default=0, ge=0)


class CoordinatorDaemonSettings(DaemonSettings):
    max_jobs: int = Field(default=4, ge=1)
