"""μ-law (G.711) encode/decode: bit-exact with the ITU-T G.191 reference, on both implementations."""

from __future__ import annotations

import array
import hashlib
from types import ModuleType

import numpy as np
import pytest

from codec._common import ulaw_compress, ulaw_expand

try:
    import audioop
except ImportError:  # Python >= 3.13 without audioop-lts
    audioop = None  # type: ignore[assignment]

#: Every int16 from -32768 to 32767, ascending, little-endian.
ALL_INT16 = np.arange(-32768, 32768, dtype="<i2").tobytes()
#: SHA-256 of the G.191 ulaw_compress codes of ALL_INT16 (the issue's reference value).
G191_ENCODE_SHA256 = "90c29de505fb68e766118303bd552a16005dcf810873698bee1d8f3b247ce28c"
#: SHA-256 of the PCM16LE G.191 ulaw_expand of codes 0..255 (= audioop.ulaw2lin).
G191_DECODE_SHA256 = "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827"


def _g191_compress_scalar(x: int) -> int:
    """G.191 ulaw_compress for one sample, transcribed statement by statement (test oracle)."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x0008 - segno
    low_nibble = 0x000F - ((absno >> segno) & 0x000F)
    code = (high_nibble << 4) | low_nibble
    return code | 0x0080 if x >= 0 else code


def test_encode_is_bit_exact_with_g191_for_every_int16(impl: ModuleType) -> None:
    codes = impl.ulaw_encode(ALL_INT16)
    assert len(codes) == 65536
    assert hashlib.sha256(codes).hexdigest() == G191_ENCODE_SHA256


def test_encode_table_builder_matches_a_scalar_transcription_of_g191() -> None:
    values = range(-32768, 32768, 7)
    expected = bytes(_g191_compress_scalar(x) for x in values)
    assert ulaw_compress(np.fromiter(values, dtype=np.int32)).tobytes() == expected


def test_decode_is_g191_for_every_code(impl: ModuleType) -> None:
    pcm = impl.ulaw_decode(bytes(range(256)))
    assert hashlib.sha256(pcm).hexdigest() == G191_DECODE_SHA256
    assert pcm == ulaw_expand(np.arange(256)).astype("<i2").tobytes()


@pytest.mark.skipif(audioop is None, reason="audioop not available")
def test_decode_matches_audioop_ulaw2lin(impl: ModuleType) -> None:
    codes = bytes(range(256)) * 3
    assert impl.ulaw_decode(codes) == audioop.ulaw2lin(codes, 2)


@pytest.mark.skipif(audioop is None, reason="audioop not available")
def test_encode_fixes_audioop_at_negative_segment_edges(impl: ModuleType) -> None:
    # audioop.lin2ulaw differs from G.191 on 508 inputs; the codec must not inherit that.
    ours = np.frombuffer(impl.ulaw_encode(ALL_INT16), dtype=np.uint8)
    theirs = np.frombuffer(audioop.lin2ulaw(ALL_INT16, 2), dtype=np.uint8)
    differ = np.flatnonzero(ours != theirs) - 32768
    assert len(differ) == 508
    assert (differ < 0).all()
    for x in differ[:: len(differ) // 16]:
        assert ours[x + 32768] == _g191_compress_scalar(int(x))


def test_decode_then_encode_returns_the_code(impl: ModuleType) -> None:
    codes = bytes(range(256))
    again = impl.ulaw_encode(impl.ulaw_decode(codes))
    # 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF (positive zero).
    assert again == codes[:0x7F] + b"\xff" + codes[0x80:]


def test_encode_depends_only_on_the_sample_shifted_right_by_two(impl: ModuleType) -> None:
    samples = np.arange(-32768, 32768, dtype=np.int32)
    codes = np.frombuffer(impl.ulaw_encode(ALL_INT16), dtype=np.uint8)
    groups = codes.reshape(-1, 4)  # x >> 2 is the same across each aligned group of four
    assert (groups == groups[:, :1]).all()
    assert (samples[::4] >> 2 == np.arange(-8192, 8192)).all()


def test_encode_rejects_odd_length_with_a_clear_message(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="even number of bytes") as excinfo:
        impl.ulaw_encode(b"\x00\x01\x02")
    assert "3" in str(excinfo.value)


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: array.array("h", b), lambda b: np.frombuffer(b, "<i2")],
    ids=["bytes", "bytearray", "memoryview", "array", "ndarray"],
)
def test_accepts_any_bytes_like_object(impl: ModuleType, wrap: object) -> None:
    pcm = np.array([0, 1, -1, 1234, -1234, 32767, -32768, 77], dtype="<i2").tobytes()
    expected = bytes(_g191_compress_scalar(int(x)) for x in np.frombuffer(pcm, "<i2"))
    assert impl.ulaw_encode(wrap(pcm)) == expected  # type: ignore[operator]
    codes = bytes(range(0, 256, 17))  # 16 bytes: also a valid int16 buffer for the array wrappers
    expected_pcm = ulaw_expand(np.frombuffer(codes, np.uint8)).astype("<i2").tobytes()
    assert impl.ulaw_decode(wrap(codes)) == expected_pcm  # type: ignore[operator]


def test_empty_input_gives_empty_output(impl: ModuleType) -> None:
    assert impl.ulaw_encode(b"") == b""
    assert impl.ulaw_decode(b"") == b""
    assert isinstance(impl.ulaw_encode(b""), bytes)


@pytest.mark.parametrize("bad", ["text", None, 5, 3.0])
def test_rejects_objects_that_are_not_bytes_like(impl: ModuleType, bad: object) -> None:
    with pytest.raises(TypeError):
        impl.ulaw_encode(bad)
    with pytest.raises(TypeError):
        impl.ulaw_decode(bad)


def test_rejects_non_contiguous_buffers(impl: ModuleType) -> None:
    strided = memoryview(bytes(range(64)))[::2]
    with pytest.raises(BufferError):
        impl.ulaw_decode(strided)
    with pytest.raises(BufferError):
        impl.ulaw_encode(strided)
