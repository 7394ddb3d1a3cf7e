"""The batch chunk paths (seal_many, open_into) and the random-read one (open_one_into)
against the one-chunk ones, in both modes: the same records, and every failure located at
the right chunk."""

import os

import pytest

from veil.volume.chunks import TAG, ChunkCodec
from veil.volume.errors import IntegrityError

CHUNK = 4096


def codec(mode: str) -> ChunkCodec:
    return ChunkCodec(mode == "encrypted", os.urandom(16), os.urandom(16), os.urandom(32))


@pytest.fixture(params=["encrypted", "authenticated"])
def sealed(request: pytest.FixtureRequest) -> tuple[ChunkCodec, bytes, bytearray, bytearray]:
    """Chunks 3..9 of a file whose last chunk is short: (codec, plaintext, records, tags)."""
    c = codec(request.param)
    plain = os.urandom(6 * CHUNK + 1000)
    pieces = [memoryview(plain)[at : at + CHUNK] for at in range(0, len(plain), CHUNK)]
    records, tags = c.seal_many(3, list(pieces))
    table = bytearray(3 * TAG) + bytearray(tags)
    return c, plain, bytearray(records), table


def open_batch(c: ChunkCodec, records: bytes, table: bytearray, length: int) -> bytes:
    out = bytearray(length)
    c.open_into(3, records, bytes(table[3 * TAG :]), CHUNK, 3 * CHUNK + length, "/f", memoryview(out))
    return bytes(out)


def test_a_batch_opens_chunk_by_chunk_and_whole(
    sealed: tuple[ChunkCodec, bytes, bytearray, bytearray],
) -> None:
    c, plain, records, table = sealed
    assert open_batch(c, bytes(records), table, len(plain)) == plain
    stride = CHUNK + c.overhead
    for i in range(7):
        record = bytes(records[i * stride : (i + 1) * stride])
        expected = plain[i * CHUNK : (i + 1) * CHUNK]
        assert c.open(3 + i, record, table[(3 + i) * TAG : (4 + i) * TAG], "/f") == expected
    with pytest.raises(IntegrityError, match="chunk 4 "):  # a record read at another index
        c.open(4, bytes(records[:stride]), table[3 * TAG : 4 * TAG], "/f")


def test_a_flipped_bit_is_named_by_its_chunk(sealed: tuple[ChunkCodec, bytes, bytearray, bytearray]) -> None:
    c, plain, records, table = sealed
    stride = CHUNK + c.overhead
    records[5 * stride + 100] ^= 1  # chunk 3 + 5, in its body: its tag still matches the table
    with pytest.raises(IntegrityError, match="/f: chunk 8 fails authentication"):
        open_batch(c, bytes(records), table, len(plain))


def test_a_stale_chunk_is_named_by_its_chunk(sealed: tuple[ChunkCodec, bytes, bytearray, bytearray]) -> None:
    c, plain, records, table = sealed
    table[4 * TAG] ^= 1  # the table says chunk 4 was rewritten since
    with pytest.raises(IntegrityError, match="/f: chunk 4 is not the current version"):
        open_batch(c, bytes(records), table, len(plain))


def test_a_short_batch_is_refused(sealed: tuple[ChunkCodec, bytes, bytearray, bytearray]) -> None:
    c, plain, records, table = sealed
    with pytest.raises(IntegrityError, match="chunk 9 is truncated"):
        open_batch(c, bytes(records[:-1]), table, len(plain))


def test_nonces_are_never_reused() -> None:
    c = codec("encrypted")
    plain = [os.urandom(CHUNK) for _ in range(8)]
    first, _ = c.seal_many(0, list(plain))
    again, _ = c.seal_many(0, list(plain))
    stride = CHUNK + c.overhead
    nonces = {bytes(r[at : at + 12]) for r in (first, again) for at in range(0, len(r), stride)}
    assert len(nonces) == 16


def open_one(c: ChunkCodec, records: bytearray, table: bytearray, i: int) -> bytes:
    stride = CHUNK + c.overhead
    out = bytearray(CHUNK)
    c.open_one_into(3 + i, bytes(records[i * stride : (i + 1) * stride]), table, "/f", memoryview(out))
    return bytes(out)


def test_the_random_read_path_opens_one_chunk(sealed: tuple[ChunkCodec, bytes, bytearray, bytearray]) -> None:
    c, plain, records, table = sealed
    assert [open_one(c, records, table, i) for i in range(6)] == [
        plain[i * CHUNK : (i + 1) * CHUNK] for i in range(6)
    ]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("body", "chunk 5 fails authentication"),
        ("table", "chunk 5 is not the current version"),
        ("swap", "chunk 5 "),  # chunk 6's record, whose tag the table holds for chunk 6
    ],
)
def test_the_random_read_path_refuses_what_the_others_refuse(
    sealed: tuple[ChunkCodec, bytes, bytearray, bytearray], damage: str, reason: str
) -> None:
    c, _, records, table = sealed
    stride = CHUNK + c.overhead
    if damage == "body":
        records[2 * stride + 100] ^= 1
    elif damage == "table":
        table[5 * TAG] ^= 1
    else:
        records[2 * stride : 3 * stride] = records[3 * stride : 4 * stride]
    with pytest.raises(IntegrityError, match=f"/f: {reason}"):
        open_one(c, records, table, 2)
