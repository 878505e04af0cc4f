"""ModelFactory settings: every value comes from the environment (see .env.example), with embedded defaults that
need no server. A bad value stops start-up with an EnvError naming the variable."""

from __future__ import annotations

import sys
from pathlib import Path

import dj_database_url

from config.env import Env, EnvError, embedded_secret_key, load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")
env = Env()

VAR_DIR = Path(env.str("MF_VAR_DIR", str(BASE_DIR / "var")))

# --- Core -------------------------------------------------------------------------------------------------------
# DEBUG is off unless DJANGO_DEBUG=true (developers): people get the site's own error pages, never Django's debug
# pages. Without DJANGO_SECRET_KEY the installation is "embedded" (this machine only, `make run`): a key generated
# once and kept in MF_VAR_DIR/secret_key, local host names, plain HTTP, static files served from the source folders.
# With DJANGO_SECRET_KEY and DEBUG off it is a production deployment: HTTPS only, collected static files.
DEBUG = env.bool("DJANGO_DEBUG", False)
EMBEDDED = env.str("DJANGO_SECRET_KEY", "") == ""
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
SECRET_KEY = embedded_secret_key(VAR_DIR / "secret_key") if EMBEDDED else env.str("DJANGO_SECRET_KEY", "")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", LOCAL_HOSTS if DEBUG or EMBEDDED else [])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

if not EMBEDDED and len(SECRET_KEY) < 32:
    raise EnvError("DJANGO_SECRET_KEY", "<hidden>", "a secret of at least 32 characters (or unset: one is generated)")
if not DEBUG and not ALLOWED_HOSTS:
    raise EnvError("DJANGO_ALLOWED_HOSTS", "", "a comma-separated list of host names when DJANGO_DEBUG=false")
PRODUCTION = not DEBUG and not EMBEDDED

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "core",
    "accounts",
    "datanets",
    "modelfactory",
    "attribution",
    "ledger",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before anything that may read the body (sessions, CSRF, views); after the ones that add security headers.
    "core.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.middleware.HtmxLoginRedirectMiddleware",
    "core.middleware.ApiErrorMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            # {% partialdef %} everywhere without {% load partials %} (Django 6 has it built in; see README "Stack").
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------------------
DATABASE_URL = env.url(
    "DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}", schemes={"sqlite", "postgres", "postgresql", "pgsql"}
)
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
except ValueError as exc:  # dj_database_url explains what is wrong with the URL
    raise EnvError("DATABASE_URL", DATABASE_URL, f"a database URL ({exc})") from None
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
# The development server (`manage.py runserver`, which `make run` starts) answers each request in a new thread: with
# persistent connections every finished thread left its connection open, and about 100 requests used up
# PostgreSQL's. There, connections come from a pool of at most MF_DB_POOL_MAX_SIZE that threads borrow per request and
# give back. MF_DB_POOL=on pools in every process (gunicorn, Celery) too; off never pools. Pooled connections are not
# kept per thread, so CONN_MAX_AGE is 0 with it; a request waits up to 30 s for a free connection.
MF_DB_POOL = env.str("MF_DB_POOL", "auto")
if MF_DB_POOL not in ("auto", "on", "off"):
    raise EnvError("MF_DB_POOL", MF_DB_POOL, "auto, on or off")
MF_DB_POOL_MAX_SIZE = env.int("MF_DB_POOL_MAX_SIZE", 10, min_value=1, max_value=1000)
_DEV_SERVER = sys.argv[1:2] == ["runserver"]
if IS_POSTGRES and (MF_DB_POOL == "on" or (MF_DB_POOL == "auto" and _DEV_SERVER)):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": MF_DB_POOL_MAX_SIZE,
        "timeout": 30,
    }
if not IS_POSTGRES:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Cache (login throttling and API throttling must be shared by every web process) ------------------------------
CACHE_URL = env.url("CACHE_URL", f"file://{VAR_DIR / 'cache'}", schemes={"file", "redis", "rediss", "locmem"})
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": CACHE_URL.removeprefix("file://"),
        }
    }
