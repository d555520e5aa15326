"""One typed configuration, read once by the CLI or a test and passed down.

Sources, later wins: defaults, the TOML file (`--config` / `IMAGEGATE_CONFIG`), `IMAGEGATE_*` variables.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = logging.getLogger("imagegate.config")


FORM_OVERHEAD = 1024 * 1024
"""Room for a request's text fields, multipart headers and JSON syntax beside its images."""


def base64_size(raw: int) -> int:
    """The length of `raw` bytes written in base64."""
    return (raw + 2) // 3 * 4


class Limits(BaseModel):
    """Bounds on what a request may make the server hold or do."""

    model_config = {"extra": "forbid"}

    max_image_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    max_input_images: int = Field(default=16, ge=1)
    """Input images (`image[]` references) one request may carry; formerly `limits.max_images`."""
    max_body_bytes: int | None = Field(default=None, gt=0)
    """The most a request body may carry (413 past it); by default `max_input_images` uploads of
    `max_image_bytes` and FORM_OVERHEAD. Multipart bodies are spooled to disk, never held whole."""
    max_json_bytes: int | None = Field(default=None, gt=0)
    """The most a JSON or urlencoded body, or a multipart form's text fields together, may carry (all
    are held in memory): by default one data URL of `max_image_bytes` and FORM_OVERHEAD; send larger
    or many inputs as multipart uploads or URLs."""
    max_callback_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """The most a provider's callback (relayed requests in callback mode) may carry."""
    max_form_fields: int = Field(default=200, gt=0)
    fetch_timeout_s: float = 20.0
    fetch_connect_timeout_s: float = 5.0
    fetch_max_redirects: int = 5
    header_timeout_s: float = Field(default=15.0, gt=0)
    """A connection that has not sent a request's complete headers this long after it began is closed."""
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    """A request body that stalls this long without a byte is refused with 408."""
    body_min_bytes_per_s: int = Field(default=1024, ge=0)
    """After `body_idle_timeout_s`, a body must have averaged at least this rate (408 otherwise); a
    50 MB upload at 1 KB/s would take 14 hours, a slow 1 Mbit/s link takes 7 minutes."""
    decode_budget_bytes: int | None = Field(default=None, gt=0)
    """Decoded image memory all requests together may hold (one request at most all of it; more waits,
    and a request that needs more than all of it is refused with 400). Default: a quarter of the
    machine's memory, at least 512 MiB."""
    max_connections_per_client: int = Field(default=128, ge=0)
    """Open connections one client address may hold (0: unlimited); more are closed at once."""
    release_memory_every_s: float = Field(default=0.5, ge=0)
    """How often the server looks at its resident memory and, when it has grown, hands what it has
    freed back to the operating system (glibc's malloc_trim; 0: never)."""

    @property
    def body_bytes(self) -> int:
        """The effective `max_body_bytes`."""
        return self.max_body_bytes or self.max_input_images * self.max_image_bytes + FORM_OVERHEAD

    @property
    def json_bytes(self) -> int:
        """The effective `max_json_bytes` (never above `body_bytes`)."""
        return min(self.max_json_bytes or base64_size(self.max_image_bytes) + FORM_OVERHEAD, self.body_bytes)


class ImagingSettings(BaseModel):
    """Encoder settings; they trade file size against CPU time."""

    model_config = {"extra": "forbid"}

    png_compress_level: int = Field(default=1, ge=0, le=9)
    default_jpeg_webp_quality: int = Field(default=90, ge=0, le=100)
    webp_method: int = Field(default=0, ge=0, le=6)
    font_path: str | None = None


class RunnerSettings(BaseModel):
    """The in-process runner of async tasks (callback_url, createTask)."""

    model_config = {"extra": "forbid"}

    concurrency: int = Field(default=4, ge=1)
    """Async tasks run at once by this process."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    """A running task is reclaimed (or, if synchronous, failed) when its process stops renewing it this long."""
    max_attempts: int = Field(default=3, ge=1)
    """Starts of one async task before an interrupted task is failed instead of run again."""


class WorkerSettings(BaseModel):
    """`imagegate worker` (distributed mode): procrastinate workers running async tasks."""

    model_config = {"extra": "forbid"}

    concurrency: int = Field(default=8, ge=1)
    queues: list[str] = Field(default_factory=lambda: ["images"])
    handler_timeout_s: float = Field(default=1800.0, gt=0)
    """The most one task's handler may run; a task cut off is handed back and retried (up to max_attempts)."""
    stalled_after_s: float = Field(default=30.0, gt=0)
    """A job whose worker sent no heartbeat for this long is retried by another worker."""
    stalled_check_s: float = Field(default=15.0, gt=0)
    """How often a worker looks for jobs of dead workers (and removes those workers' rows)."""
    keep_finished_jobs_hours: int = Field(default=24, ge=1)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """The port of a worker's `/metrics`, `/healthz` and `/readyz` (none by default; 0 picks a free one)."""
    metrics_host: str = "127.0.0.1"


