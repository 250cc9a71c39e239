"""Which store failures are outages: the one place that sorts exceptions from Redis by kind.

An outage (the server cannot be reached, or did not answer in time) is what the service's circuit
breaker is for: it marks Redis down, answers 503 with Retry-After and scores degraded until the
probe sees Redis again. A refusal (the server answered with an error: out of memory, read-only
replica, a script error) is not an outage: Redis is up, the breaker stays closed. Anything that is
neither, e.g. a ValueError from a store's own argument check, is a bug of ours, not Redis's.
"""
from __future__ import annotations

from redis.exceptions import ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# redis-py's AuthenticationError and BusyLoadingError are ConnectionErrors: both are outages here.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, TimeoutError, OSError,
)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the store is unreachable or too slow (trip the breaker, 503)."""
    return isinstance(exc, OUTAGE_ERRORS)


def is_refusal(exc: BaseException) -> bool:
    """True when the store answered with an error (Redis is up: 503 without tripping the breaker)."""
    return isinstance(exc, ResponseError) and not is_outage(exc)
