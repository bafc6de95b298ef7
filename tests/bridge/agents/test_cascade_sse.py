"""The cascade's stream codecs without sockets: server-sent events and chat-completion chunks.

The recorded stream below is shaped like OpenAI's (role chunk, content chunks, a finish chunk, ``[DONE]``),
with a keep-alive comment; a property test cuts it at every possible place.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.agents.cascade import (
    CascadeError,
    ChatDone,
    ChatStreamDecoder,
    SseDone,
    SseEvent,
    SseParser,
    TextDelta,
    ToolCall,
)
from bridge.agents.cascade._chat import encode_chunk
from bridge.agents.cascade._sse import encode_comment, encode_data


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    return encode_data(encode_chunk("chatcmpl-1", "gpt-4o-mini", 1700000000, delta, finish))


RECORDED = (
    _chunk({"role": "assistant", "content": ""})
    + encode_comment("keep-alive")
    + _chunk({"content": "Hé"})
    + _chunk({"content": "llo. "})
    + _chunk({"content": "Bye…"})
    + _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                              "function": {"name": "end_call", "arguments": ""}}]})
    + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"achieved": tr'}}]})
    + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ue, "summary": "done"}'}}]})
    + _chunk({}, "tool_calls")
    + encode_data("[DONE]")
)  # fmt: skip
EXPECTED = [
    TextDelta("Hé"),
    TextDelta("llo. "),
    TextDelta("Bye…"),
    ToolCall("call_1", "end_call", {"achieved": True, "summary": "done"}),
    ChatDone("tool_calls"),
]


def decode(chunks: list[bytes]) -> list[object]:
    parser, decoder, out = SseParser(), ChatStreamDecoder(), []
    for chunk in chunks:
        for event in parser.feed(chunk):
            out += decoder.end() if isinstance(event, SseDone) else decoder.feed(event.data)
    for event in parser.end():
        assert isinstance(event, SseDone)
        out += decoder.end()
    assert parser.done
    return out


def test_a_recorded_stream_in_one_piece() -> None:
    assert decode([RECORDED]) == EXPECTED


def test_a_recorded_stream_byte_by_byte() -> None:
    assert decode([RECORDED[i : i + 1] for i in range(len(RECORDED))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=30))
def test_chunk_boundaries_anywhere_change_nothing(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(RECORDED)]
    assert decode([RECORDED[a:b] for a, b in zip(points, points[1:], strict=False)]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = RECORDED.replace(b"\n", newline)
    assert decode([stream]) == EXPECTED
    # CR at the end of a chunk, LF at the start of the next: one line break, not two.
    middle = stream.index(newline) + 1
    assert decode([stream[:middle], stream[middle:]]) == EXPECTED


def test_fields_comments_multiline_data_and_event_types() -> None:
    parser = SseParser()
    events = parser.feed(
        b": hello\nevent: note\nid: 7\nretry: 100\ndata: a\ndata:b\n\ndata\n\n\n\ndata: [DONE]\n\n"
    )
    # "data" without a colon is the field with an empty value: one event with empty data.
    assert events == [SseEvent("a\nb", "note"), SseEvent(""), SseDone()]
    assert parser.done
    assert parser.feed(b"data: after the end\n\n") == []


@pytest.mark.parametrize(
    "bad",
    [b"<html><body>502</body></html>\n", b"\xff\xfe data\n", b"dat a: x\n", b"HTTP/1.1 200 OK\r\n"],
)
def test_lines_that_are_not_an_event_stream_are_malformed(bad: bytes) -> None:
    with pytest.raises(CascadeError) as caught:
        SseParser("llm").feed(bad)
    assert (caught.value.stage, caught.value.kind) == ("llm", "malformed")


def test_an_endless_line_is_refused_not_buffered() -> None:
    parser = SseParser()
    parser.feed(b"data: " + b"x" * 1000)
    with pytest.raises(CascadeError) as caught:
        for _ in range(1100):
            parser.feed(b"x" * 1024)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        ('{"id": "x"}', "malformed"),
        ('{"choices": [{"index": 0, "delta": {"content": 5}}]}', "malformed"),
        ('{"choices": [{"index": 0, "delta": {"tool_calls": {"a": 1}}}]}', "malformed"),
        ('{"error": {"message": "overloaded", "type": "server_error"}}', "http_5xx"),
    ],
)
def test_chunks_we_cannot_use(data: str, kind: str) -> None:
    with pytest.raises(CascadeError) as caught:
        ChatStreamDecoder().feed(data)
    assert (caught.value.stage, caught.value.kind) == ("llm", kind)


def test_tool_call_arguments_that_are_not_an_object() -> None:
    decoder = ChatStreamDecoder()
    piece = {"index": 0, "id": "c", "function": {"name": "end_call", "arguments": '{"oops'}}
    decoder.feed(orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}).decode())
    with pytest.raises(CascadeError) as caught:
        decoder.end()
    assert caught.value.kind == "malformed"


def test_usage_chunks_and_other_choices_are_ignored() -> None:
    decoder = ChatStreamDecoder()
    assert decoder.feed('{"choices": [], "usage": {"total_tokens": 9}}') == []
    assert decoder.feed('{"choices": [{"index": 1, "delta": {"content": "other"}}]}') == []
    with pytest.raises(CascadeError) as caught:
        decoder.end()
    assert caught.value.kind == "empty"


def test_encode_data_refuses_line_breaks() -> None:
    with pytest.raises(ValueError):
        encode_data("a\nb")