DEFAULT_WEBHOOK_RETRY_DELAYS = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0]


class WebhookSettings(BaseModel):
    """Delivery of signed task callbacks."""

    model_config = {"extra": "forbid"}

    timeout_s: float = Field(default=10.0, gt=0)
    concurrency: int = Field(default=8, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)
    retry_delays: Annotated[list[float], NoDecode] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_DELAYS))
    """Seconds to wait before each retry of a failed delivery (`5,300,...` in the environment); after
    the last, it is given up. Formerly `webhook_retry_delays`."""

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("retry_delays")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be zero or more seconds")
        return value


class StorageSettings(BaseModel):
    """Where inputs and results live, and how clients fetch results."""

    model_config = {"extra": "forbid"}

    url: str | None = None
    """`s3://bucket/prefix` (endpoint and credentials from the standard `AWS_*` variables, e.g.
    AWS_ENDPOINT_URL), `file:///path`, or by default the data dir's `files`. Formerly `storage_url`."""
    result_urls: Literal["api", "presigned"] = "api"
    """`/files/...` URLs are streamed by the API (`api`) or redirect to presigned object-store URLs."""
    presigned_url_ttl_s: int = Field(default=3600, ge=1)
    results_ttl: float = Field(default=7 * 86400, ge=0, le=100 * 365 * 86400)
    """Seconds a result file is kept (`7d`, `12h`, `30m` and `45s` are read too; 0 keeps them forever).
    Past it the sweeper deletes its bytes, the task keeps its record, and its URL answers 410."""
    sweep_interval_s: float = Field(default=3600.0, gt=0)

    @field_validator("results_ttl", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return seconds_of(value)

    @field_validator("url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("s3://", "file://")):
            raise ValueError("use s3://bucket/prefix or file:///path")
        if value and value.startswith("s3://") and not value[5:].split("/", 1)[0]:
            raise ValueError("an s3:// URL must name a bucket")
        return value


class RelaySettings(BaseModel):
    """Relaying to providers that fetch inputs from this server or post their results back to it."""

    model_config = {"extra": "forbid"}

    signing_secret: str | None = None
    """Signs the expiring URLs of relayed inputs and callbacks; by default a random key kept in the
    data dir. Set it where several processes must honour each other's URLs. Formerly `signing_secret`
    at the top level."""


class AccountDefaults(BaseModel):
    """Per-key limits for keys that set none of their own; 0 means unlimited."""

    model_config = {"extra": "forbid"}

    requests_per_minute: int = Field(default=600, ge=0)
    """Image requests (edits, generations, createTask) a key may make in a sliding minute."""
    max_active_tasks: int = Field(default=64, ge=0)
    """Tasks of one key that may be waiting or running at once."""
    max_output_images: int = Field(default=10, ge=0)
    """Images (`n`) one request may ask for, below each model's own maximum (a key's own limit is its
    `max_images`). Formerly `max_images_per_request`."""


class LoraSettings(BaseModel):
    """A LoRA adapter a local channel loads onto its model (e.g. a step-distilled Lightning LoRA)."""

    model_config = {"extra": "forbid"}

    path: str = Field(min_length=1)
    """A .safetensors file, a directory holding one, or a Hub repo id already in the cache."""
    weight_name: str | None = None
    """The file inside a directory or repo, when it holds several."""
    scale: float = 1.0
    steps: int | None = Field(default=None, ge=1)
    """The step count this LoRA was distilled for; it becomes the channel's default steps."""


class ChannelSettings(BaseModel):
    """One configured way to make pixels (SPEC §1 Channel): an engine and where it reaches."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    engine: str = "openai"
    """The engine kind, by its registered name: built in, `openai` (OpenAI or any compatible base URL),
    `envelope`, `jobs` (the seed dialects) and `classic`; an embedding application may register more."""
    base_url: str | None = None
    """As the provider's own SDK takes it, e.g. `https://api.openai.com/v1`."""
    api_key_env: str | None = None
    """The environment variable holding the upstream key (keys are never written in the file)."""
    models: list[str] = Field(default_factory=list)
    """Public model ids it serves; empty for every model in the catalog."""
    model_map: dict[str, str] = Field(default_factory=dict)
    """Public id -> the provider's id, where they differ."""
    priority: int = 0
    """Lower is tried first."""
    weight: int = Field(default=1, ge=1)
    """Share of traffic among channels of equal priority."""
    timeout_s: float = Field(default=180.0, gt=0)
    """The most one attempt may take (connection, upload, generation, download)."""
    max_concurrency: int = Field(default=64, ge=1)
    max_retries: int = Field(default=2, ge=0)
    """Further attempts on this channel after a retryable fault (429, 5xx, timeout, connection)."""
    retry_backoff_s: float = Field(default=0.5, ge=0)
    """First backoff; doubled each retry, with full jitter, capped at 8 s; `retry-after` wins when given."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failed attempts that open the circuit (the channel rests)."""
    breaker_rest_s: float = Field(default=30.0, ge=0)
    """How long an open circuit rests before one probe request may try it again."""
    poll_interval_s: float = Field(default=2.0, gt=0)
    """Task-jobs channels: the first wait between status polls (it grows to 10 s)."""
    send_inputs: Literal["multipart", "urls", "data_urls"] = "multipart"
    """OpenAI channels: edits as multipart uploads (`image[]`), or as JSON whose `image` list holds
    signed URLs of the inputs published at IMAGEGATE_PUBLIC_URL (`urls`) or data URLs (`data_urls`)."""
    callback: bool = False
    """OpenAI channels: ask for the result by `callback_url` (seed 003's async mode) instead of holding
    the connection open; the provider posts it to IMAGEGATE_PUBLIC_URL/relay/callbacks/..."""
    model: str | None = None
    """Local (`diffusers`) channels: a directory holding `model_index.json`, or a Hub repo id already in
    the cache (`imagegate models pull`)."""
    revision: str | None = None
    """Local channels: the cached revision of a Hub repo id (its newest otherwise)."""
    device: str = "auto"
    """Local channels: `cuda`, `cuda:1`, `mps`, `cpu`, or `auto` (the first GPU, else the CPU)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Local channels: `auto` is bfloat16 on a GPU and float32 on the CPU."""
    steps: int | None = Field(default=None, ge=1)
    """Local channels: denoising steps at quality high/auto (low halves them, medium takes three
    quarters); the family's default otherwise."""
    guidance: float | None = Field(default=None, ge=0)
    """Local channels: the guidance scale; the family's default otherwise."""
    lora: list[LoraSettings] = Field(default_factory=list)
    offload: Literal["none", "model", "sequential"] = "none"
    """Local channels: keep weights on the CPU and move each model (or each layer) to the GPU as needed."""
    compile: bool = False
    """Local channels: torch.compile the denoiser's repeated blocks, warmed up when the model loads."""
    preload: bool = False
    """Local channels: load the model at start instead of on the first request."""
    queue: str | None = None
    """Local channels: a procrastinate queue whose workers (`imagegate worker --queues NAME`, on the
    machines with the GPU) run this channel's work; API nodes then never load the model."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the bad key."""


class Config(BaseSettings):
    """Everything the server needs to know, validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="forbid", env_nested_delimiter="__")

    data_dir: Path = Path("imagegate-data")
    database_url: str | None = None
    public_url: str | None = None
    trusted_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names (`name`, `name:port`, `*.domain`) this server answers to; when set, other `Host`
    headers are refused with 400, and without `public_url` result URLs use the request's trusted Host."""
    fetch_allow: Annotated[list[IpNetwork], NoDecode] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    first_key_credits: int = 1000
    accounts: AccountDefaults = Field(default_factory=AccountDefaults)
    channels: list[ChannelSettings] = Field(default_factory=list)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    queue: Literal["auto", "runner", "procrastinate"] = "auto"
    """Who runs async tasks: `runner` (in process, polling the task rows) or `procrastinate` workers
    (`imagegate worker`); `auto` picks procrastinate on PostgreSQL and the runner otherwise."""
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        return with_current_names(data) if isinstance(data, dict) else data

    @field_validator("fetch_allow", "trusted_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, value: list[ChannelSettings]) -> list[ChannelSettings]:
        names = [channel.name for channel in value]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"channel names must be unique; repeated: {', '.join(duplicated)}")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: the explicit one (`postgresql://` means psycopg 3), or the SQLite
        file in the data dir."""
        if self.database_url:
            return async_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imagegate.db').resolve()}"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "postgres://", "sqlite")):
            raise ValueError("use postgresql://user:password@host:5432/name (or sqlite:///path)")
        return value

    @field_validator("queue")
    @classmethod
    def _queue_needs_postgresql(cls, value: str, info: ValidationInfo) -> str:
        url = async_database_url(info.data.get("database_url") or "")
        if value == "procrastinate" and not url.startswith("postgresql"):
            raise ValueError("'procrastinate' needs PostgreSQL (IMAGEGATE_DATABASE_URL=postgresql://...)")
        return value

    @property
    def uses_procrastinate(self) -> bool:
        """Whether async tasks go to procrastinate workers (needs PostgreSQL)."""
        if self.queue == "auto":
            return self.resolved_database_url.startswith("postgresql")
        return self.queue == "procrastinate"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(value: object) -> object:
    """A duration written `7d`, `12h`, `30m` or `45s` in seconds; anything else as it is."""
    if isinstance(value, str) and value.strip()[-1:].lower() in _UNITS:
        text = value.strip()
        try:
            return float(text[:-1]) * _UNITS[text[-1].lower()]
        except ValueError:
            return value
    return value


def split_commas(value: object) -> object:
    """A comma-separated string (as an environment variable gives it) as a list of its parts."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


RENAMED: dict[tuple[str, ...], tuple[str, str]] = {
    ("storage_url",): ("storage", "url"),
    ("result_urls",): ("storage", "result_urls"),
    ("presigned_url_ttl_s",): ("storage", "presigned_url_ttl_s"),
    ("signing_secret",): ("relay", "signing_secret"),
    ("webhook_retry_delays",): ("webhooks", "retry_delays"),
    ("limits", "max_images"): ("limits", "max_input_images"),
    ("accounts", "max_images_per_request"): ("accounts", "max_output_images"),
}
"""Configuration keys renamed in 0.13, by their old path: still read (with a warning) until 0.14."""


def with_current_names(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every old key of RENAMED (and a model's `max_images`) moved to its new place, a
    value already there winning, and a warning logged for each. A table given as something other than
    a mapping or a settings object is left for validation to refuse, with the old key beside it."""
    data = dict(data)
    for old, (table, name) in RENAMED.items():
        holder = data if len(old) == 1 else data.get(old[0])
        if not isinstance(holder, dict) or old[-1] not in holder:
            continue
        target = data.get(table)
        if isinstance(target, BaseModel):
            target = target.model_dump(exclude_unset=True)
        if target is not None and not isinstance(target, dict):
            continue
        holder = dict(holder)
        value = holder.pop(old[-1])
        if len(old) > 1:
            data[old[0]] = holder
        else:
            data = holder
        target = dict(holder if table == old[0] else (target or {}))
        target.setdefault(name, value)
        data[table] = target
        _warn_renamed(".".join(old), f"{table}.{name}", f"IMAGEGATE_{table.upper()}__{name.upper()}")
    models = data.get("models")
    if isinstance(models, dict) and any(isinstance(v, dict) and "max_images" in v for v in models.values()):
        data["models"] = {model: _model_renamed(model, values) for model, values in models.items()}
    return data


def _model_renamed(model: str, values: Any) -> Any:
    if not isinstance(values, dict) or "max_images" not in values:
        return values
    values = dict(values)
    values.setdefault("max_input_images", values.pop("max_images"))
    values.pop("max_images", None)
    _warn_renamed(f"models.{model}.max_images", f"models.{model}.max_input_images", "")
    return values


def _warn_renamed(old: str, new: str, variable: str) -> None:
    spelled = f" ({variable})" if variable else ""
    log.warning("configuration key '%s' is now '%s'%s; the old name is read until the next release", old, new, spelled)


class RenamedEnvironment(PydanticBaseSettingsSource):
    """The old `IMAGEGATE_*` variables of RENAMED, read under their old keys (the Config moves them,
    with a warning). A current name wins wherever it is set: in the environment or in the file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        found: dict[str, Any] = {}
        for old in RENAMED:
            name = "IMAGEGATE_" + "__".join(old).upper()
            if name in environ:
                if len(old) == 1:
                    found[old[0]] = environ[name]
                else:
                    found.setdefault(old[0], {})[old[1]] = environ[name]
        return found


def async_database_url(url: str) -> str:
    """`url` with the async driver SQLAlchemy should use: psycopg 3 for PostgreSQL, aiosqlite for SQLite."""
    for plain, driver in (
        ("postgres://", "postgresql+psycopg://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def load_config(config_file: Path | None = None, **overrides: Any) -> Config:
    """Build the Config: explicit overrides (CLI flags) > `IMAGEGATE_*` variables > TOML file > defaults.

    Raises ConfigError naming the offending key when anything is invalid.
    """

    class _Layered(Config):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, RenamedEnvironment(settings_cls)]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    try:
        return _Layered(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid configuration key '{key}': {first['msg']}") from exc
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read configuration: {exc}") from exc
