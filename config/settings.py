"""Typed, validated configuration.

`load_settings(path)` reads a YAML file, expands `${VAR}` / `${VAR:-default}` from the environment
and validates the result. Every failure is a `ConfigError` whose message is one line naming the file
and the key; values are never echoed, so a secret cannot leak into a log or an error.
"""
from __future__ import annotations

import ipaddress
import os
import re
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONFIG_ENV_VAR = "CONFIG_PATH"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


# `${VAR:-}` expands to "": an optional secret or URL left empty means "not set".
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_is_none)]
OptionalStr = Annotated[str | None, BeforeValidator(_blank_is_none)]


class ConfigError(Exception):
    """A configuration problem, described in one line (file, key, what is wrong)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


API_TOKEN_MIN_LENGTH = 32


def _usable_token(value: SecretStr | None) -> SecretStr | None:
    # Checked without echoing the value: the message names only the rule.
    if value is not None:
        token = value.get_secret_value()
        if len(token) < API_TOKEN_MIN_LENGTH:
            raise ValueError(f"shorter than {API_TOKEN_MIN_LENGTH} characters (generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if not token.isprintable() or any(c.isspace() for c in token):
            raise ValueError("must be printable without spaces (it travels in an Authorization header)")
    return value


class ApiToken(_Strict):
    """One bearer token of the HTTP API (workers/api_security.py); the value only from the environment.

    `${VAR:-}` left empty means this token is not set (the file's convention for optional secrets):
    it grants nothing, and an API on a non-loopback address with no token set refuses to start."""

    token: Annotated[OptionalSecret, AfterValidator(_usable_token)]
    scopes: Annotated[list[Literal["read", "trade"]], Field(min_length=1)]
    # Requests per minute this token may make, per API process (a burst of as many, then 429); none: no limit.
    requests_per_minute: Annotated[int | None, Field(ge=1, le=1_000_000)] = None


class ServiceSettings(_Strict):
    host: str = "localhost"  # where clients (the CLI) reach the API: advertised, never bound
    # The address the API listens on: loopback by default; 0.0.0.0 in a pod or container, where
    # the advertised host is a Service DNS name that no local interface carries.
    bind: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8004
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024  # larger bodies: 413
    # name -> token; with any token set, every endpoint but /healthz, /readyz, /metrics needs one.
    api_tokens: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], ApiToken] = Field(default_factory=dict)
    # Origins (scheme://host[:port]) whose browser pages may send state-changing requests; none by default.
    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(default_factory=list)

    def active_tokens(self) -> dict[str, ApiToken]:
        """The tokens that are set (an entry whose `${VAR:-}` expanded empty grants nothing)."""
        return {name: t for name, t in self.api_tokens.items() if t.token is not None}

    @model_validator(mode="after")
    def _distinct_tokens(self) -> "ServiceSettings":
        values = [t.token.get_secret_value() for t in self.active_tokens().values()]
        if len(values) != len(set(values)):
            raise ValueError("api_tokens: two entries share one token (each name needs its own)")
        return self


class DatabaseSettings(_Strict):
    type: Literal["duckdb", "bigquery"] = "duckdb"
    path: str = "./data/order_management.duckdb"  # duckdb
    project: OptionalStr = None  # bigquery
    dataset: OptionalStr = None  # bigquery
    location: OptionalStr = None  # bigquery: where the dataset is created (BigQuery's default: US)
    # bigquery: a local emulator's REST endpoint (http://host:port); credentials are then anonymous.
    # Unset: Google's endpoint with Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS
    # or Workload Identity).
    emulator_host: OptionalStr = None

    @model_validator(mode="after")
    def _complete(self) -> "DatabaseSettings":
        if self.type == "bigquery":
            if not (self.project and self.dataset):
                raise ValueError("bigquery needs project and dataset")
            if self.path != DatabaseSettings.model_fields["path"].default:  # refused rather than ignored
                raise ValueError("path is the DuckDB file: not used by database.type bigquery")
            if not re.fullmatch(r"[A-Za-z0-9_]{1,1024}", self.dataset):
                raise ValueError("dataset: letters, digits and underscores only")
            if self.emulator_host and not re.fullmatch(r"https?://[^/\s]+/?", self.emulator_host):
                raise ValueError("emulator_host: an endpoint such as http://localhost:9050")
        return self

    @field_validator("project", "dataset", "location", "emulator_host")
    @classmethod
    def _bigquery_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("type") != "bigquery":  # refused rather than ignored
            raise ValueError("only used by database.type bigquery")
        return value


class MessagingSettings(_Strict):
    type: Literal["redis", "pubsub"] = "redis"
    host: str = "localhost"  # redis
    port: Annotated[int, Field(ge=1, le=65535)] = 6379  # redis
    db: Annotated[int, Field(ge=0)] = 0
    password: OptionalSecret = None
    project: Annotated[str | None, Field(validate_default=True)] = None  # pubsub
    # pubsub: prepended to every topic and subscription name (which must begin with a letter)
    topic_prefix: Annotated[str, Field(pattern=r"^([A-Za-z][-A-Za-z0-9_.~+%]*)?$", max_length=100)] = ""
    signals_stream: str = "signals"
    consumer_group: str = "order-management"
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    claim_idle_ms: Annotated[int, Field(ge=100)] = 30_000
    # Intake bounds: a signal older than this (by created_at, else by when it reached the stream) is
    # dead-lettered, never traded; a payload larger than this is dead-lettered, kept clipped to it.
    max_signal_age_s: Annotated[int, Field(ge=1, le=30 * 86_400)] = 300
    max_payload_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024

    # Pub/Sub streaming pull flow control: at most this many signals (bytes) held by one consumer.
    flow_control_max_messages: Annotated[int, Field(ge=1, le=100_000)] = 1000
    flow_control_max_bytes: Annotated[int, Field(ge=1024 * 1024, le=1024 * 1024 * 1024)] = 100 * 1024 * 1024

    # Keys of the other transport are refused rather than ignored (Redis serves both: rate limits,
    # daily caps, the order cache and the recorder's streams). `type` is declared first, so it is known here.
    @field_validator("project", mode="after")
    @classmethod
    def _project(cls, value: str | None, info: ValidationInfo) -> str | None:
        pubsub = info.data.get("type") == "pubsub"
        if pubsub and not value:
            raise ValueError("required by messaging.type pubsub")
        if value and not pubsub:
            raise ValueError("only used by messaging.type pubsub")
        return value

    @field_validator("topic_prefix", "flow_control_max_messages", "flow_control_max_bytes", mode="after")
    @classmethod
    def _pubsub_only(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("type") != "pubsub" and value != cls.model_fields[info.field_name].default:
            raise ValueError("only used by messaging.type pubsub")
        return value

    @field_validator("claim_idle_ms", mode="after")
    @classmethod
    def _ack_deadline(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("type") == "pubsub" and not 10_000 <= value <= 600_000:
            raise ValueError("with pubsub it is the subscription's ack deadline: 10000 to 600000")
        return value

    @property
    def redis_url(self) -> str:
        # Quoted: a generated password may hold characters that mean something in a URL.
        auth = f":{quote(self.password.get_secret_value(), safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class FaultSettings(_Strict):
    """Fault injection for the simulated venue (tests and chaos runs). Probabilities 0..1."""

    reject_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    timeout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    lost_ack_rate: Annotated[float, Field(ge=0, le=1)] = 0.0


class SimulatedVenueSettings(_Strict):
    """One more simulated venue: what differs from `execution.simulation` (unset: the same)."""

    maker_fee: Annotated[float, Field(ge=0, le=0.01)] | None = None
    taker_fee: Annotated[float, Field(ge=0, le=0.01)] | None = None
    depth_levels: Annotated[int, Field(ge=1, le=100)] | None = None
    depth_scale: Annotated[float, Field(gt=0, le=100)] | None = None


class SimulationSettings(_Strict):
    slippage: Annotated[float, Field(ge=0, le=0.1)] = 0.0005  # 5 bps base slippage
    delay_ms: Annotated[int, Field(ge=0, le=60_000)] = 100
    maker_fee: Annotated[float, Field(ge=0, le=0.01)] = 0.0002
    taker_fee: Annotated[float, Field(ge=0, le=0.01)] = 0.0005
    volatility_bps: Annotated[float, Field(ge=0, le=1000)] = 20.0  # price path amplitude
    depth_levels: Annotated[int, Field(ge=1, le=100)] = 10
    # Each book level holds this multiple of the symbol's usual level notional (a thinner venue: < 1).
    depth_scale: Annotated[float, Field(gt=0, le=100)] = 1.0
    faults: FaultSettings = FaultSettings()
    # More simulated venues beside `simulation`, each on the same price path with its own fees and
    # depth (so smart routing has venues to choose between): name `simulation-<x>` -> overrides.
    venues: dict[Annotated[str, Field(pattern=r"^simulation-[a-z0-9]{1,20}$")], SimulatedVenueSettings] = Field(
        default_factory=dict)

    def venue(self, name: str) -> "SimulationSettings":
        """The settings one simulated venue prices with: these, with the venue's own overrides."""
        overrides = self.venues.get(name)
        if overrides is None:
            return self
        return self.model_copy(update={k: v for k, v in overrides.model_dump().items() if v is not None} | {"venues": {}})


def _numeric_id(value: str | None) -> str | None:
    if value is not None and not value.isdigit():
        raise ValueError("must be a number (QuantConnect user and project ids are integers)")
    return value


class QuantConnectSettings(_Strict):
    """A live QuantConnect algorithm reached through the REST API v2 (activities/venues/quantconnect.py)."""

    api_key: OptionalSecret = None  # the API token; only its timestamped SHA-256 is ever sent
    project_id: Annotated[OptionalStr, AfterValidator(_numeric_id)] = None  # the live algorithm's project
    user_id: Annotated[OptionalStr, AfterValidator(_numeric_id)] = None  # HTTP Basic user of every call
    base_url: str = "https://www.quantconnect.com/api/v2"
    # Lean market of the algorithm's crypto securities: part of the Lean symbol id of each order.
    market: Literal["coinbase", "binance", "binanceus", "bybit", "kraken", "bitfinex"] = "coinbase"
    timeout_ms: Annotated[int, Field(ge=100, le=120_000)] = 10_000  # per HTTP request
    # How long submit/cancel/amend watch the orders listing for their effect (capped at half of
    # orders.execution_timeout_ms); an unconfirmed cancel or amend is an unknown outcome.
    confirm_timeout_ms: Annotated[int, Field(ge=0, le=60_000)] = 2_000
    # QuantConnect's orders listing lags the algorithm: an order command accepted this recently and
    # not listed yet counts as pending (never resent), not as absent.
    listing_grace_s: Annotated[float, Field(ge=0, le=86_400)] = 900.0


class ExchangeSettings(_Strict):
    """One direct venue account. Keys come only from the environment (`${VAR}`)."""

    api_key: OptionalSecret = None
    secret: OptionalSecret = None
    sandbox: bool = False
    base_url: OptionalStr = None  # point the real ccxt client at another host (emulator, staging)
    account: str = "default"
    timeout_ms: Annotated[int, Field(ge=100, le=120_000)] = 10_000
    # The venue refuses a signed request older than this: after it has passed, an order we may have
    # sent and cannot find was never placed, so it can be sent again under the same client id.
    recv_window_ms: Annotated[int, Field(ge=1000, le=60_000)] = 5_000
    # The taker fee this account pays (a VIP tier, a discount); unset: the venue's listed rate.
    # The router ranks venues by it and fee estimates use it.
    taker_fee: Annotated[float, Field(ge=0, le=0.01)] | None = None


class CircuitBreakerSettings(_Strict):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    open_seconds: Annotated[float, Field(gt=0)] = 30.0
    on_open: Literal["wait", "reroute"] = "wait"


class DirectSettings(_Strict):
    exchanges: list[Literal["binance", "bybit"]] = Field(default_factory=list)
    accounts: dict[Literal["binance", "bybit"], ExchangeSettings] = Field(default_factory=dict)
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    # How long an order waits for a venue that is paused (429/418) or whose breaker is open before
    # it ends `failed`; the wait is a durable timer, so it costs nothing while it lasts.
    max_wait_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    poll_interval_ms: Annotated[int, Field(ge=100, le=600_000)] = 1_000  # batched fill poller, per account

    def account(self, exchange: str) -> ExchangeSettings:
        return self.accounts.get(exchange) or ExchangeSettings()

    def accounts_in_use(self) -> bool:
        """Whether any direct account has credentials or a base URL (signals may name it)."""
        return any(a.api_key or a.base_url for a in self.accounts.values())


def _cap_key(value: dict) -> dict:
    for key in value:
        if not re.fullmatch(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}|[a-z0-9_-]{1,32}", str(key)):
            raise ValueError(f"{key!r} is neither a symbol (BTC/USDT) nor a venue name (binance)")
    return value


ChildCap = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


class ExecutionSettings(_Strict):
    mode: Literal["simulation", "quantconnect", "direct"] = "simulation"
    simulation: SimulationSettings = SimulationSettings()
    quantconnect: QuantConnectSettings = QuantConnectSettings()
    direct: DirectSettings = DirectSettings()
    # Venue orders of ours that no running workflow watches (after a terminate or reset): the sweep
    # in `tom worker` cancels them at the venue, or only reports them (workers/sweep.py).
    orphans: Literal["cancel", "report"] = "cancel"
    orphan_sweep_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    # Smart routing (oms/routing.py): `smart` sends an order the signal does not pin to the venue
    # (or split across venues) with the best all-in price on their books; `first`: the first venue.
    routing: Literal["smart", "first"] = "smart"
    routing_book_ttl_ms: Annotated[int, Field(ge=0, le=60_000)] = 300  # a book serves routing this long
    # Child order caps, keyed by symbol (`BTC/USDT`) or venue (`binance`); the tighter applies.
    max_child_quantity: dict[str, ChildCap] = Field(default_factory=dict)  # base units
    max_child_notional: dict[str, ChildCap] = Field(default_factory=dict)  # quote currency

    @field_validator("max_child_quantity", "max_child_notional")
    @classmethod
    def _cap_keys(cls, value: dict) -> dict:
        return _cap_key(value)

    @model_validator(mode="after")
    def _mode_configured(self) -> "ExecutionSettings":
        if self.mode == "quantconnect" and not (
            self.quantconnect.api_key and self.quantconnect.project_id
        ):
            raise ValueError("mode quantconnect needs quantconnect.api_key and project_id")
        if self.mode == "direct" and not self.direct.exchanges:
            raise ValueError("mode direct needs direct.exchanges")
        return self


class AccountLimits(_Strict):
    # The account currency: every order is valued in it at the venue's price (through a conversion
    # pair such as BTC/USDT for ETH/BTC) before the two value limits below are applied.
    currency: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,20}$")] = "USDT"
    max_order_value: Annotated[float, Field(gt=0)] = 1000  # account currency, per order
    max_daily_orders: Annotated[int, Field(ge=1)] = 50  # per account, across all workers (Redis)
    min_order_size: Annotated[float, Field(ge=0)] = 10  # minimum order value, account currency
    # min_order_size above max_order_value is refused by Settings (the message names the key).


