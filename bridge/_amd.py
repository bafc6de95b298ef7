"""Answering-machine detection for calls we place: Twilio's asynchronous AMD, and what its result does.

Theory of operation
-------------------
``POST /calls`` with ``"machine_detection": "hangup"`` or ``"voicemail"`` asks Twilio for asynchronous AMD
(``MachineDetection`` = ``Enable``, or ``DetectMessageEnd`` to hear the greeting out; ``AsyncAmd=true``;
``AsyncAmdStatusCallback`` = ``PUBLIC_URL/twilio/amd``) and puts ``<Parameter name="bridge_amd">`` on the
stream. Twilio connects the stream as soon as the call is answered; the call runner opens the agent's socket
but holds its ``start`` (so the agent cannot speak) until the call's observer opens its gate. Meanwhile the
caller's audio waits in the uplink framer, which keeps its most recent second (the bound).

Twilio posts the result (``AnsweredBy``: ``human``, ``unknown``, ``machine_start``, ``machine_end_beep``,
``machine_end_silence``, ``machine_end_other``, ``fax``; ``MachineDetectionDuration`` in ms), signed like
every webhook, to any worker. :func:`handle_amd_callback` appends it to the call's record, then:

* ``human`` or ``unknown``: opens the gate of the call's observer when this worker serves the stream (the
  agent's ``start`` goes out at once); a worker that does not serve it finds the result in the store
  (:func:`watch_store`, every :data:`AMD_POLL_S`).
* a machine (or fax) with ``"hangup"``: hangs up through the REST API.
* a machine with ``"voicemail"``: once the greeting has ended (``machine_end_*``), redirects the call to
  ``<Say>voicemail_message</Say><Hangup/>`` (Twilio speaks it after the beep and hangs up); the stream ends.

The gate never opens for a machine, so the agent never speaks over a greeting. A result that never comes opens
the gate after :data:`AMD_MAX_WAIT_S` (Twilio's own detection timeout is 30 s by default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import trio
from twilio.twiml.voice_response import VoiceResponse

from bridge._outbound import OutboundCalls, _iso
from bridge._records import CALL_SID, CallObserver, CallRecords
from bridge._store import StoreUnavailable
from bridge._twilio_rest import TwilioRestError

__all__ = ["ANSWERED_BY", "handle_amd_callback", "voicemail_twiml", "watch_store"]

logger = logging.getLogger("bridge.amd")

ANSWERED_BY: Final = frozenset(
    {
        "human",
        "unknown",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
        "fax",
    }
)
_PERSON: Final = frozenset({"human", "unknown"})
_MESSAGE_END: Final = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
#: How often a worker serving a held call looks in the store for a result another worker received.
AMD_POLL_S: Final = 0.1
#: A result that never comes (a lost callback) releases the agent after this long.
AMD_MAX_WAIT_S: Final = 45.0
#: Bound on the REST request that acts on a machine.
REST_TIMEOUT_S: Final = 10.0


def voicemail_twiml(message: str) -> str:
    """``<Say>message</Say><Hangup/>``, built with the twilio package."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


async def handle_amd_callback(
    form: Mapping[str, str], outbound: OutboundCalls, records: CallRecords
) -> str | None:
    """Act on one AMD result (the route has checked its signature); returns the action, or None if ignored.

    Raises:
        StoreUnavailable: the store did not answer (the route answers 503 and Twilio retries).
    """
    sid = form.get("CallSid", "")
    answered_by = form.get("AnsweredBy", "")
    if not CALL_SID.fullmatch(sid) or answered_by not in ANSWERED_BY:
        logger.warning("AMD callback ignored: AnsweredBy %.32r", answered_by)
        return None
    observer = records.live.get(sid)
    if answered_by in _PERSON and observer is not None:
        observer.open_gate()  # first: the agent starts now, the bookkeeping follows
    found = await outbound.store.record_get(sid)
    if found is None:
        logger.warning("[%s] AMD callback for a call we have no record of", sid)
        return None
    base = found[0]
    config = base.get("amd") or {}
    if any(e.get("kind") == "amd" for e in found[1]):
        return None  # a retry of a callback we acted on
    duration = form.get("MachineDetectionDuration", "")
    if answered_by in _PERSON:
        action = "agent"
    elif config.get("on_machine") == "voicemail" and answered_by in _MESSAGE_END:
        action = "voicemail"
    elif config.get("on_machine") == "voicemail" and answered_by == "machine_start":
        action = "wait"  # not sent with DetectMessageEnd; the end of the greeting is what we act on
    else:
        action = "hangup"
    event = {
        "kind": "amd",
        "amd": {
            "answered_by": answered_by,
            "action": action,
            "at": _iso(time.time()),
            "detection_ms": int(duration) if duration.isdigit() and len(duration) < 9 else None,
        },
    }
    if action != "wait":
        await outbound.store.record_event(sid, event)
    logger.info("[%s] answered by %s: %s", sid, answered_by, action)
    if action == "agent":
        pass  # the gate is open (above), or the worker serving the stream finds the result in the store
    elif action in ("hangup", "voicemail"):
        rest = outbound._rest
        if rest is None:
            if observer is not None:
                observer.stop.set()
        elif action == "hangup":
            await rest.complete_call(sid, timeout_s=REST_TIMEOUT_S)
        else:
            try:
                twiml = voicemail_twiml(str(config.get("voicemail_message") or ""))
                await rest.update_call(sid, {"Twiml": twiml}, timeout_s=REST_TIMEOUT_S)
            except TwilioRestError as exc:
                logger.warning("[%s] voicemail not left: %s", sid, exc)
                await rest.complete_call(sid, timeout_s=REST_TIMEOUT_S)
    return action


async def watch_store(sid: str, observer: CallObserver, outbound: OutboundCalls) -> None:
    """For a held call served here: open its gate when another worker stored a person's answer."""
    deadline = trio.current_time() + AMD_MAX_WAIT_S
    while not observer.agent_gate.is_set() and observer.ended_at is None:
        if trio.current_time() >= deadline:
            logger.warning("[%s] no AMD result in %g s: starting the agent", sid, AMD_MAX_WAIT_S)
            observer.open_gate()
            return
        try:
            found = await outbound.store.record_get(sid)
        except StoreUnavailable:
            found = None
        amd: Any = None
        for event in (found or ({}, []))[1]:
            if event.get("kind") == "amd":
                amd = event.get("amd")
        if isinstance(amd, dict):
            if amd.get("action") == "agent":
                observer.open_gate()
            return
        await trio.sleep(AMD_POLL_S)