# Inference streams (worker -> web text deltas): their own space, so that culling one never drops the other's keys.
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES["streams"] = {**CACHES["default"], "KEY_PREFIX": "streams"}
elif CACHE_URL.startswith("locmem://"):
    CACHES["streams"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "streams"}
else:
    CACHES["streams"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": CACHE_URL.removeprefix("file://").rstrip("/") + "-streams",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }

# --- Auth -------------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
# Failed log-ins are counted per account and per client address. After MF_LOGIN_MAX_FAILURES failures for an account
# (MF_LOGIN_ADDRESS_MAX_FAILURES from one address), each further try must wait: MF_LOGIN_DELAY_SECONDS, doubling with
# each failure, at most MF_LOGIN_DELAY_MAX_SECONDS. A browser that logged in to the account before (a signed cookie
# kept MF_LOGIN_KNOWN_DEVICE_DAYS) is not held back by the account's count, only by its own address's.
MF_LOGIN_MAX_FAILURES = env.int("MF_LOGIN_MAX_FAILURES", 5, min_value=1)
MF_LOGIN_ADDRESS_MAX_FAILURES = env.int("MF_LOGIN_ADDRESS_MAX_FAILURES", 20, min_value=1)
MF_LOGIN_DELAY_SECONDS = env.int("MF_LOGIN_DELAY_SECONDS", 30, min_value=1)
MF_LOGIN_DELAY_MAX_SECONDS = env.int("MF_LOGIN_DELAY_MAX_SECONDS", 900, min_value=1)
MF_LOGIN_KNOWN_DEVICE_DAYS = env.int("MF_LOGIN_KNOWN_DEVICE_DAYS", 180, min_value=1)
# Reverse proxies in front of the app that append the client's address to X-Forwarded-For (0: none; the address is
# the connection's). With N, the client is the N-th address from the right; anything left of it is the client's own.
MF_TRUSTED_PROXY_COUNT = env.int("MF_TRUSTED_PROXY_COUNT", 0, min_value=0, max_value=10)

# --- I18N / static / media --------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MF_UPLOAD_MAX_BYTES = env.int("MF_UPLOAD_MAX_BYTES", 200 * 1024 * 1024, min_value=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- Models -----------------------------------------------------------------------------------------------------
MF_BASE_MODEL_DIR = Path(env.str("MF_BASE_MODEL_DIR", str(VAR_DIR / "models")))
# Datanet token counts use this model folder's tokenizer.json (the default base model); without it, an estimate.
MF_TOKEN_COUNT_MODEL_DIR = Path(env.str("MF_TOKEN_COUNT_MODEL_DIR", str(MF_BASE_MODEL_DIR / "smollm2-135m-instruct")))
# Where training runs: "auto" picks CUDA when the worker has it.
MF_TRAINING_DEVICE = env.str("MF_TRAINING_DEVICE", "auto")
if MF_TRAINING_DEVICE != "auto" and MF_TRAINING_DEVICE != "cpu" and not MF_TRAINING_DEVICE.startswith("cuda"):
    raise EnvError("MF_TRAINING_DEVICE", MF_TRAINING_DEVICE, "auto, cpu, cuda or cuda:N")
# A gpu worker measures each base model's training throughput when it starts (a few seconds per model, once a week
# per hardware): the first time estimate before any run (modelfactory/services/calibration.py).
MF_CALIBRATE_ON_START = env.bool("MF_CALIBRATE_ON_START", True)
# A running job whose heartbeat is older than this is considered orphaned (its worker died).
MF_JOB_HEARTBEAT_SECONDS = env.int("MF_JOB_HEARTBEAT_SECONDS", 15, min_value=1)
MF_JOB_STALE_SECONDS = env.int("MF_JOB_STALE_SECONDS", 120, min_value=5)
MF_JOB_MAX_ATTEMPTS = env.int("MF_JOB_MAX_ATTEMPTS", 2, min_value=1, max_value=10)
# Memory: each stage of a training job (training, evaluation, attribution index, data valuation) sizes its passes so
# that one pass needs at most this share of the memory still free when the stage starts (RAM; on a GPU, its free
# memory). MF_MEMORY_LIMIT_MB fixes the memory a job may hold instead of reading it from the machine (0: read it).
MF_MEMORY_BUDGET_FRACTION = env.float("MF_MEMORY_BUDGET_FRACTION", 0.25, min_value=0.05, max_value=0.95)
MF_MEMORY_LIMIT_MB = env.int("MF_MEMORY_LIMIT_MB", 0, min_value=0)
# A resumable checkpoint every N optimizer steps (0: none; a job whose worker died then starts over).
MF_JOB_CHECKPOINT_EVERY = env.int("MF_JOB_CHECKPOINT_EVERY", 50, min_value=0)

# --- Celery -----------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.url(
    "CELERY_BROKER_URL", "filesystem://", schemes={"filesystem", "redis", "rediss", "amqp", "memory"}
)
CELERY_BROKER_DIR = VAR_DIR / "celery" / "broker"
# A broker that is down must not hold a web request (each one that enqueues work waited 19-25 s): connect with a
# short timeout, reconnect at most once and at once, then fail with the caller's plain message (core/jobs.py).
# Workers pass their own retry count when they connect to consume (broker_connection_max_retries), so this only
# shortens sending. Applied to kombu's connection (max_retries, interval_*) and Redis sockets (socket_connect_timeout).
MF_BROKER_CONNECT_TIMEOUT_SECONDS = 1.0
MF_BROKER_FAIL_FAST = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
    "socket_connect_timeout": MF_BROKER_CONNECT_TIMEOUT_SECONDS,
}
CELERY_BROKER_CONNECTION_TIMEOUT = MF_BROKER_CONNECT_TIMEOUT_SECONDS
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR),
        "data_folder_out": str(CELERY_BROKER_DIR),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
    _default_result_backend = f"file://{VAR_DIR / 'celery' / 'results'}"
    for _sub in ("broker", "control", "results"):
        (VAR_DIR / "celery" / _sub).mkdir(parents=True, exist_ok=True)
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600, **MF_BROKER_FAIL_FAST}
    _default_result_backend = CELERY_BROKER_URL
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = dict(MF_BROKER_FAIL_FAST) if CELERY_BROKER_URL.startswith("amqp") else {}
    _default_result_backend = "cache+memory://"
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", _default_result_backend)
# A result store that is down must not hold a request either: Celery's Redis result backend retries 20 times, a
# second apart, before it gives up (about 19 s for every enqueue). One retry, and a short connect timeout.
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "retry_policy": {k: v for k, v in MF_BROKER_FAIL_FAST.items() if k != "socket_connect_timeout"}
}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = MF_BROKER_CONNECT_TIMEOUT_SECONDS
CELERY_TASK_ALWAYS_EAGER = False
# How long a worker may be silent before /healthz and the job watchdog consider it gone.
MF_WORKER_HEARTBEAT_SECONDS = env.int("MF_WORKER_HEARTBEAT_SECONDS", 10, min_value=1)
MF_WORKER_STALE_SECONDS = env.int("MF_WORKER_STALE_SECONDS", 45, min_value=2)
# How often each worker runs the recovery sweeps below (core/sweeper.py) for work abandoned by dead workers.
MF_WORKER_SWEEP_SECONDS = env.int("MF_WORKER_SWEEP_SECONDS", 60, min_value=1)
# Every "find stale work and finish it" job, in one place: what it recovers -> a function of no arguments that
# returns the ids it finished. Each worker runs them all every MF_WORKER_SWEEP_SECONDS (`manage.py sweep`: once,
# now). They are idempotent, so several workers may run them at once; no page or API read runs them.
MF_SWEEPS = {
    "uploads whose check stopped": "datanets.services.contribution_fail_stale",
    "training jobs whose worker died": "modelfactory.services.finetune_reap_stale",
    "exports whose worker died": "modelfactory.services.export_reap_stale",
    "evaluations whose worker died": "modelfactory.services.evaluation_reap_stale",
    "answers that never finished (their fee reservation is released)": "modelfactory.services.inference_reap_stale",
    "answers whose attribution or settlement never finished": "attribution.services.attribution_sweep_pending",
    "earnings whose review period ended (they become available)": "ledger.services.earnings_release_due",
    "bonds of uploads already accepted, rejected or failed": "attribution.services.bonds_settle_decided",
}
# Earnings from a contribution that data valuation flagged harmful (not yet dismissed by a curator), or from a
# contributor with a contribution confirmed harmful in that datanet, stay pending at least this many days.
MF_FLAGGED_HOLD_DAYS = env.int("MF_FLAGGED_HOLD_DAYS", 30)

