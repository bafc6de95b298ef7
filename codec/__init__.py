"""μ-law (G.711) and streaming resamplers for speakr-bridge.

Two implementations with the same API and byte-identical output: ``codec._mulaw`` (compiled with
Cython) and ``codec._fallback`` (NumPy).  At import this package picks the fallback when
``SPEAKR_BRIDGE_PURE_PYTHON=1`` forces it, else the compiled module, else the fallback;
``IMPLEMENTATION`` says which (``"cython"`` or ``"python"``) and ``IMPLEMENTATION_REASON`` why.

API:
    ulaw_decode(data) -> bytes: μ-law -> PCM16LE (ITU-T G.191 reference).
    ulaw_encode(pcm) -> bytes: PCM16LE -> μ-law, bit-exact with G.191.
    Resampler(in_rate, out_rate): streaming, stateful; process(pcm) / flush() / reset(), delay_s.
    DownlinkEncoder(): PCM16LE 24 kHz -> μ-law 8 kHz in one call, same bytes as the two above.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__all__ = [
    "IMPLEMENTATION",
    "IMPLEMENTATION_REASON",
    "DownlinkEncoder",
    "Resampler",
    "ulaw_decode",
    "ulaw_encode",
]

_log = logging.getLogger("bridge.codec")

#: Values of SPEAKR_BRIDGE_PURE_PYTHON that force the NumPy fallback.
_FORCE_VALUES = frozenset({"1", "true", "yes", "on"})

IMPLEMENTATION_REASON: str
if TYPE_CHECKING:  # both implementations have exactly these signatures; the fallback's are typed
    from codec._fallback import IMPLEMENTATION, DownlinkEncoder, Resampler, ulaw_decode, ulaw_encode
elif os.environ.get("SPEAKR_BRIDGE_PURE_PYTHON", "").strip().lower() in _FORCE_VALUES:
    from codec._fallback import IMPLEMENTATION, DownlinkEncoder, Resampler, ulaw_decode, ulaw_encode

    IMPLEMENTATION_REASON = "forced by SPEAKR_BRIDGE_PURE_PYTHON"
else:
    try:
        from codec._mulaw import IMPLEMENTATION, DownlinkEncoder, Resampler, ulaw_decode, ulaw_encode

        IMPLEMENTATION_REASON = "compiled module codec._mulaw"
    except ImportError as exc:
        from codec._fallback import IMPLEMENTATION, DownlinkEncoder, Resampler, ulaw_decode, ulaw_encode

        IMPLEMENTATION_REASON = f"compiled module unavailable ({exc})"

_log.debug("codec implementation: %s (%s)", IMPLEMENTATION, IMPLEMENTATION_REASON)