class OrderCacheSettings(_Strict):
    enabled: bool = True
    ttl: Annotated[int, Field(ge=1)] = 3600  # seconds


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class OrderParams(_Strict):
    """The brief's `order_params`."""

    default_order_type: Literal["market", "limit"] = "market"
    time_in_force: Literal["GTC", "IOC", "FOK", "GTD"] = "GTC"
    # A collar of 100 % or more would let a sell go at 0: refused (lt), as are settings no order survives.
    max_slippage_bps: Annotated[float, Field(ge=0, lt=10_000)] = 10
    retry_attempts: Annotated[int, Field(ge=0, le=100)] = 3
    retry_delay_ms: Annotated[int, Field(ge=1, le=600_000)] = 100
    execution_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 5000
    rate_limit_orders: Annotated[int, Field(ge=1)] = 10
    rate_limit_window_ms: Annotated[int, Field(ge=1)] = 1000
    track_execution_metrics: bool = True
    log_level: LogLevel = LogLevel.INFO
    # text: `time LEVEL logger: message`; json: one object a line with order_id / workflow_id /
    # run_id inside workflows and activities (GKE's log agent parses it; workers/observability.py).
    log_format: Literal["text", "json"] = "text"
    # Horizon of a signal's timing: execution.start_at at most this far ahead, expire_at likewise.
    max_start_delay_s: Annotated[int, Field(ge=0, le=366 * 86_400)] = 86_400
    max_order_lifetime_s: Annotated[int, Field(ge=1, le=366 * 86_400)] = 30 * 86_400

    @field_validator("track_execution_metrics")
    @classmethod
    def _metrics_always(cls, value: bool) -> bool:
        # Refused rather than ignored: slippage, fees and latency are part of every order's record.
        if not value:
            raise ValueError("false is not supported: execution metrics (slippage, fees, latency) are always recorded")
        return value


