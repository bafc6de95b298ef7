"""The cascade agent's parts: speech-to-text → LLM → text-to-speech over OpenAI-compatible HTTP APIs.

Theory of operation
-------------------
A cascade answers a caller with three ordinary HTTP endpoints that OpenAI, Groq and local servers
(speaches, vLLM, Ollama, Kokoro-FastAPI) all speak, configured by :class:`CascadeSettings`
(``CASCADE_*``). For each turn:

1. the caller's utterance (PCM16 from our VAD's turn detection) is written as a WAV at 8 or 16 kHz
   (:func:`encode_wav`) and sent to ``/v1/audio/transcriptions`` (:meth:`CascadeClient.transcribe`);
2. the transcript joins the :class:`Conversation` and goes to ``/v1/chat/completions`` as a streamed
   request (:meth:`CascadeClient.chat_stream`); the server-sent events are parsed without I/O
   (:class:`SseParser`, :class:`ChatStreamDecoder`) into text deltas, tool calls (``end_call``) and the end;
3. the deltas go through a :class:`SentenceSplitter`, and each complete sentence goes at once to
   ``/v1/audio/speech`` (:meth:`CascadeClient.speech_stream`, PCM16 24 kHz), so the first sentence plays
   while the model is still writing the rest;
4. when the caller interrupts, the requests in flight are cancelled (Trio cancel scopes close their
   connections) and the assistant's turn enters the history cut to what the caller heard
   (:func:`heard_text`: whole heard sentences plus the heard share of the one in flight, at a word).

Every failure is a :class:`CascadeError` with a ``stage`` (``stt``/``llm``/``tts``) and a fixed ``kind``,
for a spoken apology or a retry and a metric; no key reaches an error, a log line or a repr.

:class:`CascadeServer` is a faithful emulator of the three endpoints on 127.0.0.1 (scripted transcripts
and replies, realistic pacing, the failures real servers have), so the demo and the tests run offline.
The leg that drives a call with these parts is :mod:`bridge.agents.cascade._leg` (``CascadeLeg``, imported
by :func:`bridge.agents.make_leg` only when a call asks for the cascade); :func:`demo_server` and
:func:`demo_caller_audio` script a short offline demo call with an interruption.
"""

from __future__ import annotations

from bridge.agents.cascade._audio import SPEECH_RATE, WavAudio, decode_wav, encode_wav, speech_ms, synthesize
from bridge.agents.cascade._chat import ChatDone, ChatEvent, ChatStreamDecoder, TextDelta, ToolCall
from bridge.agents.cascade._client import CascadeClient
from bridge.agents.cascade._demo_script import (
    DEMO_CALLER_SPEECH,
    DEMO_PACING,
    DEMO_REPLIES,
    DEMO_TRANSCRIPTS,
    demo_caller_audio,
    demo_server,
    demo_settings,
    turn_report,
)
from bridge.agents.cascade._emulator import DEFAULT_API_KEY, CascadeServer
from bridge.agents.cascade._emulator_data import (
    ChatReply,
    ChatRequest,
    SpeechRequest,
    SttRequest,
    tokenize,
)
from bridge.agents.cascade._errors import CASCADE_ERROR_KINDS, STAGES, CascadeError
from bridge.agents.cascade._history import Conversation, SpokenSentence, heard_text
from bridge.agents.cascade._sentences import SentenceSplitter, split_sentences
from bridge.agents.cascade._settings import CascadeSettings
from bridge.agents.cascade._sse import SseDone, SseEvent, SseParser

__all__ = [
    "CASCADE_ERROR_KINDS",
    "DEFAULT_API_KEY",
    "DEMO_CALLER_SPEECH",
    "DEMO_PACING",
    "DEMO_REPLIES",
    "DEMO_TRANSCRIPTS",
    "SPEECH_RATE",
    "STAGES",
    "CascadeClient",
    "CascadeError",
    "CascadeServer",
    "CascadeSettings",
    "ChatDone",
    "ChatEvent",
    "ChatReply",
    "ChatRequest",
    "ChatStreamDecoder",
    "Conversation",
    "SentenceSplitter",
    "SpeechRequest",
    "SpokenSentence",
    "SseDone",
    "SseEvent",
    "SseParser",
    "SttRequest",
    "TextDelta",
    "ToolCall",
    "WavAudio",
    "decode_wav",
    "demo_caller_audio",
    "demo_server",
    "demo_settings",
    "encode_wav",
    "heard_text",
    "speech_ms",
    "split_sentences",
    "synthesize",
    "tokenize",
    "turn_report",
]
