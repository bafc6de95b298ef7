"""The peer under comparison: a minimal pipecat bot for the bridge's job (Twilio in, OpenAI Realtime out).

Runs only in the peer comparison's own virtual environment (``benchmarks/peers/setup_venv.sh``); the product
never imports pipecat. It is what pipecat's telephony examples build, with nothing added:

- FastAPI's WebSocket endpoint, served by uvicorn (``uvicorn.run``, one process, as the examples run it);
- pipecat's ``parse_telephony_websocket`` for Twilio's ``connected``/``start``, its ``TwilioFrameSerializer``
  (``auto_hang_up`` off: there are no Twilio credentials here) in a ``FastAPIWebsocketTransport``;
- its ``OpenAIRealtimeLLMService`` with the context aggregator pair, one ``Pipeline`` and ``PipelineRunner``
  per call, 8 kHz in and out as its Twilio examples set.

Configuration (environment): ``OPENAI_API_KEY``; ``PIPECAT_OPENAI_BASE_URL`` (pipecat's ``base_url``
setting, e.g. ``ws://127.0.0.1:PORT/v1/realtime``: pipecat appends ``?model=``). The call's
``customParameters.system_prompt`` becomes the session instructions, as ``AGENT_SYSTEM_PROMPT`` and the
``system_prompt`` parameter do for the bridge (the load driver links an emulator session to its call by it).
Logging is at WARNING, as one would run it in production (pipecat logs every frame at DEBUG).

    python benchmarks/peers/pipecat_bot.py --host 127.0.0.1 --port 8765
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

logger.remove()
logger.add(sys.stderr, level=os.environ.get("PIPECAT_LOG_LEVEL", "WARNING"))

app = FastAPI()


@app.get("/healthz")
async def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@app.websocket("/twilio/stream")
async def twilio_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    _, call_data = await parse_telephony_websocket(websocket)
    body = call_data.get("body") or {}
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data.get("call_id"),
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    llm = OpenAIRealtimeLLMService(
        api_key=os.environ["OPENAI_API_KEY"],
        base_url=os.environ.get("PIPECAT_OPENAI_BASE_URL", "wss://api.openai.com/v1/realtime"),
        settings=OpenAIRealtimeLLMService.Settings(
            model="gpt-realtime",
            system_instruction=str(body.get("system_prompt") or "You are a helpful assistant"),
        ),
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(context)
    pipeline = Pipeline(
        [transport.input(), aggregators.user(), llm, transport.output(), aggregators.assistant()]
    )
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_metrics=False),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: FastAPIWebsocketTransport, client: WebSocket) -> None:
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