class TemporalTLSSettings(_Strict):
    """TLS to the Temporal frontend: server TLS alone (system roots or `server_ca_path`), or mTLS
    with a client certificate (self-hosted clusters, Temporal Cloud's mTLS namespaces)."""

    # None: on when anything below or `temporal.api_key` is set. `temporal.tls: true|false` is
    # shorthand for this key alone.
    enabled: bool | None = None
    client_cert_path: OptionalStr = None  # PEM; with client_key_path (mTLS)
    client_key_path: OptionalStr = None
    server_ca_path: OptionalStr = None  # PEM roots for a private CA; default the system's
    server_name: OptionalStr = None  # SNI / name checked on the server certificate

    @field_validator("client_cert_path", "client_key_path", "server_ca_path")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError("file not found")  # the path is no secret; the message stays one line
        return value

    @model_validator(mode="after")
    def _pair(self) -> "TemporalTLSSettings":
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ValueError("client_cert_path and client_key_path go together (mTLS)")
        if self.enabled is False and (self.client_cert_path or self.server_ca_path or self.server_name):
            raise ValueError("enabled is false but TLS files or server_name are set")
        return self

    @property
    def wanted(self) -> bool:
        return bool(self.enabled or self.client_cert_path or self.server_ca_path or self.server_name)


