"""Instruction counts: a server under callgrind, driven by the lean load driver in lock step.

Theory of operation
-------------------
Wall-clock CPU on a shared 2-core box swings by tens of percent; user-space instructions counted by
``valgrind --tool=callgrind`` repeat to a fraction of a percent whatever else runs. The server under test
runs under callgrind with instrumentation off (``--instr-atstart=no``: imports and start-up cost nothing
and run faster); :func:`callgrind` toggles it on once the warm-up calls are over, and each measured
*window* is ``callgrind_control --zero`` ... ``--dump=<window>``, its count read back from the dump's
``totals:`` line.

The workload is the lean load driver's (``_load``: :class:`LeanCaller` and the :class:`LeanAgentServer`),
in this process, one call, but stepped instead of real-time paced, so that the same messages arrive in the
same grouping every run:

* one *step* is 20 ms of phone time: the caller's tick (the marks whose audio has played, and one 160-byte
  media frame, in one write), then, every tenth step in a mixed window, one 100 ms agent ``media``;
* after every send the driver waits until the server is done with it: every complete 512-byte frame has
  reached the agent (the passthrough backends: every μ-law byte), every mark echoed came back as a status
  (Speakr only: the others are not told), every agent message came back as Twilio ``media``, and the
  server's main thread is blocked in ``epoll_wait`` (``/proc/<pid>/syscall``) on two looks in a row.
  Nothing the server reads is then ever merged with, or split from, the next message by chance; a window
  ends exactly when its last message's effects are out.

The server is ~50x slower under callgrind, so a step takes tens of milliseconds of wall time. The caller's
Twilio timestamps follow its real sending pace (see ``LeanCaller.tick``), so the bridge's stale-audio rule
sees a punctual phone, as it should. Windows: *idle* (no call, fixed wall time), *uplink* (caller audio
only), *mixed* (50 Twilio media + 5 agent messages per call-second, with their marks and statuses) and a
*repeat* of mixed, whose difference is the spread reported.

Derived figures: per Twilio media = uplink / media sent; per agent message = (mixed - media sent x per
Twilio media) / agent messages (it carries the agent message, its Twilio media and mark, the returned mark
and its status); per call-second = mixed / (media sent / 50).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio
from _harness import ServerProcess, free_port
from _load import LeanAgentServer, LeanCaller, LoadProfile, LoadRun

__all__ = [
    "CALL_SECOND_MEDIA",
    "Counts",
    "System",
    "callgrind_missing",
    "measure",
    "python_argv",
]

VALGRIND: Final = "valgrind"
CALLGRIND_CONTROL: Final = "callgrind_control"
#: One call-second of the mix: Twilio sends 50 media (20 ms each); the agent sends 5 messages of 100 ms
#: (it speaks half the time), one every tenth step.
CALL_SECOND_MEDIA: Final = 50
AGENT_EVERY_STEPS: Final = 10
#: Window lengths in steps (20 ms of phone time each): long enough that a window's fixed costs (the
#: last 512-byte frame's partial, the flush of per-call counters every 50 frames) are well under 0.1 %.
UPLINK_STEPS: Final = 250
MIXED_STEPS: Final = 500
WARMUP_STEPS: Final = 100
WARMUP_CALLS: Final = 2
IDLE_S: Final = 2.0
CLOSE_QUIET_S: Final = 3.0
#: Bounds: a server under callgrind starts in tens of seconds and takes tens of ms per message.
START_TIMEOUT_S: Final = 180.0
SETTLE_TIMEOUT_S: Final = 30.0
SETTLE_POLL_S: Final = 0.001
CONTROL_TIMEOUT_S: Final = 60.0
#: Syscalls the server's run loop blocks in when it has nothing to do (x86-64 numbers).
_EPOLL_WAITS: Final = {"232", "281", "441"}  # epoll_wait, epoll_pwait, epoll_pwait2


def callgrind_missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    for tool in (VALGRIND, CALLGRIND_CONTROL):
        if shutil.which(tool) is None:
            return f"{tool} not found: install valgrind (Debian/Ubuntu: apt-get install valgrind)"
    if not Path("/proc/self/syscall").exists():
        return "/proc/<pid>/syscall is not available: the driver needs it to see the server idle"
    return None


@dataclass(frozen=True, slots=True)
class System:
    """One server to count: a row of the report.

    Args:
        name: its row's name.
        argv: the server command for a port (``sys.executable`` first; it is run under callgrind).
        env: its environment for the lean agent's URL.

        agent: the lean agent the server talks to (its ``url`` goes to ``env``).

    Each backend is a System: the bridge's command, the environment selecting that backend
    (``_load.backend_env``) and :class:`LeanAgentServer` speaking its protocol, whose session per call
    links itself as ``caller.agent`` and sends one 100 ms message on ``_media`` (the passthrough
    backends open an answer at the first: OpenAI ``response.created``, Deepgram
    ``AgentStartedSpeaking``, in the warm-up steps, so the counted windows hold audio messages only).
    The windows and the arithmetic stay the same, and the report gets its row.
    """

    name: str
    argv: Callable[[int], list[str]]
    env: Callable[[str], dict[str, str]]
    agent: Callable[[], LeanAgentServer] = LeanAgentServer


@dataclass(slots=True)
class Counts:
    """One system's windows: instructions and what was sent in each."""

    system: str
    windows: dict[str, int] = field(default_factory=dict)
    media: dict[str, int] = field(default_factory=dict)  # Twilio media sent per window
    agent: dict[str, int] = field(default_factory=dict)  # agent messages sent per window
    idle_s: float = 0.0
    stale: int = 0  # bridge_dropped{reason="stale_uplink"} in the log, if any

    def per_media(self) -> float:
        return self.windows["uplink"] / self.media["uplink"]

    def per_agent(self, window: str = "mixed") -> float:
        rest = self.windows[window] - self.media[window] * self.per_media()
        return rest / self.agent[window]

    def per_call_second(self, window: str = "mixed") -> float:
        return self.windows[window] / (self.media[window] / CALL_SECOND_MEDIA)

    def spread(self) -> float:
        """Relative difference of the repeat from the mixed window, per call-second."""
        a, b = self.per_call_second("mixed"), self.per_call_second("repeat")
        return abs(b - a) / a

    def idle_per_s(self) -> float:
        return self.windows["idle"] / self.idle_s if self.idle_s else 0.0


