"""Sentences out of a streamed answer, and the history that keeps only what the caller heard (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.agents.cascade import Conversation, SentenceSplitter, SpokenSentence, heard_text, split_sentences


def stream(text: str, step: int) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.feed(text[i : i + step])
    return out + splitter.flush()


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        (
            "Mr. Smith paid $3.50 for it. Dr. Who did not!",
            ["Mr. Smith paid $3.50 for it.", "Dr. Who did not!"],
        ),
        ("It is 3.5 km away. Go.", ["It is 3.5 km away.", "Go."]),
        ("Use e.g. a fork, i.e. not a knife. Fine?", ["Use e.g. a fork, i.e. not a knife.", "Fine?"]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Wait... what?! Really.", ["Wait...", "what?!", "Really."]),
        ("See example.com now. Ok", ["See example.com now.", "Ok"]),
        ("1. Open the box. 2. Take it.", ["1. Open the box.", "2. Take it."]),
        ("Line one\nLine two", ["Line one", "Line two"]),
        ("No end at all", ["No end at all"]),
        ("  ", []),
    ],
)
def test_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_a_sentence_is_given_as_soon_as_it_is_sure() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Sure thing") == []
    assert splitter.feed(".") == []  # could still be "Sure thing.com"
    assert splitter.feed(" Your") == ["Sure thing."]
    assert splitter.feed(" total is 3.") == []
    assert splitter.feed("5 dollars.") == []
    assert splitter.feed("\n") == ["Your total is 3.5 dollars."]
    assert splitter.flush() == []


def test_a_run_on_is_cut_at_a_clause() -> None:
    text = "and then " * 20 + "we went home, and " + "so on " * 30
    pieces = stream(text, 7)
    assert all(len(p) <= 250 for p in pieces) and len(pieces) >= 2
    assert " ".join(pieces).split() == text.split()


@given(st.text(alphabet="ab .!?,\n3Mr", max_size=300), st.integers(min_value=1, max_value=20))
def test_streaming_in_any_steps_gives_the_same_sentences_and_loses_nothing(text: str, step: int) -> None:
    assert stream(text, step) == split_sentences(text)
    visible = "".join("".join(stream(text, step)).split())
    assert visible == "".join(text.split())


SENTENCES = [
    SpokenSentence("Sure, two large pepperonis.", 2000),
    SpokenSentence("That will be twenty dollars and fifty cents.", 3000),
    SpokenSentence("Anything else?", 1000),
]


@pytest.mark.parametrize(
    ("heard_ms", "text"),
    [
        (0, ""),
        (1999, "Sure, two large"),  # the last word in flight is not claimed
        (2000, "Sure, two large pepperonis."),
        (2100, "Sure, two large pepperonis."),  # under one word of the next sentence
        (3500, "Sure, two large pepperonis. That will be twenty"),
        (5000, "Sure, two large pepperonis. That will be twenty dollars and fifty cents."),
        (99999, "Sure, two large pepperonis. That will be twenty dollars and fifty cents. Anything else?"),
    ],
)
def test_heard_text_keeps_whole_heard_sentences_and_a_word_prefix_of_the_one_in_flight(
    heard_ms: int, text: str
) -> None:
    assert heard_text(SENTENCES, heard_ms) == text


@given(st.floats(min_value=0, max_value=7000))
def test_heard_text_is_a_prefix_that_grows_with_the_heard_time(heard_ms: float) -> None:
    full = " ".join(s.text for s in SENTENCES)
    now, later = heard_text(SENTENCES, heard_ms), heard_text(SENTENCES, heard_ms + 250)
    assert full.startswith(now) and full.startswith(later.rstrip(" ,")) and len(later) >= len(now)


def test_the_conversation_keeps_the_heard_part_and_stays_bounded() -> None:
    conversation = Conversation("Take pizza orders.", max_messages=4)
    conversation.add_user("Two pepperonis.")
    heard = conversation.add_interrupted(SENTENCES, 3500)
    assert heard == "Sure, two large pepperonis. That will be twenty"
    conversation.add_user("Make it three.")
    conversation.add_tool_call("call_1", "end_call", {"achieved": True}, "ok")
    messages = conversation.messages()
    assert messages[0] == {"role": "system", "content": "Take pizza orders."}
    assert [m["role"] for m in messages[1:]] == ["assistant", "user", "assistant", "tool"]
    assert messages[1]["content"] == heard
    assert messages[3]["tool_calls"][0]["function"] == {"name": "end_call", "arguments": '{"achieved":true}'}
    conversation.add_user("x")
    assert conversation.messages()[1]["role"] != "tool"  # never an orphan tool result first
    assert conversation.add_interrupted(SENTENCES, 0) == "" and len(conversation) <= 4
