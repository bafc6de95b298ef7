// The web phone: the microphone to the bridge's Twilio Media Stream route, speaking Twilio's protocol,
// and the bridge's audio back to the speakers with Twilio's mark/clear behaviour.
import { base64ToBytes, bytesToBase64, linearToUlaw, randomHex, ulawToFloat } from "/web/common.js";

const $ = (id) => document.getElementById(id);
const stateEl = $("call-state");
const callBtn = $("call");
const hangupBtn = $("hangup");

// Figures for people and for the browser tests (read through page.evaluate); no secrets in here.
const stats = {
  framesSent: 0, marksReceived: 0, marksEchoed: 0, clears: 0, clearedMarks: 0, mediaReceived: 0,
  playedSamples: 0, captureOnsets: [], sendOnsets: [], playbackOnsets: [], closeCode: null, callSid: null,
};
window.phoneStats = stats;

let call = null;

function setState(text) {
  stateEl.textContent = text;
}

function wallOf(ctx, contextTime) {
  // A worklet's render time -> wall-clock ms (performance.timeOrigin is epoch ms). Render time, not
  // time heard: what reaches the ear is later by ctx.outputLatency, reported beside it.
  return performance.timeOrigin + performance.now() - (ctx.currentTime - contextTime) * 1000;
}

async function startCall() {
  callBtn.disabled = true;
  setState("starting");
  const ctx = new AudioContext({ latencyHint: "interactive" });
  try {
    await ctx.audioWorklet.addModule("/web/capture-worklet.js");
    await ctx.audioWorklet.addModule("/web/playback-worklet.js");
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    const response = await fetch("/phone/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ agent: $("agent").value.trim(), prompt: $("prompt").value.trim() }),
    });
    if (!response.ok) {
      const detail = await response.json().catch(() => ({}));
      throw new Error(detail.error || `session refused (${response.status})`);
    }
    const ticket = await response.json();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${ticket.stream_path}`);
    call = { ctx, mic, ws, ticket, seq: 0, chunk: 0, ended: false };
    stats.callSid = ticket.call_sid;
    stats.baseLatencyMs = (ctx.baseLatency || 0) * 1000;
    stats.outputLatencyMs = (ctx.outputLatency || 0) * 1000;
    $("call-sid").textContent = ticket.call_sid;

    const source = ctx.createMediaStreamSource(mic);
    const capture = new AudioWorkletNode(ctx, "capture");
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(capture).connect(mute).connect(ctx.destination);
    const playback = new AudioWorkletNode(ctx, "playback", { outputChannelCount: [1] });
    playback.connect(ctx.destination);
    call.playback = playback;
    call.capture = capture;

    const send = (msg) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
    };
    const streamSid = ticket.stream_sid;
    const accountSid = "AC" + randomHex(16);
    ws.onopen = () => {
      send({ event: "connected", protocol: "Call", version: "1.0.0" });
      send({
        event: "start", sequenceNumber: String(++call.seq), streamSid,
        start: {
          accountSid, streamSid, callSid: ticket.call_sid, tracks: ["inbound"],
          mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
          customParameters: ticket.parameters,
        },
      });
      call.started = performance.now();
      setState("connected");
      hangupBtn.disabled = false;
    };
    capture.port.onmessage = (e) => {
      const msg = e.data;
      if (msg.type === "onset") {
        stats.captureOnsets.push(wallOf(ctx, msg.time));
        return;
      }
      if (ws.readyState !== WebSocket.OPEN || call.started === undefined || call.ended) return;
      const samples = msg.samples;
      const payload = new Uint8Array(samples.length);
      let peak = 0;
      for (let i = 0; i < samples.length; i++) {
        payload[i] = linearToUlaw(samples[i]);
        peak = Math.max(peak, Math.abs(samples[i]));
      }
      $("meter-up").value = peak;
      const now = performance.timeOrigin + performance.now();
      if (peak > 0.25 && now - (call.lastLoudSend || 0) > 200) stats.sendOnsets.push(now);
      if (peak > 0.25) call.lastLoudSend = now;
      const chunk = ++call.chunk;
      send({
        event: "media", sequenceNumber: String(++call.seq), streamSid,
        media: { track: "inbound", chunk: String(chunk), timestamp: String((chunk - 1) * 20), payload: bytesToBase64(payload) },
      });
      stats.framesSent++;
    };
    const echoMark = (name) => {
      send({ event: "mark", sequenceNumber: String(++call.seq), streamSid, mark: { name } });
      stats.marksEchoed++;
      $("marks").textContent = stats.marksEchoed;
    };
    playback.port.onmessage = (e) => {
      const msg = e.data;
      if (msg.type === "mark") echoMark(msg.name);
      else if (msg.type === "cleared") {
        stats.clearedMarks += msg.names.length;
        msg.names.forEach(echoMark);
      } else if (msg.type === "level") {
        $("meter-down").value = msg.peak;
        stats.playedSamples = msg.played;
        $("played").textContent = Math.round(msg.played / 8);
      } else if (msg.type === "onset") {
        stats.playbackOnsets.push(wallOf(ctx, msg.time));
      }
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg.event === "media" && msg.media && msg.media.payload) {
        stats.mediaReceived++;
        playback.port.postMessage({ type: "audio", samples: ulawToFloat(base64ToBytes(msg.media.payload)) });
      } else if (msg.event === "mark" && msg.mark) {
        stats.marksReceived++;
        playback.port.postMessage({ type: "mark", name: String(msg.mark.name) });
      } else if (msg.event === "clear") {
        stats.clears++;
        $("clears").textContent = stats.clears;
        playback.port.postMessage({ type: "clear" });
      } else if (msg.event === "transcript" && typeof msg.text === "string") {
        const p = document.createElement("p");
        p.textContent = msg.text; // text only: never parsed as HTML
        $("transcript").append(p);
      }
    };
    ws.onclose = (e) => {
      stats.closeCode = e.code;
      finish(`ended (${e.code === 1000 ? "hung up" : "closed " + e.code})`);
    };
  } catch (err) {
    setState(`ended: ${err.message}`);
    await ctx.close().catch(() => {});
    callBtn.disabled = false;
  }
}

function finish(text) {
  if (!call || call.ended) return;
  call.ended = true;
  call.mic.getTracks().forEach((t) => t.stop());
  call.ctx.close().catch(() => {});
  setState(text);
  hangupBtn.disabled = true;
  callBtn.disabled = false;
}

function hangUp() {
  if (!call || call.ended) return;
  const ws = call.ws;
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({
      event: "stop", sequenceNumber: String(++call.seq), streamSid: call.ticket.stream_sid,
      stop: { accountSid: "", callSid: call.ticket.call_sid },
    }));
    ws.close(1000);
  }
  finish("ended (you hung up)");
}

callBtn.addEventListener("click", () => { startCall(); });
hangupBtn.addEventListener("click", hangUp);