# ------------------------------------------------------------------------------------------ callgrind


class Callgrind:
    """The server under callgrind, and its controls."""

    def __init__(self, system: System, agent_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / "callgrind.out"
        argv = [
            VALGRIND,
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
            *system.argv(self.port),
        ]
        env = {**system.env(agent_url), "PYTHONHASHSEED": "0"}
        name = system.name.replace(" ", "-")
        self.server = ServerProcess(argv, port=self.port, env=env, workdir=workdir, name=name)
        self.dumps = 0

    @property
    def pid(self) -> int:
        return self.server.pid

    def control(self, *args: str) -> None:
        done = subprocess.run(
            [CALLGRIND_CONTROL, *args, str(self.pid)],
            capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S, check=False,
        )
        if done.returncode != 0 or "OK" not in done.stdout:
            raise RuntimeError(f"callgrind_control {args} failed: {done.stdout}{done.stderr}")

    async def zero(self) -> None:
        await trio.to_thread.run_sync(self.control, "--zero")

    async def dump(self, name: str) -> int:
        """Dump the counters since the last zero; returns their instruction count."""
        await trio.to_thread.run_sync(self.control, f"--dump={name}")
        self.dumps += 1
        path = trio.Path(f"{self.out}.{self.dumps}")
        with trio.fail_after(CONTROL_TIMEOUT_S):
            while True:  # callgrind writes the dump before callgrind_control returns; bounded anyway
                if await path.exists():
                    for line in (await path.read_text()).splitlines():
                        if line.startswith("totals:"):
                            return int(line.split()[1])
                await trio.sleep(0.05)

    def blocked(self) -> bool:
        """True while the server's main thread waits in epoll (it has nothing left to do)."""
        try:
            with open(f"/proc/{self.pid}/syscall") as f:
                return f.read().split(" ", 1)[0] in _EPOLL_WAITS
        except OSError:
            return False


# ------------------------------------------------------------------------------------------ the driver


class _Stepper:
    """One call through the server, sent step by step, each step waited out."""

    def __init__(self, cg: Callgrind, agent: LeanAgentServer, nursery: trio.Nursery) -> None:
        self.cg = cg
        self.agent = agent
        self.nursery = nursery
        # No scripted speech: the steps send the agent's messages.
        self.run = LoadRun(1, LoadProfile(speak_s=0.0))
        self.run.measuring = True  # the driver's counters (statuses, media received) always count
        self.caller = LeanCaller(self.run, 0)
        self.run.callers.append(self.caller)

    async def open(self) -> None:
        self.agent.run = self.run
        self.nursery.start_soon(
            self.caller.run_call, "127.0.0.1", self.cg.port, "/twilio/stream", self.nursery,
            self.agent.poller,
        )
        with trio.fail_after(SETTLE_TIMEOUT_S * 4):
            await self.caller.ready_event.wait()
        await self.settle()

    def _done(self) -> bool:
        c, r, agent = self.caller, self.run.result, self.agent
        expected = agent.uplink_expected_bytes(c.frames_sent)
        statuses = r.statuses >= r.marks_echoed or not agent.reports_played
        heard_all = statuses and r.twilio_media >= r.agent_media
        return heard_all and c.bytes_at_agent >= expected

    async def settle(self) -> None:
        """Wait until everything sent has had its effect and the server is idle in epoll."""
        with trio.fail_after(SETTLE_TIMEOUT_S):
            quiet = 0
            while quiet < 2:
                await trio.sleep(SETTLE_POLL_S)
                if self.caller.done.is_set():
                    raise RuntimeError(f"the server ended the call: {self.caller.close_detail}")
                quiet = quiet + 1 if self._done() and self.cg.blocked() else 0

    async def steps(self, count: int, agent_every: int | None) -> tuple[int, int]:
        """``count`` steps; returns (Twilio media, agent messages) sent."""
        c, r = self.caller, self.run.result
        media0, agent0 = c.frames_sent, r.agent_media
        session = c.agent
        assert session is not None
        for k in range(count):
            c.tick()
            await self.settle()
            if agent_every is not None and k % agent_every == 0:
                session._media(c, timed=False)
                await self.settle()
        return c.frames_sent - media0, r.agent_media - agent0

    async def close(self) -> None:
        self.caller.hang_up()
        with trio.fail_after(SETTLE_TIMEOUT_S):
            await self.caller.done.wait()
        self.agent.run = None
        # The call's own unwinding (close handshakes, bounded by the bridge's 1 s close timeout) is
        # over well before this; the idle window must not count it.
        await trio.sleep(CLOSE_QUIET_S)
        with trio.fail_after(SETTLE_TIMEOUT_S):
            while not self.cg.blocked():  # noqa: ASYNC110 -- polling another process's state
                await trio.sleep(0.01)


async def _measure_one(system: System, workdir: Path, log: Callable[[str], None]) -> Counts:
    counts = Counts(system.name)
    agent = system.agent()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        cg = Callgrind(system, agent.url, workdir)
        try:
            await cg.server.wait_ready(START_TIMEOUT_S)
            t0 = time.perf_counter()
            for _ in range(WARMUP_CALLS):
                stepper = _Stepper(cg, agent, nursery)
                await stepper.open()
                await stepper.steps(WARMUP_STEPS, AGENT_EVERY_STEPS)
                await stepper.close()
            await trio.to_thread.run_sync(cg.control, "--instr=on")
            log(f"{system.name}: warmed up in {time.perf_counter() - t0:.0f} s; counting")
            # Idle: no call at all, a fixed wall time.
            await cg.zero()
            t_idle = time.perf_counter()
            await trio.sleep(IDLE_S)
            counts.windows["idle"] = await cg.dump("idle")
            counts.idle_s = time.perf_counter() - t_idle
            stepper = _Stepper(cg, agent, nursery)
            await stepper.open()
            await stepper.steps(WARMUP_STEPS, AGENT_EVERY_STEPS)  # this call's first steps, uncounted
            for window, steps, every in (
                ("uplink", UPLINK_STEPS, None),
                ("mixed", MIXED_STEPS, AGENT_EVERY_STEPS),
                ("repeat", MIXED_STEPS, AGENT_EVERY_STEPS),
            ):
                t_w = time.perf_counter()
                await cg.zero()
                counts.media[window], counts.agent[window] = await stepper.steps(steps, every)
                counts.windows[window] = await cg.dump(window)
                log(
                    f"{system.name}: {window}: {counts.windows[window] / 1e6:.2f} M instructions, "
                    f"{counts.media[window]} media, {counts.agent[window]} agent messages "
                    f"({time.perf_counter() - t_w:.0f} s)"
                )
            await stepper.close()
            counts.stale = cg.server.log_path.read_text(errors="replace").count("late: dropping it")
        finally:
            cg.server.stop()
            nursery.cancel_scope.cancel()
    return counts


async def measure(systems: Sequence[System], workdir: Path, log: Callable[[str], None]) -> list[Counts]:
    """Count every system's windows, one server after the other."""
    out = []
    for system in systems:
        out.append(await _measure_one(system, workdir / system.name.replace(" ", "-"), log))
    return out


def python_argv(*args: str) -> list[str]:
    """``sys.executable`` itself (valgrind must run the interpreter, not a shell shim) with ``args``."""
    return [os.path.realpath(sys.executable), *args]