# --- REST API ---------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.Pagination",
    "PAGE_SIZE": 50,
    "NUM_PROXIES": MF_TRUSTED_PROXY_COUNT,
    "DEFAULT_THROTTLE_CLASSES": [
        "core.throttling.AnonRateThrottle",
        "core.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("MF_THROTTLE_ANON", "60/min"),
        "user": env.str("MF_THROTTLE_USER", "600/min"),
        "login": env.str("MF_THROTTLE_LOGIN", "10/min"),
        "writes": env.str("MF_THROTTLE_WRITES", "120/min"),
        "generate": env.str("MF_THROTTLE_GENERATE", "60/min"),
    },
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # DRF's three defaults, with JSON nested too deeply refused as a 400 (core/parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ModelFactory API",
    "DESCRIPTION": "Datanets, fine-tuning, inference, attribution and the rewards ledger. "
    "Authenticate with `Authorization: Token <key>` (create keys on the API tokens page or with "
    'POST /api/v1/auth/token/). Errors share one shape: {"error": {"code", "message", "details"}}.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "DatanetVisibilityEnum": "datanets.models.Datanet.Visibility",
        "ModelVisibilityEnum": "modelfactory.models.TrainedModel.Visibility",
        # the name it had before the detail serializer (attribution_quality) made it shared by two components
        "TrainedModelStatusEnum": "modelfactory.models.TrainedModel.Status",
        "ExportStatusEnum": "modelfactory.models.ModelExport.Status",
        "EvaluationStatusEnum": "modelfactory.models.ModelEvaluation.Status",
        "RecordStatusEnum": "datanets.models.Record.Status",
        "KindEnum": "datanets.models.Datanet.Kind",  # the datanet kind keeps its name beside the pool entry kind
        "PoolEntryKindEnum": [("earning_forfeit", "Earnings forfeited"), ("bond_slash", "Bond forfeited")],
    },
}

