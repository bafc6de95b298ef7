"""The cascade's settings from the environment, and its audio helpers (no I/O)."""

from __future__ import annotations

import io
import wave

import pytest

from bridge._errors import ConfigError
from bridge.agents.cascade import (
    SPEECH_RATE,
    CascadeSettings,
    decode_wav,
    encode_wav,
    speech_ms,
    synthesize,
    tokenize,
)

KEY = "sk-test-1234567890abcdef"


def test_defaults_are_openais_endpoints_with_the_openai_key() -> None:
    settings = CascadeSettings.from_env({"OPENAI_API_KEY": KEY})
    assert settings.stt_url == "https://api.openai.com/v1/audio/transcriptions"
    assert settings.llm_url == "https://api.openai.com/v1/chat/completions"
    assert settings.tts_url == "https://api.openai.com/v1/audio/speech"
    assert (settings.stt_model, settings.llm_model, settings.tts_model, settings.tts_voice) == (
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini",
        "gpt-4o-mini-tts",
        "alloy",
    )
    assert settings.api_key.reveal() == KEY
    assert (settings.idle_checkin_s, settings.idle_hangup_s, settings.max_call_s) == (8.0, 7.0, 900.0)
    assert settings.llm_early_start and settings.stt_rate == 16000


def test_every_variable_is_read_and_the_cascade_key_wins() -> None:
    env = {
        "CASCADE_STT_URL": "http://127.0.0.1:8000/v1/audio/transcriptions",
        "CASCADE_LLM_URL": "http://localhost:11434/v1/chat/completions",
        "CASCADE_TTS_URL": "http://127.0.0.1:8880/v1/audio/speech",
        "CASCADE_STT_MODEL": "Systran/faster-whisper-small",
        "CASCADE_LLM_MODEL": "llama3.2:3b",
        "CASCADE_TTS_MODEL": "kokoro",
        "CASCADE_TTS_VOICE": "af_heart",
        "CASCADE_API_KEY": "local-key",
        "OPENAI_API_KEY": KEY,
        "CASCADE_STT_RATE": "8000",
        "CASCADE_REQUEST_TIMEOUT_S": "4.5",
        "CASCADE_IDLE_CHECKIN_S": "5",
        "CASCADE_IDLE_HANGUP_S": "0",
        "CASCADE_MAX_CALL_S": "120",
        "CASCADE_LLM_EARLY_START": "off",
    }
    settings = CascadeSettings.from_env(env)
    assert settings.llm_url == "http://localhost:11434/v1/chat/completions"
    assert (settings.llm_model, settings.tts_voice, settings.stt_rate) == ("llama3.2:3b", "af_heart", 8000)
    assert settings.api_key.reveal() == "local-key"
    assert (settings.request_timeout_s, settings.idle_checkin_s, settings.idle_hangup_s) == (4.5, 5.0, 0.0)
    assert settings.max_call_s == 120.0 and not settings.llm_early_start


