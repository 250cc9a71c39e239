"""Which store failures are outages: the one place that sorts exceptions from Redis by kind.

An outage (the server cannot be reached, or did not answer in time) is what the service's circuit
breaker is for: it marks Redis down, answers 503 with Retry-After and scores degraded until the
probe sees Redis again. A refusal (the server answered with an error: out of memory, read-only
replica, a script error) is not an outage: Redis is up, the breaker stays closed. Anything that is
neither, e.g. a ValueError from a store's own argument check, is a bug of ours, not Redis's.

`outage_reason` names an outage for readiness and start-up messages: a wrong password or a TLS
handshake that fails is reported as such (`redis_auth_failed`, `redis_tls_failed`), since waiting
will not fix it; everything else is `redis_unavailable`. `describe` is the one-line form for humans.
Neither ever includes the URL (which may carry the password).
"""
from __future__ import annotations

import ssl

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    ClusterDownError,
    NoPermissionError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# redis-py's AuthenticationError and BusyLoadingError are ConnectionErrors: both are outages here.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, TimeoutError, OSError,
)
AUTH_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError, AuthorizationError, AuthenticationWrongNumberOfArgsError, NoPermissionError,
)
_HINTS = {
    "redis_auth_failed": "Redis refused the credentials (check the user and password in REDIS_URL)",
    "redis_tls_failed": "the TLS handshake with Redis failed (check rediss:// and its ssl_* options)",
    "redis_unavailable": "Redis is unreachable",
}


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the store is unreachable or too slow (trip the breaker, 503)."""
    return isinstance(exc, OUTAGE_ERRORS)


def is_refusal(exc: BaseException) -> bool:
    """True when the store answered with an error (Redis is up: 503 without tripping the breaker)."""
    return isinstance(exc, ResponseError) and not is_outage(exc)


def _chain(exc: BaseException):
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def outage_reason(exc: BaseException) -> str:
    """'redis_auth_failed', 'redis_tls_failed' or 'redis_unavailable' for a failure to reach Redis."""
    chain = list(_chain(exc))
    if any(isinstance(e, AUTH_ERRORS) for e in chain):
        return "redis_auth_failed"
    if any(isinstance(e, ssl.SSLError) or "SSL" in str(e) for e in chain):
        return "redis_tls_failed"
    return "redis_unavailable"


def describe(exc: BaseException) -> str:
    """One line for a human: what went wrong and what to check (no URL, no password)."""
    reason = outage_reason(exc)
    return f"{_HINTS[reason]}: {type(exc).__name__}: {str(exc).strip() or 'no detail'}"
