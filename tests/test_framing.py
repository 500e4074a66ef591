"""The framer: terminators, bounded memory, partial frames. Pure, so hypothesis can hammer it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.framing import Framer

MS = 1_000_000


def test_cr_lf_and_crlf_all_end_a_frame() -> None:
    f = Framer(b"\r")
    frames, errors = f.feed(b"A1\rB2\nC3\r\nD4\n\r", 0)
    assert frames == [b"A1", b"B2", b"C3", b"D4"] and errors == []


def test_crlf_split_across_reads_gives_no_empty_frame() -> None:
    f = Framer(b"\r")
    assert f.feed(b"A1\r", 0) == ([b"A1"], [])
    assert f.feed(b"\nB2\r", 1) == ([b"B2"], [])


def test_other_terminator_keeps_cr_lf_as_data() -> None:
    f = Framer(b"\x03")
    assert f.feed(b"A\r\nB\x03C", 0) == ([b"A\r\nB"], [])


def test_oversized_frame_is_dropped_whole_and_reported_once() -> None:
    f = Framer(b"\r", max_frame=64)
    frames, errors = f.feed(b"X" * 1000, 0)
    frames2, errors2 = f.feed(b"Y" * 1000 + b"\rGOOD\r", 1)
    assert frames == [] and frames2 == [b"GOOD"]
    assert errors == ["frame over 64 bytes without a terminator; dropped"] and errors2 == []
    assert f.buffered == 0


def test_partial_frame_times_out_with_a_reason() -> None:
    f = Framer(b"\r", timeout_ns=500 * MS)
    assert f.feed(b"99M1234", 0) == ([], [])
    assert f.expire(499 * MS) == []
    assert f.expire(500 * MS) == ["partial frame of 7 bytes, no terminator within 0.5 s; dropped"]
    assert f.feed(b"OK\r", 600 * MS) == ([b"OK"], [])


def test_reset_reports_the_lost_partial() -> None:
    f = Framer(b"\r")
    f.feed(b"99M", 0)
    assert f.reset() == ["partial frame of 3 bytes lost when the port closed"]
    assert f.reset() == []


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=40), limit=st.integers(16, 256))
def test_memory_is_bounded_and_frames_are_short(chunks: list[bytes], limit: int) -> None:
    f = Framer(b"\r", max_frame=limit)
    for i, c in enumerate(chunks):
        frames, _ = f.feed(c, i)
        assert f.buffered <= limit
        assert all(0 < len(fr) <= limit and b"\r" not in fr and b"\n" not in fr for fr in frames)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.text("0123456789AZM-", min_size=1, max_size=30), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_any_chunking_gives_the_same_frames(frames: list[str], cuts: list[int]) -> None:
    stream = b"".join(fr.encode() + b"\r\n" for fr in frames)
    f = Framer(b"\r")
    got: list[bytes] = []
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts) + [len(stream)]:
        out, errors = f.feed(stream[last:cut], 0)
        got += out
        assert errors == []
        last = cut
    assert got == [fr.encode() for fr in frames]