def test_a_local_server_needs_no_key() -> None:
    url = "http://127.0.0.1:9/v1/"
    env = {"CASCADE_STT_URL": url + "audio/transcriptions", "CASCADE_LLM_URL": url + "chat/completions",
           "CASCADE_TTS_URL": url + "audio/speech"}  # fmt: skip
    assert not CascadeSettings.from_env(env).api_key


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "CASCADE_API_KEY"),  # OpenAI's endpoints without a key
        ({"CASCADE_LLM_URL": "ftp://x/v1"}, "CASCADE_LLM_URL"),
        ({"CASCADE_TTS_URL": "http://user:pw@host/v1/audio/speech"}, "CASCADE_TTS_URL"),
        ({"CASCADE_STT_URL": "https://host/v1/audio/transcriptions?key=1"}, "CASCADE_STT_URL"),
        ({"CASCADE_LLM_MODEL": "two words"}, "CASCADE_LLM_MODEL"),
        ({"CASCADE_STT_RATE": "44100"}, "CASCADE_STT_RATE"),
        ({"CASCADE_IDLE_CHECKIN_S": "soon"}, "CASCADE_IDLE_CHECKIN_S"),
        ({"CASCADE_MAX_CALL_S": "-1"}, "CASCADE_MAX_CALL_S"),
        ({"CASCADE_REQUEST_TIMEOUT_S": "nan"}, "CASCADE_REQUEST_TIMEOUT_S"),
        ({"CASCADE_LLM_EARLY_START": "maybe"}, "CASCADE_LLM_EARLY_START"),
        ({"CASCADE_API_KEY": "sk-has a space"}, "CASCADE_API_KEY"),
    ],
)
def test_bad_values_name_their_variable_and_never_the_key(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CascadeSettings.from_env({"OPENAI_API_KEY": KEY, **env} if variable != "CASCADE_API_KEY" else env)
    assert caught.value.variable == variable and variable in str(caught.value)
    assert KEY not in str(caught.value) and "sk-has a space" not in str(caught.value)


def test_the_key_is_redacted_in_repr() -> None:
    settings = CascadeSettings.from_env({"CASCADE_API_KEY": KEY})
    assert KEY not in repr(settings) and KEY not in str(settings.redacted())
    assert "api_key='********'" in repr(settings)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_wav_round_trip(rate: int) -> None:
    pcm = bytes(range(256)) * 10
    audio = decode_wav(encode_wav(pcm, rate))
    assert (audio.rate, audio.pcm) == (rate, pcm)
    assert audio.duration_ms == pytest.approx(len(pcm) / 2 / rate * 1000)


def test_wav_refuses_what_the_endpoint_would_not_take() -> None:
    with pytest.raises(ValueError):
        encode_wav(b"\x00" * 10, 44100)
    with pytest.raises(ValueError):
        encode_wav(b"\x00" * 11, 16000)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8000)
        writer.writeframes(b"\x80" * 100)
    for bad in (out.getvalue(), b"", b"RIFF", encode_wav(b"\x00" * 400, 8000)[:-100]):
        with pytest.raises(ValueError):
            decode_wav(bad)


def test_speech_is_deterministic_and_proportional_to_the_text() -> None:
    short, long = "Hi there.", "Hi there. This is a much longer sentence to speak."
    assert synthesize(short) == synthesize(short)
    for text in (short, long):
        assert len(synthesize(text)) / 2 / SPEECH_RATE * 1000 == pytest.approx(speech_ms(text), abs=1)
    assert speech_ms(long) > 3 * speech_ms(short)
    assert synthesize("") == b"" and synthesize("Hello") != synthesize("World")


def test_tokens_join_back_to_the_text() -> None:
    text = "Two large pepperonis, please. Thanks!"
    tokens = tokenize(text)
    assert "".join(tokens) == text and all(len(t.strip()) <= 4 for t in tokens)


def test_the_configuration_reads_the_cascade_and_needs_its_key_only_when_it_answers_calls() -> None:
    from bridge._config import VARIABLES, load_config

    env = {"AGENT": "cascade", "CASCADE_API_KEY": KEY, "CASCADE_MAX_CALL_S": "60"}
    config = load_config(env, dotenv_path=None)
    assert config.cascade.max_call_s == 60.0 and config.cascade.api_key.reveal() == KEY
    assert config.cascade.api_key in config.secrets()
    assert KEY not in repr(config) and KEY not in str(config.redacted())
    assert "CASCADE_LLM_EARLY_START" in VARIABLES and "CASCADE_API_KEY" in VARIABLES
    assert not load_config({}, dotenv_path=None).cascade.api_key  # AGENT=speakr: no key needed
    with pytest.raises(ConfigError) as caught:
        load_config({"AGENT": "cascade"}, dotenv_path=None)
    assert caught.value.variable == "CASCADE_API_KEY"