# --- Security ---------------------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
# Sessions read from the cache first (one query less per page), written through to the database.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
CSRF_FAILURE_VIEW = "core.views.csrf_failure"  # the site's own "reload and try again" page, not Django's
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie, but the admin's JS needs neither
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Content-Security-Policy (core.middleware.ContentSecurityPolicyMiddleware): no inline or eval'd script anywhere;
# tests/browser/test_csp_browser.py loads every main page in Chromium and fails on any violation.
MF_CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# Report violations instead of blocking (to try a policy change on a live site first).
MF_CSP_REPORT_ONLY = env.bool("MF_CSP_REPORT_ONLY", False)
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", 31536000, min_value=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("MF_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Embedded and DEBUG: WhiteNoise serves static files straight from the source folders (no collectstatic).
WHITENOISE_USE_FINDERS = not PRODUCTION

for _path in (VAR_DIR, MEDIA_ROOT, MF_BASE_MODEL_DIR, STATIC_ROOT):
    _path.mkdir(parents=True, exist_ok=True)

# --- Datanet ingest ---------------------------------------------------------------------------------------------
MF_INGEST_ROW_MAX_CHARS = env.int("MF_INGEST_ROW_MAX_CHARS", 100_000, min_value=1000)
MF_INGEST_DOCUMENT_ROW_CHARS = env.int("MF_INGEST_DOCUMENT_ROW_CHARS", 2000, min_value=200)
MF_INGEST_MAX_UNPACKED_BYTES = env.int("MF_INGEST_MAX_UNPACKED_BYTES", 64 * 1024 * 1024, min_value=1024 * 1024)
MF_INGEST_TIME_LIMIT_SECONDS = env.int("MF_INGEST_TIME_LIMIT_SECONDS", 3600, min_value=60)
# An ingest whose progress has not moved for this long (or whose worker's heartbeat is gone) is marked failed.
MF_INGEST_STALE_SECONDS = env.int("MF_INGEST_STALE_SECONDS", 300, min_value=10)
# --- Ledger -----------------------------------------------------------------------------------------------------
# Credit is counted in micro-units: 1 credit = 1,000,000.
MF_SIGNUP_GRANT_MICRO = env.int("MF_SIGNUP_GRANT_MICRO", 10_000_000, min_value=0)
MF_LEDGER_WITHDRAWAL_MIN_MICRO = env.int("MF_LEDGER_WITHDRAWAL_MIN_MICRO", 5_000_000, min_value=1)
# Platform revenue and fees clearing are split over this many rows so concurrent settlements do not queue on one.
MF_LEDGER_SHARDS = env.int("MF_LEDGER_SHARDS", 16, min_value=1, max_value=1024)
# PostgreSQL: settle in one call of the ledger_settlement_post function (migrations/0003) with the locks released
# before the disk flush; off: the general path for every settlement (the benchmark's baseline).
MF_LEDGER_FAST_SETTLEMENT = env.bool("MF_LEDGER_FAST_SETTLEMENT", True)
# PostgreSQL: a ledger write that is its own transaction commits without waiting for the WAL flush (its row locks,
# the chain head's included, are released before the flush) and the service waits for the flush before answering.
MF_LEDGER_EARLY_RELEASE = env.bool("MF_LEDGER_EARLY_RELEASE", True)
# A Merkle checkpoint is queued every N transactions (0: only by `manage.py ledger_checkpoint` / `ledger_verify`).
MF_LEDGER_CHECKPOINT_EVERY = env.int("MF_LEDGER_CHECKPOINT_EVERY", 1000, min_value=0)
# Each checkpoint appends a signed anchor (Ed25519) to this append-only file, outside the database; keep a copy
# (or the file itself) where database administrators cannot write. `ledger_verify --anchors` checks against it.
MF_LEDGER_ANCHORS_PATH = Path(env.str("MF_LEDGER_ANCHORS_PATH", str(VAR_DIR / "ledger" / "anchors.jsonl")))
# The anchors' private signing key (PEM), created on first use with mode 0600; the database never holds it.
MF_LEDGER_ANCHOR_KEY = Path(env.str("MF_LEDGER_ANCHOR_KEY", str(VAR_DIR / "ledger" / "anchor-key.pem")))
# Bounds operators put on a model's fee split, in basis points (10,000 = 100%).
MF_LEDGER_OWNER_BP_MAX = env.int("MF_LEDGER_OWNER_BP_MAX", 5_000, min_value=0, max_value=10_000)
MF_LEDGER_CONTRIBUTORS_BP_MIN = env.int("MF_LEDGER_CONTRIBUTORS_BP_MIN", 5_000, min_value=0, max_value=10_000)
MF_LEDGER_PLATFORM_BP_MIN = env.int("MF_LEDGER_PLATFORM_BP_MIN", 500, min_value=0, max_value=10_000)
MF_LEDGER_PLATFORM_BP_MAX = env.int("MF_LEDGER_PLATFORM_BP_MAX", 2_000, min_value=0, max_value=10_000)

