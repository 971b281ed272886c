"""Settings: loraflow home, object storage, MLflow and Prefect locations, validation limits.

Sources, highest priority first: keyword arguments, environment (``LORAFLOW_*``, nested with
``__``, e.g. ``LORAFLOW_VALIDATION__MAX_ROWS``), then a YAML file: ``LORAFLOW_CONFIG`` if set,
else ``configs/stack.yaml`` in the working directory when present. Secrets are ``SecretStr`` and
URLs are shown with their passwords masked, so a settings object is safe to log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from loraflow.errors import ConfigError, field_problems
from loraflow.training_settings import TrainingConfig

DEFAULT_CONFIG_FILE = Path("configs/stack.yaml")
STORAGE_SCHEMES = ("file", "s3")  # the keys of loraflow.storage.STORES
# URL-valued settings may carry a password (user:pass@host); reprs and dumps mask it.
_URL_FIELDS = ("storage_uri", "s3_endpoint_url", "mlflow_tracking_uri", "prefect_api_url")


class ValidationConfig(BaseModel):
    """Limits applied to every dataset row; the defaults follow LLM Engine's documented ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_field_chars: int = Field(
        32_768, ge=1, description="Longest prompt, response or chat message, in characters."
    )
    min_rows: int = Field(1, ge=0, description="Fewer data rows than this is an error.")
    recommended_min_rows: int = Field(
        200, ge=0, description="Fewer data rows than this is a warning."
    )
    max_rows: int = Field(100_000, ge=1, description="More data rows than this is an error.")
    duplicates: Literal["warn", "error"] = Field(
        "warn", description="What an exact repeat of an earlier prompt/response pair is."
    )


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with any password replaced by ``***`` (for logs and reprs)."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class StackConfig(BaseModel):
    """Ports of the local stack (`loraflow up`); every service binds 127.0.0.1 only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect server and UI.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow UI.")
    serve_port: int = Field(5005, ge=1, le=65535, description="loraflow's HTTP service.")
    start_timeout: float = Field(180, gt=0, description="Seconds a service may take to be up.")


class ServingConfig(BaseModel):
    """What generates completions (``loraflow.backends``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["engine", "vllm"] = Field(
        "engine",
        description="engine: loraflow's in-process engine (transformers + peft); vllm: a vLLM "
        "OpenAI server per base model, started by loraflow or at vllm_url.",
    )
    vllm_url: str | None = Field(
        None,
        description="A vLLM server that already runs (e.g. on Kubernetes), serving the base "
        "model under its zoo name with --enable-lora; unset: loraflow starts one per base model.",
    )
    vllm_python: Path | None = Field(
        None,
        description="A Python with vLLM installed, to start servers with. Default: "
        ".venv-vllm (make setup-vllm), else the Python beside a `vllm` on PATH.",
    )
    vllm_args: list[str] = Field(
        [], description="Extra arguments for the vLLM servers loraflow starts."
    )
    vllm_dtype: str = Field("auto", description="--dtype of the vLLM servers loraflow starts.")
    vllm_kv_cache_gb: float = Field(
        4, gt=0, description="KV cache of a vLLM server on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    vllm_max_loras: int = Field(
        4, ge=1, description="Adapters one vLLM batch can mix (--max-loras)."
    )
    vllm_max_adapters: int = Field(
        8,
        ge=1,
        description="Adapters kept loaded in a vLLM server; beyond it the least recently used "
        "is unloaded.",
    )
    vllm_max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank vLLM accepts.")
    vllm_start_timeout: float = Field(
        600, gt=0, description="Seconds a vLLM server may take to load its model."
    )
    vllm_adapter_dir: str | None = Field(
        None,
        description="Where a vLLM server at vllm_url sees loraflow's adapter cache "
        "(<home>/cache/adapters, on a shared volume); unset: the same path.",
    )
    preload: list[str] | None = Field(
        None,
        description="Models `loraflow serve` loads (or starts vLLM for) at start, /readyz "
        "answering 503 until they are; unset: each family's champion; [] for none.",
    )


class BatchSettings(BaseModel):
    """Where batch completion jobs run their chunks (a Dask cluster, via prefect-dask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster_address: str | None = Field(
        None,
        description="A Dask scheduler batch jobs run on (tcp://host:8786); unset: a local "
        "cluster of `workers` processes per job, on this machine.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Worker processes of a job's local Dask cluster (at most one per core); "
        "1: the job's own process, no cluster.",
    )


class Settings(BaseSettings):
    """Where loraflow keeps its state and how it reaches its services."""

    model_config = SettingsConfigDict(
        env_prefix="LORAFLOW_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(
        Path("~/.loraflow"), description="Directory for local state: storage, MLflow, caches."
    )
    models_dir: Path | None = Field(
        None, description="Where prepared base models live. Default: <home>/models."
    )
    models_zoo: Path | None = Field(
        None,
        description="A base-model zoo file of your own (the format of configs/models.yaml) "
        "instead of the bundled one.",
    )
    storage_uri: str | None = Field(
        None,
        description="file:///dir or s3://bucket/prefix. Default: file://<home>/storage.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint for MinIO, R2, moto...; unset means AWS."
    )
    s3_region: str | None = Field(None, description="S3 region; unset uses the AWS chain.")
    s3_access_key_id: str | None = Field(
        None, description="Explicit S3 key id; unset uses the standard AWS credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="Explicit S3 secret.")
    s3_session_token: SecretStr | None = Field(None, description="Explicit S3 session token.")
    multipart_threshold: int = Field(
        64 * 2**20, ge=5 * 2**20, description="Uploads above this many bytes go multipart."
    )
    s3_retry_window: float = Field(
        60,
        ge=0,
        description="Seconds an S3 write keeps retrying through an outage (with backoff) "
        "before it fails; a multipart upload resumes at the part it was sending.",
    )
    s3_max_attempts: int = Field(
        8, ge=1, le=20, description="Attempts per S3 call, with backoff, on throttling and 5xx."
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI. Default: sqlite:///<home>/mlflow.db."
    )
    prefect_api_url: str | None = Field(
        None, description="Prefect API URL; unset uses Prefect's own settings."
    )
    validation: ValidationConfig = ValidationConfig()
    stack: StackConfig = StackConfig()
    training: TrainingConfig = TrainingConfig()
    serving: ServingConfig = ServingConfig()
    batch: BatchSettings = BatchSettings()
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],
        description="Keys the HTTP service accepts (comma-separated in LORAFLOW_API_KEYS); "
        "none: `loraflow serve` makes one and prints it once.",
    )
    base_url: str | None = Field(
        None,
        description="A `loraflow serve` (http://host:port) that the client integrations (the "
        "llm plugin, the aiXplain-style handle) call; unset: they run models in this process.",
    )
    api_key: SecretStr | None = Field(
        None, description="The key those integrations send to base_url."
    )
    remote_base_models: list[str] = Field(
        [],
        description="Base models (hub ids or paths) HTTP clients may fine-tune besides the "
        "zoo's; the Python SDK may name any.",
    )
    max_request_bytes: int = Field(
        4 * 2**20, ge=1, description="Largest JSON request the HTTP service accepts (413 above)."
    )
    max_upload_bytes: int = Field(
        256 * 2**20, ge=1, description="Largest file the HTTP service accepts (413 above)."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("home", "models_dir", "models_zoo")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("storage_uri")
    @classmethod
    def _check_storage_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(tuple(f"{s}://" for s in STORAGE_SCHEMES)):
            raise ValueError(
                f"storage_uri must start with {' or '.join(f'{s}://' for s in STORAGE_SCHEMES)}, "
                f"got {mask_url(value)!r}"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = os.environ.get("LORAFLOW_CONFIG")
        if config_file and not Path(config_file).is_file():
            raise ConfigError(f"LORAFLOW_CONFIG points to {config_file}, which is not a file")
        path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
        if path.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def storage_url(self) -> str:
        """The effective storage URI."""
        return self.storage_uri or (self.home / "storage").as_uri()

    @property
    def models_path(self) -> Path:
        """The effective directory of prepared base models."""
        return self.models_dir or self.home / "models"

    @property
    def tracking_uri(self) -> str:
        """The effective MLflow tracking URI."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @field_serializer(*_URL_FIELDS)
    def _mask_in_dumps(self, value: str | None) -> str | None:
        return mask_url(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name in _URL_FIELDS else value


def load_settings(**overrides: Any) -> Settings:
    """Build settings from overrides, the environment and the YAML file; errors name the field."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = field_problems(exc, "settings")
        raise ConfigError(
            f"invalid loraflow settings ({problems}). Fix the LORAFLOW_* variable or the "
            "config file named above."
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. ``reset()`` forgets them (tests, reconfiguration)."""
    return load_settings()


_RESETS: list[Callable[[], None]] = []


def on_reset(forget: Callable[[], None]) -> None:
    """Call ``forget`` on every ``reset()``: for caches built from the settings."""
    _RESETS.append(forget)


def reset() -> None:
    """Forget cached settings and the objects built from them."""
    get_settings.cache_clear()
    for forget in _RESETS:
        forget()


def new_api_key() -> str:
    """A new key for the HTTP service: ``lf-`` and 32 random URL-safe characters."""
    import secrets

    return "lf-" + secrets.token_urlsafe(24)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; ConfigError when it is missing or malformed."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path} not found: run from a loraflow checkout, or pass its path")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
