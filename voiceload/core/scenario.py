"""The happy path as data: scenario format v1 (YAML), its model and its validation.

Pure: reads the YAML and probes the referenced WAV headers, nothing else. See docs/scenarios.md.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml

from voiceload.audio import wav as wavfile
from voiceload.audio.vad import DEFAULT_SPEECH, SpeechSettings
from voiceload.core import slo as slomod
from voiceload.core.mediaprofile import MediaProfile, media_from_scenario
from voiceload.core.shape import LoadShape, parse_shape
from voiceload.core.sipprofile import ProfileError, SipProfile, profile_from_scenario
from voiceload.errors import ScenarioError, UserError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Prompt:
    """A bot prompt: the reference recording the reference bot speaks and the agent expects."""

    path: Path  # absolute
    max_wait_ms: int  # the bot must start speaking within this time (after answer / after the caller's turn)
    transcript: str | None = None  # what the bot says: the expected reply text on text channels
    dtmf: str | None = None  # digits the bot sends right after this prompt (`dtmf:`), which the caller must receive


@dataclass(frozen=True)
class Dtmf:
    """A caller step that dials digits instead of speaking: RFC 4733 events or SIP INFO (`media.dtmf`).

    Digit k starts `k * (duration_ms + gap_ms)` after the first and lasts `duration_ms`, by either
    method (an INFO carries the digit's `Duration=`), so the step ends `length_ms` after it starts
    and the bot's reply is timed from there, as from the end of an utterance.
    """

    digits: str  # 0-9, *, #, A-D (upper case)
    duration_ms: int = 100
    gap_ms: int = 60

    @property
    def length_ms(self) -> int:
        n = len(self.digits)
        return n * self.duration_ms + (n - 1) * self.gap_ms


@dataclass(frozen=True)
class Turn:
    """One caller utterance (or dialled digits) and the bot reply expected after it."""

    index: int  # 0-based position in `turns`
    caller: Path | None  # absolute path of the caller recording (8 kHz mono WAV); None: a DTMF turn
    transcript: str | None  # what the caller says (for text channels and speech recognition)
    reply: Prompt | None  # the bot prompt expected after this utterance; None: any speech will do
    intent: str | None = None  # the Rasa intent this utterance must be classified as (checked in the tracker)
    action: str | None = None  # a bot action that must run after this utterance (checked in the tracker)
    dtmf: Dtmf | None = None  # the caller dials these digits instead of playing a recording


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    greeting: Prompt | None  # the bot speaks first, before turn 0
    turns: tuple[Turn, ...]
    silence_gap_ms: int  # the caller speaks only after bot speech followed by this much silence
    hangup_by: Literal["caller", "bot"]  # who ends the call after the last reply
    hangup_after_ms: int  # ...this long after the last reply ended
    answer_timeout_ms: int  # no 200 OK within this: outcome `timeout`
    max_call_ms: int  # hard cap on a call's duration once answered
    slos: tuple[str, ...] = ()  # SLO expressions (`slo:`), each valid for voiceload.core.slo.parse_slo
    load_shape: LoadShape | None = None  # `load.shape`: the run follows it; `--shape` replaces it
    max_rate: float | None = None  # `load.max_rate`: new calls per second at most, over the whole run
    sip: SipProfile = field(default_factory=SipProfile)  # `sip:`: credentials, proxy, TLS (the CLI overrides)
    # `early_media:` what the far end plays before its 200 OK (183 with SDP): `ignore` (the default:
    # the greeting and every offset count from the answer) or `listen` (it may be the greeting)
    early_media: Literal["ignore", "listen"] = "ignore"
    # `speech:` where speech starts and ends, on the tapes (both sides) and in real time (docs/accuracy.md)
    speech: SpeechSettings = DEFAULT_SPEECH

    @property
    def dtmf_turns(self) -> tuple[int, ...]:
        """The turns whose caller dials digits instead of speaking."""
        return tuple(t.index for t in self.turns if t.dtmf is not None)


# --- loading and validation --------------------------------------------------------------------
#
# The YAML is composed into a node tree (not loaded into dicts) so every value keeps its line:
# a problem names FILE:LINE: FIELD, and all problems are collected before raising, so one run of
# `voiceload scenario validate` shows everything that needs fixing.

DEFAULT_SILENCE_GAP_MS = 500
DEFAULT_ANSWER_TIMEOUT_MS = 5000
DEFAULT_MAX_CALL_MS = 120_000
DEFAULT_MAX_WAIT_MS = 3000
DEFAULT_HANGUP_BY: Literal["caller", "bot"] = "caller"
DEFAULT_HANGUP_AFTER_MS = 300
MAX_TURNS = 100
MIN_WAV_S = 0.1
MAX_WAV_S = 120.0
DTMF_DIGITS = "0123456789*#ABCD"
MAX_DTMF_DIGITS = 32
DEFAULT_DTMF_DURATION_MS = 100  # a key press as phones send it (ITU-T Q.24 asks for 40 ms at least)
DEFAULT_DTMF_GAP_MS = 60

# (lowest, highest) accepted value of each integer field, inclusive
RANGES: dict[str, tuple[int, int]] = {
    "silence_gap_ms": (100, 5000),
    "answer_timeout_ms": (500, 60_000),
    "max_call_ms": (1000, 3_600_000),
    "max_wait_ms": (100, 60_000),
    "after_ms": (0, 60_000),
    "duration_ms": (40, 2000),
    "gap_ms": (40, 2000),
}

TOP_KEYS = (
    "version", "name", "description", "silence_gap_ms", "answer_timeout_ms", "max_call_ms",
    "greeting", "turns", "hangup", "slo", "load", "sip", "early_media", "media", "speech",
)
EARLY_MEDIA = ("ignore", "listen")
PROMPT_KEYS = ("prompt", "max_wait_ms", "transcript", "dtmf")
TURN_KEYS = ("caller", "dtmf", "duration_ms", "gap_ms", "transcript", "reply", "intent", "action")
HANGUP_KEYS = ("by", "after_ms")
HANGUP_BY = ("caller", "bot")
LOAD_KEYS = ("shape", "max_rate")
SPEECH_KEYS = ("threshold_dbfs", "edge_dbfs", "min_speech_ms", "hangover_ms", "loud_dbfs")
# (lowest, highest) accepted for each `speech:` level (dBFS) and duration (ms)
SPEECH_RANGES: dict[str, tuple[float, float]] = {
    "threshold_dbfs": (-70.0, -6.0), "edge_dbfs": (-80.0, -6.0), "loud_dbfs": (-80.0, -6.0),
    "min_speech_ms": (0.0, 1000.0), "hangover_ms": (20.0, 5000.0),
}

_TAG = "tag:yaml.org,2002:"
_KIND = {  # how a wrongly typed value is described to the user
    "str": "a string", "int": "an integer", "float": "a number with a fraction", "bool": "a boolean",
    "null": "nothing (null)", "seq": "a list", "map": "a mapping", "timestamp": "a date",
}
ROOT = "(document)"


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; every problem found is reported at once in a ScenarioError.

    Relative recording paths resolve against the scenario file's directory, so a scenario and its
    recordings can move together. Each referenced WAV's header is probed (8 kHz mono PCM_16,
    0.1..120 s) now, before any call is placed, rather than failing mid-run inside an agent.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such scenario file")
    if not p.is_file():
        raise UserError(f"{path}: not a scenario file (it is a directory or special file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}:1: {ROOT}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read scenario file: {exc.strerror or exc}") from exc
    v = _Validator(display=str(path), base=p.resolve().parent)
    scenario = v.scenario(text, p.resolve())
    if v.problems or scenario is None:
        raise ScenarioError(v.sorted_problems())
    return scenario


@dataclass
class _Validator:
    """Walks the node tree, collecting (line, field, message) problems; returns None where invalid."""

    display: str  # the scenario file as the user named it
    base: Path  # directory that relative recording paths resolve against
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    _wav_cache: dict[Path, list[str]] = field(default_factory=dict)
    # A block list or mapping starts on the line after its key; problems about the whole
    # collection (a missing field, a wrong count) are reported on the key's line, where users look.
    _key_line: dict[int, int] = field(default_factory=dict)

    def add(self, node: yaml.Node | int, fld: str, message: str) -> None:
        line = node if isinstance(node, int) else self._key_line.get(id(node), node.start_mark.line + 1)
        self.problems.append((line, fld, message))

    def sorted_problems(self) -> list[str]:
        # stable: problems on one line keep the order they were found in
        ordered = sorted(self.problems, key=lambda pr: pr[0])
        return [f"{self.display}:{line}: {fld}: {msg}" for line, fld, msg in ordered]

    # -- document ---------------------------------------------------------------------------

    def scenario(self, text: str, abspath: Path) -> Scenario | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            what = ": ".join(s for s in (exc.context, exc.problem) if s)
            self.add(line, ROOT, f"YAML syntax error: {what or exc}")
            return None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            self.add(line, ROOT, f"YAML syntax error: {exc.reason} (character {exc.character!r})")
            return None
        except yaml.YAMLError as exc:
            self.add(1, ROOT, f"YAML syntax error: {exc}")
            return None
        if root is None:
            self.add(1, ROOT, "the file is empty; a scenario needs at least version, name and turns")
            return None
        top = self.mapping(root, "", TOP_KEYS)
        if top is None:
            return None

        version = self.required(root, top, "", "version")
        if version is not None:
            if _tag(version) != "int":
                self.add(version, "version", f"must be the integer {SCHEMA_VERSION}, got {_kind(version)}")
            elif _construct(version) != SCHEMA_VERSION:
                self.add(version, "version", f"unsupported version {version.value}; "
                         f"this voiceload reads version {SCHEMA_VERSION}")

        name_node = self.required(root, top, "", "name")
        name = self.string(name_node, "name", allow_empty=False) if name_node is not None else None
        description = ""
        if "description" in top and _tag(top["description"]) != "null":
            description = self.string(top["description"], "description", allow_empty=True) or ""

        silence_gap_ms = self.integer(top, "", "silence_gap_ms", DEFAULT_SILENCE_GAP_MS)
        answer_timeout_ms = self.integer(top, "", "answer_timeout_ms", DEFAULT_ANSWER_TIMEOUT_MS)
        max_call_ms = self.integer(top, "", "max_call_ms", DEFAULT_MAX_CALL_MS)

        greeting: Prompt | None = None
        if "greeting" in top and _tag(top["greeting"]) != "null":
            greeting = self.prompt(top["greeting"], "greeting")

        turns = self.turns(root, top)

        hangup_by: Literal["caller", "bot"] | None = DEFAULT_HANGUP_BY
        hangup_after_ms: int | None = DEFAULT_HANGUP_AFTER_MS
        if "hangup" in top:
            hangup_by, hangup_after_ms = self.hangup(top["hangup"])

        has_greeting = "greeting" in top and _tag(top["greeting"]) != "null"
        n_turns = len(turns) if turns is not None else None
        slos = self.slos(top["slo"], n_turns, has_greeting) if "slo" in top else ()
        load_shape, max_rate = self.load(top["load"]) if "load" in top else (None, None)
        sip = self.sip(top["sip"]) if "sip" in top else SipProfile()
        if "media" in top:
            sip = replace(sip, media=self.media(top["media"]))
        early_media = self.early_media(top["early_media"]) if "early_media" in top else "ignore"
        speech = self.speech(top["speech"]) if "speech" in top else DEFAULT_SPEECH

        if (
            self.problems or name is None or turns is None or silence_gap_ms is None
            or answer_timeout_ms is None or max_call_ms is None or hangup_by is None
            or hangup_after_ms is None or early_media is None
        ):
            return None
        return Scenario(
            path=abspath, name=name, description=description, greeting=greeting, turns=turns,
            silence_gap_ms=silence_gap_ms, hangup_by=hangup_by, hangup_after_ms=hangup_after_ms,
            answer_timeout_ms=answer_timeout_ms, max_call_ms=max_call_ms, slos=slos,
            load_shape=load_shape, max_rate=max_rate, sip=sip, early_media=early_media, speech=speech,
        )

    # -- sections ---------------------------------------------------------------------------

    def prompt(self, node: yaml.Node, fld: str) -> Prompt | None:
        keys = self.mapping(node, fld, PROMPT_KEYS)
        if keys is None:
            return None
        prompt_node = self.required(node, keys, fld, "prompt")
        wav = self.wav(prompt_node, f"{fld}.prompt") if prompt_node is not None else None
        max_wait_ms = self.integer(keys, fld, "max_wait_ms", DEFAULT_MAX_WAIT_MS)
        transcript, transcript_ok = self.transcript(keys, prompt_node, f"{fld}.transcript")
        dtmf, dtmf_ok = None, True
        if "dtmf" in keys and _tag(keys["dtmf"]) != "null":
            dtmf = self.digits(keys["dtmf"], f"{fld}.dtmf")
            dtmf_ok = dtmf is not None
        if wav is None or max_wait_ms is None or not transcript_ok or not dtmf_ok:
            return None
        return Prompt(path=wav, max_wait_ms=max_wait_ms, transcript=transcript, dtmf=dtmf)

    def turns(self, root: yaml.Node, top: dict[str, yaml.Node]) -> tuple[Turn, ...] | None:
        node = self.required(root, top, "", "turns")
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.add(node, "turns", f"must be a list of turns (each with `caller:`), got {_kind(node)}")
            return None
        items = node.value
        if not 1 <= len(items) <= MAX_TURNS:
            self.add(node, "turns", f"must have 1 to {MAX_TURNS} turns, got {len(items)}")
        out: list[Turn] = []
        for i, item in enumerate(items):
            turn = self.turn(item, i)
            if turn is not None:
                out.append(turn)
        return tuple(out) if len(out) == len(items) and items else None

    def turn(self, node: yaml.Node, index: int) -> Turn | None:
        fld = f"turns[{index}]"
        keys = self.mapping(node, fld, TURN_KEYS)
        if keys is None:
            return None
        if "dtmf" in keys:
            return self.dtmf_turn(node, keys, index)
        for key in ("duration_ms", "gap_ms"):
            if key in keys:
                self.add(keys[key], f"{fld}.{key}", "is the length of a DTMF turn's digits: only with `dtmf:`")
        caller_node = self.required(node, keys, fld, "caller")
        caller = self.wav(caller_node, f"{fld}.caller") if caller_node is not None else None
        transcript, transcript_ok = self.transcript(keys, caller_node, f"{fld}.transcript")
        reply: Prompt | None = None
        reply_ok = True
        if "reply" in keys and _tag(keys["reply"]) != "null":
            reply = self.prompt(keys["reply"], f"{fld}.reply")
            reply_ok = reply is not None
        intent, intent_ok = self.name(keys, fld, "intent")
        action, action_ok = self.name(keys, fld, "action")
        if caller is None or not transcript_ok or not reply_ok or not intent_ok or not action_ok:
            return None
        return Turn(index=index, caller=caller, transcript=transcript, reply=reply, intent=intent, action=action)

    def dtmf_turn(self, node: yaml.Node, keys: dict[str, yaml.Node], index: int) -> Turn | None:
        """A turn whose caller dials `dtmf:` digits (each `duration_ms` long, `gap_ms` apart) instead of speaking."""
        fld = f"turns[{index}]"
        ok = True
        if "caller" in keys:
            self.add(keys["caller"], f"{fld}.caller", "a turn either plays a `caller:` recording or dials "
                     "`dtmf:` digits, not both")
            ok = False
        if "transcript" in keys and _tag(keys["transcript"]) != "null":
            self.add(keys["transcript"], f"{fld}.transcript", "a DTMF turn says nothing: leave `transcript:` out")
            ok = False
        digits = self.digits(keys["dtmf"], f"{fld}.dtmf")
        duration_ms = self.integer(keys, fld, "duration_ms", DEFAULT_DTMF_DURATION_MS)
        gap_ms = self.integer(keys, fld, "gap_ms", DEFAULT_DTMF_GAP_MS)
        reply: Prompt | None = None
        if "reply" in keys and _tag(keys["reply"]) != "null":
            reply = self.prompt(keys["reply"], f"{fld}.reply")
            ok = ok and reply is not None
        intent, intent_ok = self.name(keys, fld, "intent")
        action, action_ok = self.name(keys, fld, "action")
        if not (ok and intent_ok and action_ok) or digits is None or duration_ms is None or gap_ms is None:
            return None
        return Turn(index=index, caller=None, transcript=None, reply=reply, intent=intent, action=action,
                    dtmf=Dtmf(digits, duration_ms, gap_ms))

    def digits(self, node: yaml.Node, fld: str) -> str | None:
        """DTMF digits as a quoted string: 0-9, *, #, A-D (any case), at most MAX_DTMF_DIGITS."""
        if _tag(node) == "null":
            self.add(node, fld, "must be DTMF digits in quotes, e.g. \"1234#\" (unquoted, `#` starts a YAML comment)")
            return None
        value = self.string(node, fld, allow_empty=False)
        if value is None:
            return None
        digits = value.strip().upper()
        bad = sorted({c for c in digits if c not in DTMF_DIGITS})
        if bad:
            self.add(node, fld, f"must be DTMF digits (0-9, *, #, A-D), got {value!r}: "
                     f"{', '.join(repr(c) for c in bad)} {'is' if len(bad) == 1 else 'are'} not")
            return None
        if len(digits) > MAX_DTMF_DIGITS:
            self.add(node, fld, f"must be at most {MAX_DTMF_DIGITS} digits, got {len(digits)}")
            return None
        return digits

    def transcript(self, keys: dict[str, yaml.Node], wav_node: yaml.Node | None, fld: str) -> tuple[str | None, bool]:
        """A `transcript:` written in the scenario, else the recording's .txt sidecar; (text, valid)."""
        if "transcript" in keys and _tag(keys["transcript"]) != "null":
            text = self.string(keys["transcript"], fld, allow_empty=False)
            return (text.strip() if text is not None else None), text is not None
        if wav_node is not None and _tag(wav_node) == "str":
            return self.sidecar(wav_node, fld)
        return None, True

    def name(self, keys: dict[str, yaml.Node], parent: str, key: str) -> tuple[str | None, bool]:
        """An optional Rasa intent or action name: one word, as it appears in the domain and the tracker."""
        if key not in keys or _tag(keys[key]) == "null":
            return None, True
        fld = _join(parent, key)
        value = self.string(keys[key], fld, allow_empty=False)
        if value is None:
            return None, False
        if value != value.strip() or any(c.isspace() for c in value):
            self.add(keys[key], fld, f"must be one {key} name without spaces, as in the bot's domain; got {value!r}")
            return None, False
        return value, True

    def sidecar(self, wav_node: yaml.Node, fld: str) -> tuple[str | None, bool]:
        """The transcript beside a recording (same name, .txt), if there is one."""
        txt = (self.base / str(wav_node.value)).with_suffix(".txt")
        if not txt.is_file():
            return None, True
        try:
            text = txt.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self.add(wav_node, fld, f"cannot read the transcript file {txt}: {exc}")
            return None, False
        return (text or None), True

    def hangup(self, node: yaml.Node) -> tuple[Literal["caller", "bot"] | None, int | None]:
        keys = self.mapping(node, "hangup", HANGUP_KEYS)
        if keys is None:
            return None, None
        by: Literal["caller", "bot"] | None = DEFAULT_HANGUP_BY
        if "by" in keys:
            by_node = keys["by"]
            value = self.string(by_node, "hangup.by", allow_empty=True)
            if value == "caller":
                by = "caller"
            elif value == "bot":
                by = "bot"
            else:
                by = None
                if value is not None:
                    self.add(by_node, "hangup.by", f"must be one of caller, bot; got {value!r}"
                             + _suggest(value, HANGUP_BY))
        after_ms = self.integer(keys, "hangup", "after_ms", DEFAULT_HANGUP_AFTER_MS)
        return by, after_ms

    def slos(self, node: yaml.Node, n_turns: int | None, has_greeting: bool) -> tuple[str, ...]:
        """`slo:`: a list of SLO expressions, parsed now so a typo fails before any call is placed.

        Each is kept in its canonical form (`Slo.expr`: the text without whitespace). `n_turns` is
        None when the turns are broken (already reported): turn numbers are then not checked.
        """
        if _tag(node) == "null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.add(node, "slo", f"must be a list of SLO expressions (e.g. - p95_turn_latency_ms<=1500), "
                     f"got {_kind(node)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(node.value):
            fld = f"slo[{i}]"
            if isinstance(item, yaml.MappingNode):
                self.add(item, fld, "must be one expression such as 'completion_rate>=0.99', got a mapping "
                         "(write `- completion_rate>=0.99`, not `- completion_rate: 0.99`)")
                continue
            text = self.string(item, fld, allow_empty=False)
            if text is None:
                continue
            try:
                parsed = slomod.parse_slo(text)
            except UserError as exc:
                self.add(item, fld, str(exc))
                continue
            problem = parsed.problem_with(turns=n_turns, greeting=has_greeting)
            if problem is not None:
                self.add(item, fld, problem)
                continue
            out.append(parsed.expr)
        return tuple(out)

    def load(self, node: yaml.Node) -> tuple[LoadShape | None, float | None]:
        """`load:`: the run's shape and rate cap, parsed now so a typo fails before any call is placed."""
        if _tag(node) == "null":
            return None, None
        keys = self.mapping(node, "load", LOAD_KEYS)
        if keys is None:
            return None, None
        shape: LoadShape | None = None
        if "shape" in keys and _tag(keys["shape"]) != "null":
            text = self.string(keys["shape"], "load.shape", allow_empty=False)
            if text is not None:
                try:
                    shape = parse_shape(text)
                except ValueError as exc:
                    self.add(keys["shape"], "load.shape", str(exc))
        max_rate: float | None = None
        if "max_rate" in keys and _tag(keys["max_rate"]) != "null":
            rate_node = keys["max_rate"]
            value = _construct(rate_node) if _tag(rate_node) in ("int", "float") else None
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                self.add(rate_node, "load.max_rate", "must be a number of new calls per second above 0 "
                         f"(e.g. 5 or 0.5), got {_kind(rate_node)}")
            else:
                max_rate = float(value)
        return shape, max_rate

    def early_media(self, node: yaml.Node) -> Literal["ignore", "listen"] | None:
        """`early_media:`: whether audio heard before the 200 OK may be the greeting."""
        value = self.string(node, "early_media", allow_empty=True)
        if value == "ignore":
            return "ignore"
        if value == "listen":
            return "listen"
        if value is not None:
            self.add(node, "early_media", f"must be one of ignore, listen; got {value!r}"
                     + _suggest(value, EARLY_MEDIA))
        return None

    def speech(self, node: yaml.Node) -> SpeechSettings:
        """`speech:`: the speech detector's levels (dBFS) and durations (ms); `edge_dbfs: off` keeps
        edges at the threshold. Unset keys keep their defaults (voiceload.audio.vad)."""
        if _tag(node) == "null":
            return DEFAULT_SPEECH
        keys = self.mapping(node, "speech", SPEECH_KEYS)
        if keys is None:
            return DEFAULT_SPEECH
        values: dict[str, float | None] = {}
        ok = True
        for key, value_node in keys.items():
            fld = f"speech.{key}"
            tag = _tag(value_node)
            if key == "edge_dbfs" and (tag == "null" or (tag == "bool" and _construct(value_node) is False)):
                values[key] = None
                continue
            lo, hi = SPEECH_RANGES[key]
            value = _construct(value_node) if tag in ("int", "float") else None
            if not isinstance(value, int | float) or not math.isfinite(value):
                unit = "dBFS, e.g. -40" if key.endswith("dbfs") else "ms"
                self.add(value_node, fld, f"must be a number ({unit}), got {_kind(value_node)}")
                ok = False
            elif not lo <= value <= hi:
                self.add(value_node, fld, f"must be between {lo:g} and {hi:g}, got {value:g}")
                ok = False
            else:
                values[key] = float(value)
        if not ok:
            return DEFAULT_SPEECH
        settings = replace(DEFAULT_SPEECH, **values)  # type: ignore[arg-type]
        if settings.edge_dbfs is not None and settings.edge_dbfs > settings.threshold_dbfs:
            self.add(keys.get("edge_dbfs", node), "speech.edge_dbfs",
                     f"must not be above speech.threshold_dbfs ({settings.threshold_dbfs:g}): edges grow "
                     f"outwards from what the threshold found, got {settings.edge_dbfs:g}")
            return DEFAULT_SPEECH
        return settings

    def sip(self, node: yaml.Node) -> SipProfile:
        """`sip:`: how calls present themselves (voiceload.core.sipprofile), checked now."""
        try:
            return profile_from_scenario(_construct(node), self.base)
        except ProfileError as exc:
            self.add(node, exc.fld, exc.message)
            return SipProfile()

    def media(self, node: yaml.Node) -> MediaProfile:
        """`media:`: the calls' codecs, SRTP and DTMF method (voiceload.core.mediaprofile), checked now."""
        try:
            return media_from_scenario(_construct(node))
        except UserError as exc:
            fld, _, message = str(exc).partition(": ")
            self.add(node, fld, message)
            return MediaProfile()

    # -- values -----------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, fld: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node] | None:
        """Keys → value nodes of a mapping; reports a non-mapping, odd keys, duplicates and typos."""
        if not isinstance(node, yaml.MappingNode):
            expect = ", ".join(allowed)
            self.add(node, fld or ROOT, f"must be a mapping with keys ({expect}), got {_kind(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or _tag(key_node) != "str":
                self.add(key_node, fld or ROOT, f"keys must be plain names, got {_kind(key_node)}")
                continue
            key = str(key_node.value)
            sub = _join(fld, key)
            if key not in allowed:
                self.add(key_node, sub, f"unknown key {key!r}" + _suggest(key, allowed, list_all=True))
            elif key in out:
                self.add(key_node, sub, "duplicate key (the earlier value would be silently replaced)")
            else:
                out[key] = value_node
                if isinstance(value_node, yaml.CollectionNode):
                    self._key_line[id(value_node)] = key_node.start_mark.line + 1
        return out

    def required(self, parent: yaml.Node, keys: dict[str, yaml.Node], fld: str, key: str) -> yaml.Node | None:
        if key not in keys:
            self.add(parent, _join(fld, key), "required field is missing")
            return None
        return keys[key]

    def string(self, node: yaml.Node, fld: str, *, allow_empty: bool) -> str | None:
        if _tag(node) != "str":
            self.add(node, fld, f"must be a string, got {_kind(node)}" + _quote_hint(node))
            return None
        value = str(node.value)
        if not allow_empty and not value.strip():
            self.add(node, fld, "must not be empty")
            return None
        return value

    def integer(self, keys: dict[str, yaml.Node], parent: str, key: str, default: int) -> int | None:
        """An optional integer field within its range (RANGES); the default when absent."""
        fld = _join(parent, key)
        if key not in keys:
            return default
        node = keys[key]
        lo, hi = RANGES[key]
        if _tag(node) != "int":
            self.add(node, fld, f"must be an integer ({lo}..{hi}), got {_kind(node)}")
            return None
        value = _construct(node)
        if not isinstance(value, int) or not lo <= value <= hi:
            self.add(node, fld, f"must be between {lo} and {hi}, got {value}")
            return None
        return value

    def wav(self, node: yaml.Node, fld: str) -> Path | None:
        """A recording path: resolved against the scenario's directory, its header probed."""
        written = self.string(node, fld, allow_empty=False)
        if written is None:
            return None
        resolved = (self.base / written).resolve()
        if resolved not in self._wav_cache:
            self._wav_cache[resolved] = _wav_problems(resolved)
        problems = self._wav_cache[resolved]
        for problem in problems:
            self.add(node, fld, f"{written}: {problem}")
        return None if problems else resolved


def _wav_problems(path: Path) -> list[str]:
    info, problems = wavfile.call_wav_problems(path)
    if info is None:
        if problems == ["no such file"]:
            return [f"no such file ({path})"]
        return problems
    if not MIN_WAV_S <= info.duration_s <= MAX_WAV_S:
        problems.append(f"lasts {info.duration_s:.3f} s, must be {MIN_WAV_S:g} s to {MAX_WAV_S:g} s")
    return problems


def _tag(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "map"
    if isinstance(node, yaml.SequenceNode):
        return "seq"
    tag = str(node.tag)
    return tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _kind(node: yaml.Node) -> str:
    tag = _tag(node)
    kind = _KIND.get(tag, f"a value tagged {tag}")
    if isinstance(node, yaml.ScalarNode) and tag != "null":
        value = str(node.value)
        if tag == "str":
            value = repr(value if len(value) <= 40 else value[:37] + "...")
        kind += f" ({value})"
    return kind


def _quote_hint(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode) and _tag(node) in ("int", "float", "bool", "timestamp"):
        return "; put it in quotes to make it text"
    return ""


def _construct(node: yaml.Node) -> object:
    """The Python value of a scalar node, by YAML's own rules (0x10, 1_000, ...)."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _suggest(word: str, choices: tuple[str, ...], *, list_all: bool = False) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid keys: {', '.join(choices)})" if list_all else ""


def rest_problems(scenario: Scenario) -> list[str]:
    """Why the scenario cannot run as text: every turn needs a caller transcript to send, and no DTMF."""
    dialled = scenario.dtmf_turns
    if dialled:
        which = f"turn {dialled[0]} dials" if len(dialled) == 1 else f"turns {', '.join(map(str, dialled))} dial"
        return [f"{scenario.path}: {which} DTMF, which --channel rest (text to Rasa's REST webhook) cannot send; "
                "run it over SIP"]
    missing = [str(t.index) for t in scenario.turns if t.transcript is None]
    if not missing:
        return []
    which = f"turn {missing[0]} has" if len(missing) == 1 else f"turns {', '.join(missing)} have"
    return [f"{scenario.path}: {which} no caller transcript (write `transcript:` or a .txt beside the caller "
            "recording); --channel rest sends the transcripts as text"]