# Proof of Attribution: projected gradient size per training row, retries of a failed attribution before its fee is
# settled by row share, the age after which the sweep re-enqueues an unfinished attribution, models kept warm per
# worker process.
MF_ATTRIBUTION_K = env.int("MF_ATTRIBUTION_K", 4096, min_value=64, max_value=65536)
MF_ATTRIBUTION_MAX_RETRIES = env.int("MF_ATTRIBUTION_MAX_RETRIES", 3, min_value=0, max_value=20)
MF_ATTRIBUTION_RETRY_BACKOFF_MAX = env.int("MF_ATTRIBUTION_RETRY_BACKOFF_MAX", 600, min_value=1)
MF_ATTRIBUTION_SWEEP_MINUTES = env.int("MF_ATTRIBUTION_SWEEP_MINUTES", 15, min_value=1)
MF_ATTRIBUTION_CACHE_SIZE = env.int("MF_ATTRIBUTION_CACHE_SIZE", 2, min_value=1, max_value=64)
# Settlements per ledger call: an answer's settlement takes along up to this many - 1 other answers waiting for
# theirs (PostgreSQL; ledger.settlement_post_many), so settlements batch when they queue up. 1: one at a time.
MF_ATTRIBUTION_SETTLE_BATCH = env.int("MF_ATTRIBUTION_SETTLE_BATCH", 32, min_value=1, max_value=128)
# --- Serving (inference worker) ---------------------------------------------------------------------------------
# Adapters kept loaded per inference worker process (LRU), and how long the batcher collects requests.
MF_ADAPTER_CACHE_SIZE = env.int("MF_ADAPTER_CACHE_SIZE", 16, min_value=1, max_value=1024)
MF_BATCH_WINDOW_MS = env.int("MF_BATCH_WINDOW_MS", 10, min_value=0, max_value=1000)
MF_INFERENCE_DEVICE = env.str("MF_INFERENCE_DEVICE", "auto")
if MF_INFERENCE_DEVICE != "auto" and MF_INFERENCE_DEVICE != "cpu" and not MF_INFERENCE_DEVICE.startswith("cuda"):
    raise EnvError("MF_INFERENCE_DEVICE", MF_INFERENCE_DEVICE, "auto, cpu, cuda or cuda:N")
