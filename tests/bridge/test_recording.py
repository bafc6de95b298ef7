"""The recording writer, alone: a pure object over a file (no server, no clock)."""

from __future__ import annotations

import io
import os
import struct
import time
import wave

import numpy as np
import pytest

import codec
from bridge._recording import (
    FLUSH_EVERY_SAMPLES,
    HEADER_BYTES,
    SILENCE,
    SNAP_SAMPLES,
    WINDOW_SAMPLES,
    StereoMulawWriter,
    delete_old_recordings,
    read_mulaw_wav,
    wav_header,
)


def frames(n: int, value: int) -> bytes:
    return bytes([value]) * n


def test_header_is_a_valid_stereo_mulaw_wav_that_declares_what_follows():
    out = io.BytesIO()
    w = StereoMulawWriter(out)
    for _ in range(100):
        w.add_caller(frames(160, 0x10))
    w.close()
    data = out.getvalue()
    assert len(data) == HEADER_BYTES + 2 * 16000
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert data[38:42] == b"fact" and struct.unpack("<I", data[46:50])[0] == 16000
    assert data[50:54] == b"data" and struct.unpack("<I", data[54:58])[0] == 32000
    left, right = read_mulaw_wav(data)
    assert left == frames(16000, 0x10) and right == frames(16000, SILENCE)


def test_heard_pieces_land_back_to_back_at_the_caller_clock_and_real_gaps_stay():
    out = io.BytesIO()
    w = StereoMulawWriter(out)
    w.add_caller(frames(8000, 1))  # 1 s of caller audio
    w.add_heard(frames(800, 2))  # a piece that just finished: started at 8000 - 800
    w.add_caller(frames(790, 1))  # the next mark comes back 10 samples early (jitter)
    w.add_heard(frames(800, 3))  # snapped to right after the first piece
    w.add_caller(frames(4000, 1))  # the buffer ran dry for a while
    w.add_heard(frames(800, 4))  # a real gap before it
    w.close()
    left, right = read_mulaw_wav(out.getvalue())
    assert len(left) == len(right) == 8000 + 790 + 4000
    assert right[7200:8000] == frames(800, 2) and right[8000:8800] == frames(800, 3)
    assert right[:7200] == frames(7200, SILENCE)
    start4 = len(left) - 800
    assert right[start4:] == frames(800, 4) and right[8800:start4] == frames(start4 - 8800, SILENCE)
    assert start4 - 8800 > SNAP_SAMPLES


def test_memory_stays_within_the_window_and_the_header_is_valid_mid_call():
    out = io.BytesIO()
    w = StereoMulawWriter(out)
    for i in range(600):  # 12 s of call, one frame at a time
        w.add_caller(frames(160, 7))
        if i % 5 == 4:
            w.add_heard(frames(800, 9))
        assert len(w._left) <= WINDOW_SAMPLES + FLUSH_EVERY_SAMPLES
    # Not closed (a crash): the file as it is on disk reads as a WAV holding what was flushed.
    data = out.getvalue()
    left, right = read_mulaw_wav(data)
    assert len(left) == w.frames_written >= 12 * 8000 - WINDOW_SAMPLES - FLUSH_EVERY_SAMPLES
    assert set(left) == {7} and set(right) <= {9, SILENCE}


def test_a_piece_confirmed_after_its_place_was_written_goes_first_free_and_is_counted():
    out = io.BytesIO()
    w = StereoMulawWriter(out, window=1000)
    w.add_caller(frames(FLUSH_EVERY_SAMPLES * 2, 1))  # flushes: everything but the last 1000 written
    w.add_heard(frames(3000, 5))
    assert w.late_samples == 2000
    w.close()
    left, right = read_mulaw_wav(out.getvalue())
    assert right[-1000:] == frames(1000, 5) and right[-3000:-1000] == frames(2000, 5)
    assert len(left) == len(right)


def test_heard_audio_past_the_callers_end_is_kept_and_left_padded():
    out = io.BytesIO()
    w = StereoMulawWriter(out)
    w.add_caller(frames(100, 1))
    w.add_heard(frames(800, 2))  # starts at 0 (clamped), runs past the caller's last sample
    w.close()
    left, right = read_mulaw_wav(out.getvalue())
    assert right == frames(800, 2) and left == frames(100, 1) + frames(700, SILENCE)


def test_players_read_it_as_mulaw(tmp_path):
    path = tmp_path / "CA1.wav"
    with open(path, "wb") as f:
        w = StereoMulawWriter(f)
        tone = (3000 * np.sin(np.arange(8000) * 0.1)).astype("<i2").tobytes()
        w.add_caller(codec.ulaw_encode(tone))
        w.close()
    # The stdlib reader knows PCM only: it must recognise and refuse format 7, not misread it.
    with pytest.raises(wave.Error, match="unknown format: 7"):
        wave.open(str(path))
    left, _ = read_mulaw_wav(path.read_bytes())
    decoded = np.frombuffer(codec.ulaw_decode(left), "<i2").astype(float)
    assert np.max(np.abs(decoded - np.frombuffer(tone, "<i2"))) < 200  # μ-law quantisation only


def test_header_of_zero_frames_is_well_formed():
    assert len(wav_header(0)) == HEADER_BYTES
    assert read_mulaw_wav(wav_header(0)) == (b"", b"")


def test_retention_deletes_only_old_recordings(tmp_path):
    old, new, other = (
        tmp_path / ("CA" + "1" * 32 + ".wav"),
        tmp_path / ("CA" + "2" * 32 + ".wav"),
        tmp_path / "x.wav",
    )
    for p in (old, new, other):
        p.write_bytes(wav_header(0))
    past = time.time() - 3 * 86400
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert delete_old_recordings(tmp_path, 2.0) == 1
    assert not old.exists() and new.exists() and other.exists()
    assert delete_old_recordings(tmp_path / "missing", 2.0) == 0
