// The earpiece: plays 8 kHz audio at the context's rate and keeps Twilio's promises about marks.
// A mark is reported when every sample queued before it has been played; "clear" drops what is
// queued and reports every pending mark at once (as Twilio does). Also reports onsets of loud
// sound in what it plays (context time), the level, and how much it has played.

const IN_RATE = 8000;
const RING = IN_RATE * 600; // ten minutes of queued speech
const ONSET_LEVEL = 0.25;
const ONSET_QUIET_S = 0.2;
const REPORT_EVERY = 10; // render quanta between level reports (~27 ms at 48 kHz)

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(RING);
    this.written = 0; // samples ever queued
    this.read = 0; // fractional position in everything ever queued (jumps to the end on clear)
    this.played = 0; // fractional samples actually played
    this.marks = []; // {name, at}: reported once read >= at
    this.step = IN_RATE / sampleRate;
    this.lastLoud = -1;
    this.quanta = 0;
    this.peak = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") {
      const s = msg.samples;
      for (let i = 0; i < s.length; i++) this.ring[(this.written + i) % RING] = s[i];
      this.written += s.length;
    } else if (msg.type === "mark") {
      this.marks.push({ name: msg.name, at: this.written });
    } else if (msg.type === "clear") {
      const names = this.marks.map((m) => m.name);
      this.marks = [];
      const dropped = this.written - Math.floor(this.read);
      this.read = this.written;
      this.port.postMessage({ type: "cleared", names, dropped });
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    for (let i = 0; i < n; i++) {
      let x = 0;
      if (this.read < this.written) {
        const k = Math.floor(this.read);
        const frac = this.read - k;
        const a = this.ring[k % RING];
        const b = k + 1 < this.written ? this.ring[(k + 1) % RING] : a;
        x = a + (b - a) * frac;
        this.read += this.step;
        this.played += this.step;
        if (this.read > this.written) this.read = this.written;
      }
      out[i] = x;
      const ax = Math.abs(x);
      if (ax > this.peak) this.peak = ax;
      if (ax > ONSET_LEVEL) {
        const t = currentTime + i / sampleRate;
        if (this.lastLoud < 0 || t - this.lastLoud > ONSET_QUIET_S) this.port.postMessage({ type: "onset", time: t });
        this.lastLoud = t;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    while (this.marks.length && this.read >= this.marks[0].at) {
      this.port.postMessage({ type: "mark", name: this.marks.shift().name });
    }
    if (++this.quanta % REPORT_EVERY === 0) {
      this.port.postMessage({ type: "level", peak: this.peak, played: Math.floor(this.played), queued: this.written - Math.floor(this.read) });
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("playback", PlaybackProcessor);