def _version_part(chars: str):
    """A deployment name or build id: a version is written `<deployment_name>.<build_id>`, so the
    name has no dot; both stay short and shell-safe for the `temporal worker deployment` commands."""
    pattern = re.compile(rf"^{chars}{{1,100}}$")

    def check(value: str | None) -> str | None:
        if value is not None and not pattern.match(value):
            raise ValueError(f"must match {pattern.pattern}")
        return value

    return check


def _tls_shorthand(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


def _payload_keys(value: SecretStr | None) -> SecretStr | None:
    """Comma-separated base64 AES-256 keys; refused (never echoed) unless each is 32 bytes."""
    if value is not None:
        from workers.payload_codec import parse_keys  # one parser for config and codec

        parse_keys(value.get_secret_value())
    return value


PayloadKeys = Annotated[OptionalSecret, AfterValidator(_payload_keys)]


class CodecServerSettings(_Strict):
    """`tom codec-server`: decodes payloads for the Temporal UI and CLI of authorised operators."""

    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8089
    # Browser origins allowed to call it (the Temporal UI's); others get no CORS headers.
    cors_origins: list[str] = ["http://localhost:8233", "http://127.0.0.1:8233"]
    auth_token: OptionalSecret = None  # when set, requests need `Authorization: Bearer <token>`


def _metrics_bind(value: str | None) -> str | None:
    """`<ip>:<port>`: the SDK binds a socket address, so a host name is refused here, not at start."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        bracketed = host.startswith("[") and host.endswith("]")
        valid = (bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
                 and bracketed == (address.version == 6))  # an IPv6 address is written [::]:9000
    except ValueError:
        valid = False
    if not valid:
        raise ValueError("must be <ip>:<port>, e.g. 0.0.0.0:9000, 127.0.0.1:9000 or [::]:9000")
    return value


class TemporalSettings(_Strict):
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "orders"
    tls: Annotated[TemporalTLSSettings, BeforeValidator(_tls_shorthand)] = TemporalTLSSettings()
    api_key: OptionalSecret = None  # Temporal Cloud API key (`${TEMPORAL_API_KEY}`); implies TLS
    # Worker versioning (Worker Deployments): with a deployment name, `tom worker` registers as
    # version <deployment_name>.<build_id>; the build id comes from the image (TOM_BUILD_ID).
    deployment_name: Annotated[OptionalStr, AfterValidator(_version_part("[A-Za-z0-9_-]"))] = None
    build_id: Annotated[OptionalStr, AfterValidator(_version_part("[A-Za-z0-9_.-]"))] = None
    ui_port: Annotated[int, Field(ge=1, le=65535)] = 8233
    sandbox: bool = True  # run workflows in the SDK's determinism sandbox (false: faster, see README)
    # Where the worker runs workflow activations: 0, inline on its event loop (no thread hand-off and
    # no GIL contention; the SDK's 2 s deadlock detection cannot interrupt inline code); N, a pool of
    # N threads with that detection (README: performance).
    workflow_threads: Annotated[int, Field(ge=0, le=1024)] = 0
    # AES-GCM payload encryption: the key new payloads are encrypted with, and older keys still
    # accepted for decoding (rotation). Unset: payloads are stored in plain JSON.
    payload_key: PayloadKeys = None
    payload_old_keys: PayloadKeys = None
    codec_server: CodecServerSettings = CodecServerSettings()
    # `tom worker` serves the SDK's Prometheus metrics on http://<ip>:<port>/metrics; the workers of
    # `--processes N` on port + slot - 1 (workers/observability.py). Unset: no metrics endpoint.
    metrics_bind: Annotated[OptionalStr, AfterValidator(_metrics_bind)] = None

    @field_validator("payload_key")
    @classmethod
    def _one_current_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "," in value.get_secret_value():
            raise ValueError("one key encrypts; list older ones in temporal.payload_old_keys")
        return value

    @model_validator(mode="after")
    def _old_keys_need_a_current_one(self) -> "TemporalSettings":
        if self.payload_old_keys is not None and self.payload_key is None:
            raise ValueError("payload_old_keys: set without temporal.payload_key (decrypt-only is not "
                             "supported: new payloads would be stored unencrypted)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "TemporalSettings":
        if self.api_key and self.tls.enabled is False:
            raise ValueError("api_key is sent only over TLS: remove tls.enabled: false")
        if self.deployment_name and not self.build_id:
            raise ValueError("deployment_name needs build_id (worker versioning; set TOM_BUILD_ID)")
        if self.build_id and not self.deployment_name:
            raise ValueError("build_id needs deployment_name (worker versioning)")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls.wanted or self.api_key is not None


class Settings(_Strict):
    environment: str = "local"
    service: ServiceSettings = ServiceSettings()
    database: DatabaseSettings = DatabaseSettings()
    messaging: MessagingSettings = MessagingSettings()
    execution: ExecutionSettings = ExecutionSettings()
    account_limits: AccountLimits = AccountLimits()
    order_cache: OrderCacheSettings = OrderCacheSettings()
    orders: OrderParams = OrderParams()
    temporal: TemporalSettings = TemporalSettings()
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="after")
    def _orders_possible(self) -> "Settings":
        limits = self.account_limits
        if limits.min_order_size > limits.max_order_value:
            raise ValueError("account_limits.min_order_size: above account_limits.max_order_value "
                             "(every order would be denied)")
        return self

    def with_overrides(self, **sections: Any) -> "Settings":
        """A copy with some sections replaced (tests and benchmarks)."""
        data = self.model_dump()
        for key, value in sections.items():
            data[key] = value.model_dump() if isinstance(value, BaseModel) else value
        data = _reveal(data)
        return Settings.model_validate(data)


    def to_yaml(self) -> str:
        """The settings as a config file (secrets included: write it only where it is safe)."""
        return yaml.safe_dump(_reveal(self.model_dump(mode="python", exclude={"source"})), sort_keys=False)


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def default_config_path() -> Path:
    """`config/local.yaml` of this checkout (or of the installed package)."""
    return Path(str(resources.files("config").joinpath("local.yaml")))


def resolve_config_path(cli_path: str | None = None) -> Path:
    chosen = cli_path or os.environ.get(CONFIG_ENV_VAR)
    return Path(chosen) if chosen else default_config_path()


def _interpolate(node: Any, where: str, path: Path, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k), path, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{where}[{i}]", path, env) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: {where}: environment variable {name} is not set")

    expanded = _VAR.sub(substitute, node)
    if expanded != node and _VAR.fullmatch(node):
        # A whole-value reference takes the YAML type of what it expands to (port: ${PORT:-8004}).
        try:
            typed = yaml.safe_load(expanded)
        except yaml.YAMLError:
            return expanded
        return typed if isinstance(typed, (int, float, bool)) else expanded
    return expanded


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across sections: its message starts with the key it names
        return message
    return f"{key}: {message}"  # pydantic's msg names the expected type, never the value


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    path = Path(path) if path is not None else resolve_config_path()
    env = dict(os.environ) if env is None else env
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML error{at}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: <root>: expected a mapping of sections")
    data = _interpolate(raw, "", path, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {_describe(errors[0])}{more}") from None
    return settings.model_copy(update={"source": str(path)})
