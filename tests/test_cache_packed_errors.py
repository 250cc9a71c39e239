"""The packed read path raises every error reply by kind, not only ResponseErrors: redis-py's parser
turns "LOADING" (a restarted Redis reading its AOF) into a BusyLoadingError and "NOAUTH" into an
AuthenticationError, both ConnectionErrors. They must reach the caller as such (an outage the service
maps), never be decoded as values (a TypeError, i.e. a 500; seen by `make faults` after a Redis restart)."""
from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError

from cache.errors import is_outage, outage_reason
from cache.hiredis_packing import _raise_first_error


@pytest.mark.parametrize("reply,kind", [("LOADING Redis is loading the dataset in memory", BusyLoadingError),
                                        ("NOAUTH Authentication required.", AuthenticationError),
                                        ("WRONGTYPE Operation against a key holding the wrong kind", ResponseError)])
def test_every_error_reply_is_raised_by_its_kind(reply, kind):
    err = BaseParser.parse_error(reply)  # what the hiredis reader hands back for that reply
    assert type(err) is kind
    with pytest.raises(kind) as raised:
        _raise_first_error([[b"a", None], err, [b"b"]])
    assert "command #2 of 3" in str(raised.value)
    assert is_outage(raised.value) == (kind is not ResponseError)
    if kind is AuthenticationError:
        assert outage_reason(raised.value) == "redis_auth_failed"
