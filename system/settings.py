"""The one typed, validated settings object, built once at start-up from AIADMIN_* variables."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from system.errors import SettingsError
from system.phones import PhoneError, normalize_phone
from system.store.keys import Retention

ENV_PREFIX = "AIADMIN_"
TENANTS_ENV = "AIADMIN_TENANTS"
DEFAULT_TIMEZONE = "Europe/Moscow"
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
# Shards on a cluster unless AIADMIN_REDIS_SHARDS says otherwise: the tags {s0}..{s15} fall 6/4/6 on the three
# masters of a cluster made by `redis-cli --cluster create`, so every master owns several and adding one moves some.
CLUSTER_SHARDS = 16
# AIADMIN_* variables read by the tooling, not by the system: never reported as misspelled settings.
TOOL_VARIABLES = frozenset(
    {
        "AIADMIN_TEST_REDIS_URL",
        "AIADMIN_TEST_REDIS_FLUSH",
        "AIADMIN_TEST_REDIS_FORCE",
        "AIADMIN_FEATURES_REDIS_URL",
        "AIADMIN_FEATURES_REDIS_FLUSH",
        "AIADMIN_FEATURES_REDIS_FORCE",
        "AIADMIN_SIM_REDIS_URL",
        "AIADMIN_BENCH_REDIS_URL",
        "AIADMIN_LOAD_REDIS_URL",
        "AIADMIN_LOAD_PORT_BASE",
        "AIADMIN_SIM_FAKE_PORT_BASE",
        "AIADMIN_BENCH_CLUSTER_URL",
        "AIADMIN_TEST_REDIS_CLUSTER_URL",
        "AIADMIN_FEATURES_REDIS_CLUSTER",
        "AIADMIN_REALTIME",
    }
)
Environment = Literal["production", "development"]
_PYDANTIC_VALUE_ERROR = "Value error, "


class Tenant(BaseModel):
    """One salon: a CRM company reachable through one WhatsApp phone number id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    company_id: int = Field(gt=0, description="The salon's company id in the CRM.")
    phone_number_id: str | None = Field(
        default=None, min_length=1, description="The WhatsApp Cloud API phone number id that routes to it."
    )
    name: str = Field(min_length=1, description="A human-readable name for logs and reports.")
    timezone: str = Field(default=DEFAULT_TIMEZONE, description="IANA time zone of the salon.")
    working_hours: str | None = Field(
        default=None, max_length=200, description="Opening hours as told to clients, e.g. 'ежедневно 10:00–21:00'."
    )

    @field_validator("phone_number_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # An unquoted id in TOML arrives as an integer; it is still an opaque id.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Settings(BaseSettings):
    """Every tunable of the system; build it with `load_settings` and pass it explicitly."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_file=None)

    redis_url: str | None = Field(
        default=None,
        validation_alias="REDIS_URL",
        description="Redis URL (REDIS_URL, no prefix); unset runs on an embedded fakeredis.",
    )
    env: Environment | None = Field(
        default=None,
        description=(
            "production refuses to start insecure or in-memory; development warns. Unset: production for "
            "api, batcher and worker, development for run, simulate and the fakes."
        ),
    )
    host: str = Field(
        default="127.0.0.1", min_length=1, description="Interface the API listens on (the --host flag wins)."
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Port the API listens on (the --port flag wins).")
    batch_timeout_ms: int = Field(
        default=9000, gt=0, description="Quiet time after a client's last message before the batch is sent."
    )
    max_batch_size: int = Field(
        default=10, ge=1, le=1000, description="A batch is sealed early once it holds this many messages."
    )
    batch_ttl_s: int = Field(
        default=600,
        gt=0,
        description=(
            "The longest a queued job holds its conversation's turn; also the least lifetime of a batch's "
            "Redis keys, which live max(this, batch timeout + 1 h) from the last message."
        ),
    )
    default_company_id: int = Field(
        default=962302, gt=0, description="Company of messages that name none, and of the default tenant."
    )
    default_salon_name: str = Field(
        default="Салон",
        min_length=1,
        max_length=100,
        description="The salon's name as the bot says it, when there is no tenants file.",
    )
    tenants_file: Path | None = Field(
        default=None,
        validation_alias=TENANTS_ENV,
        description="TOML file with one [[tenant]] table per salon; unset serves one default salon.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key of the gateway route's X-Signature header; unset disables the check.",
    )
    whatsapp_app_secret: SecretStr | None = Field(
        default=None, description="Meta app secret for X-Hub-Signature-256; unset disables the check."
    )
    whatsapp_verify_token: SecretStr | None = Field(
        default=None,
        description="Token Meta echoes when subscribing the webhook; unset refuses subscriptions.",
    )
    stats_token: SecretStr | None = Field(
        default=None, description="Bearer token for the stats endpoints; unset leaves them open."
    )
    dedup_ttl_s: int = Field(
        default=604800, gt=0, description="How long a seen message id is remembered to drop redeliveries."
    )
    dialog_ttl_s: int = Field(
        default=86400,
        gt=0,
        description="How long a client's dialog state (stage, draft, offered times) outlives its last turn.",
    )
    messages_ttl_s: int = Field(
        default=2592000, gt=0, description="How long a client's message history outlives its last turn."
    )
    preferences_ttl_s: int = Field(
        default=7776000, gt=0, description="How long a client's name, favourite master and usual services are kept."
    )
    turn_ttl_s: int = Field(
        default=604800,
        gt=0,
        description="How long a turn's idempotency record and its sent messages' delivery statuses are kept.",
    )
    rate_limit_sender_burst: int = Field(
        default=20, ge=0, description="Messages one sender may send at once; 0 disables the per-sender limit."
    )
    rate_limit_sender_per_min: int = Field(
        default=30, gt=0, description="Sustained messages per minute allowed from one sender."
    )
    rate_limit_global_per_s: int = Field(
        default=200, ge=0, description="Messages per second accepted per company; 0 disables the limit."
    )
    default_region: str = Field(
        default="RU", description="Region for phone numbers in national format (8 900 ... in Russia)."
    )
    rate_limit_allowlist: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="Comma-separated phones exempt from rate limits, in any accepted form.",
    )
    max_body_bytes: int = Field(default=1048576, gt=0, description="Largest webhook body accepted, in bytes.")
    http_limit_concurrency: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Open connections (or requests in flight) the API serves; above it new requests get 503.",
    )
    http_keepalive_s: int = Field(
        default=5, ge=1, le=600, description="How long an idle keep-alive connection stays open between requests."
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A connection that has not sent a request's complete headers within this time is closed.",
    )
    http_body_timeout_s: float = Field(
        default=15.0, gt=0, le=600, description="A request body not fully received within this time gets 408."
    )
    max_message_chars: int = Field(
        default=4096, gt=0, description="Longest client text passed to the model (longer texts are cut for it)."
    )
    redis_prefix: str = Field(default="aiadmin", min_length=1, description="Prefix of every Redis key.")
    redis_shards: int = Field(
        default=1,
        ge=1,
        le=1024,
        description=(
            f"Hash-slot shards conversations are spread over (CRC32); set once per deployment. Default 1, "
            f"or {CLUSTER_SHARDS} with AIADMIN_REDIS_CLUSTER (several per master of a 3-master cluster)."
        ),
    )
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL names one node of a Redis Cluster; the client discovers the others from it.",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description=(
            "A webhook is answered 200 only once this many replicas hold its messages (Redis WAIT); "
            "0: on the master's word alone. Survives a failover; costs a replication round trip."
        ),
    )
    redis_wait_timeout_ms: int = Field(
        default=500,
        gt=0,
        le=10_000,
        description="How long the WAIT for replicas may take before the webhook is answered 503 (Meta retries).",
    )
    queue_max_len: int = Field(
        default=100000,
        gt=0,
        description=(
            "Jobs a shard's queue may hold; when full, due batches wait in Redis (backpressure), never dropped."
        ),
    )
    visibility_timeout_s: float = Field(
        default=60.0, gt=0, description="A claimed job not acknowledged within this time is redelivered."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Deliveries of a job before it goes to the dead-letter stream."
    )
    retry_backoff_base_s: float = Field(
        default=1.0, ge=0, description="First retry delay; it doubles on each further attempt."
    )
    retry_backoff_max_s: float = Field(default=60.0, ge=0, description="Upper bound of the retry delay.")
    heartbeat_interval_s: float = Field(
        default=1.0, gt=0, description="How often each batcher reports that it is alive."
    )
    heartbeat_stale_s: float = Field(
        default=5.0, gt=0, description="A batcher silent for this long is considered dead."
    )
    worker_concurrency: int = Field(
        default=32, ge=1, le=4096, description="Turns of different conversations one worker process runs at once."
    )
    worker_idle_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="An idle worker looks at the queue at least this often (new jobs also wake it at once).",
    )
    worker_shutdown_s: float = Field(
        default=30.0, gt=0, description="On SIGTERM, how long in-flight turns may take to finish."
    )
    llm_base_url: str = Field(
        default="https://api.deepseek.com",
        description="OpenAI-compatible API base (DeepSeek, OpenAI, vLLM, Ollama): POST {base}/chat/completions.",
    )
    llm_api_key: SecretStr | None = Field(default=None, description="Bearer key of the LLM API.")
    llm_model: str = Field(default="deepseek-chat", min_length=1, description="Model name sent to the LLM API.")
    llm_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one LLM request.")
    llm_max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of one LLM request on 429, 5xx and timeouts, with backoff."
    )
    llm_max_tool_rounds: int = Field(
        default=6, ge=1, le=20, description="Most LLM calls in one turn (tool calls and the final answer)."
    )
    llm_max_tool_calls: int = Field(
        default=8, ge=1, le=64, description="Tool calls of one model answer executed; the rest get a tool error."
    )
    llm_max_tool_calls_per_turn: int = Field(
        default=16, ge=1, le=256, description="Tool calls executed in one turn; the rest get a tool error."
    )
    max_bookings_per_turn: int = Field(
        default=1, ge=1, le=10, description="Bookings one turn may create; further create_booking calls are refused."
    )
    drop_stale_replies: bool = Field(
        default=True,
        description=(
            "When the client writes again during a turn that changed no booking, stop it before its first booking "
            "change or its reply (dropped unsent); the next turn answers everything at once."
        ),
    )
    llm_breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failed LLM requests that open the circuit breaker."
    )
    llm_breaker_reset_s: float = Field(
        default=30.0, gt=0, description="How long an open LLM circuit breaker refuses calls before a trial."
    )
    llm_token_param: Literal["auto", "max_completion_tokens", "max_tokens"] = Field(
        default="auto",
        description=(
            "Request field of the output limit; auto: max_completion_tokens for api.openai.com and OpenAI's "
            "reasoning models (o-series, gpt-5), max_tokens elsewhere (DeepSeek, vLLM, Ollama)."
        ),
    )
    llm_max_output_tokens: int = Field(
        default=800, ge=1, le=128_000, description="Most tokens one LLM answer may take (reasoning included)."
    )
    llm_temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature sent to the LLM; unset sends none (reasoning models refuse it).",
    )
    yclients_base_url: str = Field(
        default="https://api.yclients.com/api/v1", description="Base URL of the YClients REST API."
    )
    yclients_partner_token: SecretStr | None = Field(default=None, description="YClients partner (Bearer) token.")
    yclients_user_token: SecretStr | None = Field(default=None, description="YClients user token.")
    yclients_timeout_s: float = Field(default=15.0, gt=0, description="Timeout of one YClients request.")
    yclients_rps: float = Field(default=5.0, gt=0, description="Client-side limit of YClients requests per second.")
    yclients_rpm: int = Field(default=200, ge=1, description="Client-side limit of YClients requests per minute.")
    yclients_cache_ttl_s: float = Field(
        default=300.0, ge=0, description="How long services and masters are cached per company."
    )
    yclients_send_sms: bool = Field(
        default=False, description="`send_sms` of a moved record: YClients texts the client the new time too."
    )
    whatsapp_transport: Literal["cloud", "gateway"] = Field(
        default="cloud", description="How replies are sent: the WhatsApp Cloud API or a gateway bridge."
    )
    whatsapp_api_url: str = Field(
        default="https://graph.facebook.com",
        description=(
            "Graph API base without the version; replies go to {url}/{version}/{phone_number_id}/messages "
            "(a URL ending in /vNN.N is used as is, with a warning)."
        ),
    )
    whatsapp_api_version: str = Field(
        default="v26.0",
        pattern=r"^v\d{1,2}\.\d{1,2}$",
        description="Graph API version of every Cloud API call, e.g. v26.0 (Meta retires each about two years on).",
    )
    whatsapp_token: SecretStr | None = Field(default=None, description="Cloud API access token (Bearer).")
    whatsapp_phone_number_id: str | None = Field(
        default=None, description="Sending phone number id for salons whose tenant entry names none."
    )
    whatsapp_gateway_url: str | None = Field(
        default=None, description="Gateway bridge base URL; replies go to POST {url}/send {phone, message}."
    )
    whatsapp_timeout_s: float = Field(default=15.0, gt=0, description="Timeout of one WhatsApp send.")
    whatsapp_max_retries: int = Field(
        default=4, ge=0, le=10, description="Retries of a send on throughput limits and transient errors."
    )
    whatsapp_recipient_gap_ms: int = Field(
        default=1000, ge=0, description="Least time between two messages to one recipient (pacing)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of log records: DEBUG, INFO, WARNING or ERROR."
    )
    log_json: bool = Field(default=True, description="Log one JSON object per line instead of plain text.")

    _tenants: tuple[Tenant, ...] = PrivateAttr(default=())
    _by_phone_number_id: dict[str, Tenant] = PrivateAttr(default_factory=dict)

    @field_validator(
        "redis_url",
        "tenants_file",
        "webhook_secret",
        "whatsapp_app_secret",
        "whatsapp_verify_token",
        "stats_token",
        "llm_api_key",
        "llm_temperature",
        "yclients_partner_token",
        "yclients_user_token",
        "whatsapp_token",
        "whatsapp_phone_number_id",
        "whatsapp_gateway_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_shape(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _redis_url_problem(value.strip())
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("default_region", mode="before")
    @classmethod
    def _known_region(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            if value not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"unknown region {value!r}; expected a two-letter code such as RU")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("rate_limit_allowlist", mode="before")
    @classmethod
    def _normalize_allowlist(cls, value: Any, info: ValidationInfo) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple, set, frozenset)):
            return value
        region = info.data.get("default_region", "RU")
        return frozenset(_allowlisted(str(item), region) for item in items if str(item).strip())

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []  # all of them at once: an operator fixes the environment in one go
        if not self.visibility_timeout_s * 2 < self.batch_ttl_s:
            problems.append(
                "AIADMIN_VISIBILITY_TIMEOUT_S * 2 must be less than AIADMIN_BATCH_TTL_S "
                f"(got {self.visibility_timeout_s} and {self.batch_ttl_s}): a batch must outlive a redelivery"
            )
        if self.turn_ttl_s < self.batch_ttl_s:
            problems.append(
                "AIADMIN_TURN_TTL_S must not be less than AIADMIN_BATCH_TTL_S "
                f"(got {self.turn_ttl_s} and {self.batch_ttl_s}): a redelivered job must find its turn's record"
            )
        if self.retry_backoff_max_s < self.retry_backoff_base_s:
            problems.append("AIADMIN_RETRY_BACKOFF_MAX_S must not be less than AIADMIN_RETRY_BACKOFF_BASE_S")
        if self.heartbeat_stale_s <= self.heartbeat_interval_s:
            problems.append("AIADMIN_HEARTBEAT_STALE_S must be greater than AIADMIN_HEARTBEAT_INTERVAL_S")
        if self.redis_cluster and self.redis_url and (cluster_problem := _cluster_url_problem(self.redis_url)):
            problems.append(f"REDIS_URL: {cluster_problem}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _cluster_shards(self) -> Settings:
        if self.redis_cluster and "redis_shards" not in self.model_fields_set:
            # The model is frozen; this is its construction, the one moment a derived default may be filled in.
            object.__setattr__(self, "redis_shards", CLUSTER_SHARDS)
        return self

    @model_validator(mode="after")
    def _load_tenants(self) -> Settings:
        if self.tenants_file is None:
            tenants: tuple[Tenant, ...] = (self._default_tenant(),)
        else:
            tenants = load_tenants(self.tenants_file)
        self._tenants = tenants
        self._by_phone_number_id = {t.phone_number_id: t for t in tenants if t.phone_number_id is not None}
        return self

    def _default_tenant(self) -> Tenant:
        return Tenant(
            company_id=self.default_company_id,
            phone_number_id=None,
            name=self.default_salon_name,
            timezone=DEFAULT_TIMEZONE,
        )

    @property
    def retention(self) -> Retention:
        """The lifetimes of a conversation's keys."""
        return Retention(
            dialog_s=self.dialog_ttl_s,
            messages_s=self.messages_ttl_s,
            preferences_s=self.preferences_ttl_s,
            turn_s=self.turn_ttl_s,
        )

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        """The salons served, loaded once at start-up."""
        return self._tenants

    def tenant_for_phone_number_id(self, pnid: str) -> Tenant | None:
        """The salon behind a WhatsApp phone number id; without a tenants file, the default salon."""
        if self.tenants_file is None:
            return self._tenants[0]
        return self._by_phone_number_id.get(pnid)

    def tenant_for_company(self, company_id: int) -> Tenant | None:
        """The salon with this CRM company id, if it is served."""
        return self.tenants_by_company.get(company_id)

    @cached_property
    def tenants_by_company(self) -> Mapping[int, Tenant]:
        """The salons by CRM company id.

        Cached on the instance: every webhook message checks its company, and reading a pydantic
        private attribute goes through `__getattr__`, a visible share of the API's CPU.
        """
        return MappingProxyType({t.company_id: t for t in self._tenants})


def _redis_url_problem(url: str) -> str | None:
    """Why redis-py could not use `url` (checked here, as redis-py checks some parts only when connecting)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
    except ValueError as exc:
        return f"not a valid URL ({exc}); expected e.g. redis://host:6379/0"
    if parts.scheme not in REDIS_URL_SCHEMES:
        return f"expected a redis://, rediss:// or unix:// URL, e.g. redis://host:6379/0 (got scheme {parts.scheme!r})"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs a socket path, e.g. unix:///run/redis.sock"
    if not parts.hostname:
        return "the URL names no host; expected e.g. redis://host:6379/0"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"the database must be a number (got {db!r}); expected e.g. redis://host:6379/0"
    return None


def _cluster_url_problem(url: str) -> str | None:
    """Why `url` cannot name a Redis Cluster node (a cluster has database 0 only, and no unix sockets)."""
    parts = urlsplit(url.strip())
    if parts.scheme == "unix":
        return "a Redis Cluster is reached over TCP: expected redis://host:port of any node"
    if parts.path.strip("/") not in ("", "0"):
        return f"a Redis Cluster has database 0 only (got {parts.path.strip('/')!r}); drop the /N from the URL"
    return None


def _allowlisted(item: str, region: str) -> str:
    try:
        return normalize_phone(item, default_region=region)
    except PhoneError as exc:
        raise ValueError(f"{item.strip()!r}: {exc}") from exc


def load_tenants(path: Path) -> tuple[Tenant, ...]:
    """Parse a tenants TOML file; ValueError names AIADMIN_TENANTS and the bad entry."""
    entries = _read_tenant_tables(path)
    tenants = tuple(_tenant_at(index, entry) for index, entry in enumerate(entries))
    _check_unique(tenants, "company_id")
    _check_unique(tenants, "phone_number_id")
    return tenants


def _read_tenant_tables(path: Path) -> list[Any]:
    try:
        with path.open("rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"{TENANTS_ENV}: cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{TENANTS_ENV}: {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"tenant"})
    if unknown:
        raise ValueError(f"{TENANTS_ENV}: {path}: unknown top-level keys {unknown}; expected [[tenant]] tables")
    entries = doc.get("tenant")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{TENANTS_ENV}: {path} defines no [[tenant]] tables")
    return entries


def _tenant_at(index: int, entry: Any) -> Tenant:
    try:
        return Tenant.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {_clean(err['msg'])}" for err in exc.errors()
        )
        raise ValueError(f"{TENANTS_ENV}: tenant[{index}]: {problems}") from None


def _check_unique(tenants: tuple[Tenant, ...], attr: str) -> None:
    first_index: dict[object, int] = {}
    for index, tenant in enumerate(tenants):
        value = getattr(tenant, attr)
        if value is None:
            continue
        if value in first_index:
            raise ValueError(
                f"{TENANTS_ENV}: tenant[{index}].{attr}: duplicate {attr} {value!r} "
                f"(already used by tenant[{first_index[value]}])"
            )
        first_index[value] = index


class _MappingEnvSource(EnvSettingsSource):
    """The environment source reading a given mapping instead of os.environ (as the dotenv source does)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `env` only, or from os.environ when None; SettingsError when invalid."""
    try:
        if env is None:
            return Settings(_env_file=None)  # type: ignore[call-arg]  # BaseSettings options are not fields
        # Only the given mapping: no os.environ, no init arguments, no dotenv file.
        sources = (_MappingEnvSource(Settings, env),)
        return Settings(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, each starting with the environment variable to fix."""
    names = env_names()
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        message = _clean(err["msg"])
        if not loc:
            lines.append(message)  # model-level checks already name their variables
            continue
        head = names.get(str(loc[0]), str(loc[0]))
        tail = "".join(f"[{p}]" for p in loc[1:])
        lines.append(f"{head}{tail}: {message}")
    return "\n".join(lines)


def env_names() -> dict[str, str]:
    """Field name (and alias) → the environment variable that sets it."""
    names: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        env = alias if isinstance(alias, str) else ENV_PREFIX + name.upper()
        names[name] = env
        names[env] = env
    return names


def _clean(message: str) -> str:
    return message.removeprefix(_PYDANTIC_VALUE_ERROR)


def environment_of(settings: Settings, *, default: Environment) -> Environment:
    """AIADMIN_ENV, or the command's default when it is unset."""
    return settings.env or default


def insecure_settings(settings: Settings, *, serves_http: bool, sends_replies: bool) -> list[str]:
    """What production refuses to start with and development warns about: one line each, naming the variable.

    `serves_http`: the process serves the webhook and stats routes; `sends_replies`: it runs the worker.
    Only `load_settings`' caller decides to enforce these (the CLI's start-up): tools build settings freely.
    """
    problems = []
    if settings.redis_url is None:
        problems.append(
            "REDIS_URL is unset: batches, the queue and dead letters would live in this process's memory, "
            "lost on restart and invisible to `aiadmin dlq`"
        )
    if serves_http:
        if settings.webhook_secret is None:
            problems.append(
                "AIADMIN_WEBHOOK_SECRET is unset: the gateway route /webhook/whatsapp/batched would accept "
                "unsigned requests"
            )
        if settings.whatsapp_app_secret is None:
            problems.append(
                "AIADMIN_WHATSAPP_APP_SECRET is unset: the Meta route /webhook/whatsapp would accept unsigned requests"
            )
        if settings.stats_token is None:
            problems.append("AIADMIN_STATS_TOKEN is unset: the stats route would be open to anyone")
    if (
        sends_replies
        and settings.whatsapp_transport == "cloud"
        and settings.whatsapp_phone_number_id is None
        and settings.tenants_file is None
    ):
        # The tenants-file case is refused in every environment by the Cloud API sender itself; this is the
        # default salon, whose gateway-route messages name no number to answer from.
        problems.append(
            "AIADMIN_WHATSAPP_PHONE_NUMBER_ID is unset with AIADMIN_WHATSAPP_TRANSPORT=cloud: the default salon has "
            "no sending number, so replies to gateway-route messages would all become dead letters"
        )
    return problems


def misspelled_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """AIADMIN_* variables that set nothing → the closest setting's variable (None when none is close)."""
    settings_vars = set(env_names().values())
    # Compared without the prefix, which every name shares: AIADMIN_REDIS_URL is close to REDIS_URL.
    by_stem = {v.removeprefix(ENV_PREFIX): v for v in sorted(settings_vars)}
    found: dict[str, str | None] = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in settings_vars or upper in TOOL_VARIABLES:
            continue
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(by_stem), n=1, cutoff=0.6)
        found[name] = by_stem[close[0]] if close else None
    return found
