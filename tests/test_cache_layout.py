"""The Redis layout of docs/redis_layout.md, pinned byte for byte."""
import numpy as np
import pytest
from redis.crc import key_slot

from cache import checksum as ck
from cache.layout import Keys, behavior_dtype, check_version, group_by_bucket


def test_key_bytes_are_pinned():
    k = Keys()  # prefix "twin", 256 buckets
    assert k.proj_bucket("20261129-0001", 17) == b"twin:v:20261129-0001:proj:{b17}"
    assert k.proj_buckets("v1")[255] == b"twin:v:v1:proj:{b255}"
    assert k.proj_marker("v1") == b"twin:v:v1:marker"
    assert k.proj_done("v1") == b"twin:v:v1:done"
    assert k.proj_generation("v1") == b"twin:v:v1:gen"
    assert k.proj_changed("v1") == b"twin:v:v1:changed"
    assert k.versions() == b"twin:versions"
    assert k.item_bucket(3) == b"twin:item:{b3}"
    assert k.user_log(123) == b"twin:user:{u123}:log"
    assert k.user_event_ids(123) == b"twin:user:{u123}:eids"
    assert k.user_count(123) == b"twin:user:{u123}:n"
    assert Keys(prefix="t1", n_buckets=8).item_buckets() == [f"t1:item:{{b{b}}}".encode() for b in range(8)]


def test_hash_tags_colocate_what_is_read_or_written_together():
    k = Keys()
    # a user's three keys (one Lua script) share a slot
    assert len({key_slot(x) for x in (k.user_log(9), k.user_event_ids(9), k.user_count(9))}) == 1
    # a bucket's catalog and projections of every version share a slot; buckets spread out
    assert key_slot(k.item_bucket(5)) == key_slot(k.proj_bucket("a", 5)) == key_slot(k.proj_bucket("b", 5))
    assert len({key_slot(x) for x in k.item_buckets()}) > 200


def test_bucket_is_item_id_mod_n_buckets():
    k = Keys(n_buckets=256)
    ids = np.array([0, 255, 256, 2**62 + 1], np.int64)
    assert k.bucket_of(ids).tolist() == [0, 255, 0, (2**62 + 1) % 256]


def test_group_by_bucket_sorts_positions_by_bucket():
    ids = np.array([5, 1, 9, 13, 2], np.int64)  # buckets mod 4: 1, 1, 1, 1, 2
    order, groups = group_by_bucket(ids, 4)
    assert groups == [(1, 0, 4), (2, 4, 5)]
    assert ids[order].tolist() == [5, 1, 9, 13, 2]
    assert group_by_bucket(np.zeros(0, np.int64), 4)[1] == []


def test_behavior_record_is_packed_little_endian():
    dt = behavior_dtype(3)
    assert dt.itemsize == 8 + 8 + 3 * 4
    rec = np.zeros(1, dt)
    rec["item_id"], rec["ts"], rec["cross"] = 0x0102, 7, [1.0, 0.0, -2.0]
    raw = rec.tobytes()
    assert raw[:8] == (0x0102).to_bytes(8, "little") and raw[8:16] == (7).to_bytes(8, "little")
    assert np.frombuffer(raw[16:], "<f4").tolist() == [1.0, 0.0, -2.0]


@pytest.mark.parametrize("bad", ["", "a:b", "{v}", "v 1", "x" * 65, "-lead"])
def test_bad_versions_and_prefixes_are_refused(bad):
    with pytest.raises(ValueError, match="must match"):
        check_version(bad)
    with pytest.raises(ValueError, match="prefix"):
        Keys(prefix=bad)


def test_checksum_is_order_independent_and_byte_sensitive():
    rng = np.random.default_rng(0)
    ids = np.arange(100, dtype=np.int64)
    vals = rng.integers(0, 256, (100, 10), dtype=np.uint8)  # width not a multiple of 8
    perm = rng.permutation(100)
    assert ck.checksum(ids, vals) == ck.checksum(ids[perm], vals[perm])
    assert ck.checksum(ids[:50], vals[:50]) + ck.checksum(ids[50:], vals[50:]) & (2**64 - 1) == ck.checksum(ids, vals)
    flipped = vals.copy()
    flipped[3, 9] ^= 1
    assert ck.checksum(ids, flipped) != ck.checksum(ids, vals)
    swapped = ids.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same bytes under other ids
    assert ck.checksum(swapped, vals) != ck.checksum(ids, vals)
