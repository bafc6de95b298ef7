// The microphone side: resample the context's rate to 8 kHz (linear interpolation after a short
// moving-average low-pass) and hand 20 ms frames (160 samples) to the page. Also reports sound
// onsets (|x| above a threshold after a quiet spell) with their context time, for latency figures.

const OUT_RATE = 8000;
const FRAME = 160; // 20 ms at 8 kHz: what Twilio sends per media message
const ONSET_LEVEL = 0.25;
const ONSET_QUIET_S = 0.2;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE;
    this.pos = 0; // fractional read position into the (prev + current) input
    this.prev = 0;
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
    this.lastLoud = -1;
    this.taps = Math.max(1, Math.floor(this.step));
    this.hist = new Float32Array(this.taps);
    this.histAt = 0;
    this.histSum = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    const n = input.length;
    // Low-pass before decimation: a moving average over one output period.
    const smooth = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const x = input[i];
      this.histSum += x - this.hist[this.histAt];
      this.hist[this.histAt] = x;
      this.histAt = (this.histAt + 1) % this.taps;
      smooth[i] = this.histSum / this.taps;
      const ax = Math.abs(x);
      const t = currentTime + i / sampleRate;
      if (ax > ONSET_LEVEL) {
        if (this.lastLoud < 0 || t - this.lastLoud > ONSET_QUIET_S) {
          this.port.postMessage({ type: "onset", time: t });
        }
        this.lastLoud = t;
      }
    }
    // Resample: output sample k sits at input position pos (relative to this block, -1 = prev).
    while (this.pos < n) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i < 0 ? this.prev : smooth[i];
      const b = i + 1 < n ? smooth[i + 1] : smooth[n - 1];
      this.frame[this.filled++] = a + (b - a) * frac;
      if (this.filled === FRAME) {
        this.port.postMessage({ type: "frame", samples: this.frame, time: currentTime }, [this.frame.buffer]);
        this.frame = new Float32Array(FRAME);
        this.filled = 0;
      }
      this.pos += this.step;
    }
    this.pos -= n;
    this.prev = smooth[n - 1];
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
