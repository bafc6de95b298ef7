// Shared by every page: the sign-in form's target, G.711 μ-law, base64. No inline script anywhere (CSP).

const form = document.getElementById("login-form");
if (form) {
  const next = document.getElementById("next");
  const page = location.pathname.replace(/^\//, "");
  if (next && (page === "phone" || page === "dashboard")) next.value = page;
}

const BIAS = 0x84;
const CLIP = 32635;

/** One 16-bit PCM sample (as a float in [-1, 1]) to a μ-law byte, as G.711 does. */
export function linearToUlaw(x) {
  let s = Math.max(-1, Math.min(1, x)) * 32767;
  s = Math.round(s);
  const sign = s < 0 ? 0x80 : 0;
  if (s < 0) s = -s;
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

const ULAW_TABLE = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const sign = u & 0x80;
  const exponent = (u >> 4) & 0x07;
  const mantissa = u & 0x0f;
  let sample = (((mantissa << 3) + BIAS) << exponent) - BIAS;
  ULAW_TABLE[i] = (sign ? -sample : sample) / 32768;
}

/** μ-law bytes to float samples. */
export function ulawToFloat(bytes) {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = ULAW_TABLE[bytes[i]];
  return out;
}

export function bytesToBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

export function base64ToBytes(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** A random hex string of n bytes. */
export function randomHex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
