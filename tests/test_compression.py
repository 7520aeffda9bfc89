"""Compression in the pure core: which clients accept gzip, and pieces of deflate that
make one gzip stream whatever their order, each message inflating as it arrives."""

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from public_service import (
    GZIP_HEADER,
    Position,
    Snapshot,
    Wire,
    accepts_gzip,
    deflate_piece,
    gzip_end,
    stored_piece,
)


@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip", True), ("gzip, deflate, br, zstd", True), ("GZIP", True), ("deflate, gzip;q=0.5", True),
    ("x-gzip", True), ("*", True), ("br;q=1, *;q=0.1", True),
    (None, False), ("", False), ("identity", False), ("br, deflate", False), ("gzip;q=0", False),
    ("gzip;q=0, *", False), ("*;q=0", False), ("gzip;q=nope", False), ("gzipped", False),
    ("gzip;level=1;q=0", False), ("gzip;level=1;q=0.2", True), ("x-gzip;q=0", False),
    (",gzip", True), ("x-gzip;q=0, gzip", True),   # an empty list element; gzip found twice
])
def test_accept_encoding(header, gzip):
    assert accepts_gzip(header) is gzip


def inflate_as_it_comes(pieces: list[bytes]) -> list[bytes]:
    """What a gzip decoder (a browser's, curl's) gives back after each piece arrives."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return [decoder.decompress(piece) for piece in pieces] + [decoder.flush()]


messages = st.lists(st.binary(max_size=3000) | st.text(max_size=500).map(str.encode), max_size=12)


@settings(max_examples=300)
@given(messages, st.lists(st.booleans(), max_size=12))
def test_pieces_make_a_gzip_stream_that_inflates_message_by_message(sent, stored):
    pieces = [stored_piece(m) if i < len(stored) and stored[i] else deflate_piece(m)
              for i, m in enumerate(sent)]
    stream = [GZIP_HEADER, *pieces, gzip_end(zlib.crc32(b"".join(sent)), len(b"".join(sent)))]
    assert gzip.decompress(b"".join(stream)) == b"".join(sent)
    arrived = inflate_as_it_comes(stream)
    assert arrived[1:-2] == sent                      # each message whole, as its piece arrives
    assert arrived[-2:] == [b"", b""]


def test_a_stored_piece_splits_what_one_block_cannot_hold():
    data = bytes(range(256)) * 600                     # 153,600 bytes: three stored blocks
    assert gzip.decompress(GZIP_HEADER + stored_piece(data) + gzip_end(zlib.crc32(data), len(data))) == data


def test_wire_pieces_are_made_once():
    wire = Wire(b"event: ping\ndata: {}\n\n")
    assert wire.piece is wire.piece
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(wire.piece) == wire.plain
    assert Wire(b"x" * 10, stored=True).piece == b"\x00\x0a\x00\xf5\xff" + b"x" * 10


def test_a_wire_piece_is_the_smaller_of_compressed_and_stored():
    repetitive, incompressible = b"data: " + b"available " * 200, bytes(range(256))
    assert len(Wire(repetitive).piece) < len(repetitive) // 5
    assert Wire(incompressible).piece == stored_piece(incompressible)


def test_the_snapshots_gzip_body_is_its_body():
    snapshot = Snapshot.build("demo", Position("e", 1), {f"U{n}": "available" for n in range(500)})
    assert gzip.decompress(snapshot.gzip_body) == snapshot.body
    assert snapshot.gzip_body is snapshot.gzip_body
    assert len(snapshot.gzip_body) * 5 < len(snapshot.body)