# Tests only: generate in a thread of the web process instead of on the inference queue (same service functions).
MF_INFERENCE_INLINE = env.bool("MF_INFERENCE_INLINE", False)
# How long the web process waits for a worker to start answering, and for a whole answer.
MF_INFERENCE_START_TIMEOUT_SECONDS = env.int("MF_INFERENCE_START_TIMEOUT_SECONDS", 30, min_value=1)
MF_INFERENCE_TIMEOUT_SECONDS = env.int("MF_INFERENCE_TIMEOUT_SECONDS", 300, min_value=1)
# After a streamed answer ends, how long the worker waits for the web process to say how much reached the client.
MF_STREAM_ACK_SECONDS = env.int("MF_STREAM_ACK_SECONDS", 10, min_value=1)
# The most answers one inference worker process generates together (one batched forward pass per token); the worker
# runs this many threads (scripts/run.sh), one per answer in the batch.
MF_INFERENCE_BATCH_SIZE = env.int("MF_INFERENCE_BATCH_SIZE", 16, min_value=1, max_value=256)
# Admission control: once this many answers are waiting for a place in a batch (beyond the MF_INFERENCE_BATCH_SIZE
# each live inference worker is generating), new calls get 429 with Retry-After instead of queueing; 0 refuses any
# call that would wait. Nothing is held for a refused call.
MF_INFERENCE_QUEUE_MAX = env.int("MF_INFERENCE_QUEUE_MAX", 16, min_value=0, max_value=100_000)
MF_INFERENCE_RETRY_AFTER_SECONDS = env.int("MF_INFERENCE_RETRY_AFTER_SECONDS", 2, min_value=1, max_value=3600)
# How text deltas travel from the inference worker to the web process: auto = a Redis stream when CACHE_URL is
# redis://, an append-only file per answer when it is file://; cache = numbered cache keys, polled (as before; any
# CACHE_URL).
MF_STREAM_TRANSPORT = env.str("MF_STREAM_TRANSPORT", "auto")
if MF_STREAM_TRANSPORT not in ("auto", "cache"):
    raise EnvError("MF_STREAM_TRANSPORT", MF_STREAM_TRANSPORT, "auto or cache")
# Workers that do not serve answers (ingest, attribution, settlement, training, exports) lower their CPU priority by
# this much (nice): on cores shared with the inference worker, answers get the CPU first (0: same priority).
MF_BACKGROUND_NICE = env.int("MF_BACKGROUND_NICE", 10, min_value=0, max_value=19)
# --- Ledger: staff credit grants ----------------------------------------------------------------------------------
# The most credit one staff grant may give (whole credits). Granting needs the "Can grant credit to a user"
# permission (ledger.grant_credit); grants above this are refused.
MF_LEDGER_GRANT_MAX_CREDITS = env.int("MF_LEDGER_GRANT_MAX_CREDITS", 1000, min_value=1)
