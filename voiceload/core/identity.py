"""Per-call identity: From user, display name, To user and extra headers, from templates and CSV rows (pure).

Real gateways tell callers apart by who they say they are: a caller-ID per call (rate limits per
number, routing on the dialled number, a Rasa sender taken from the From user) and headers a dial
plan reads. SIPp feeds one row of an `-inf` CSV file to each call; voiceload does the same. A
template holds fields of the call (`{seq}`, `{agent}`, `{session}`, `{run}`), random digits
(`{digits:10}`) and columns of the call's CSV row (`{csv.caller}`); `{{` and `}}` are literal
braces. Rows are used in order and wrap around.

Everything here is parsing, checking and expansion: reading the CSV file is the caller's I/O (the
coordinator checks it before any call, each agent reads it when it starts).
"""

from __future__ import annotations

import csv
import functools
import io
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

FIELDS = ("seq", "agent", "session", "run")  # a call's own fields (docs/scenarios.md)
MAX_DIGITS = 64
# Who a gateway names the Rasa conversation after (docs/gateways.md): our session header, the From
# user, or the SIP Call-ID. The tracker check asks Rasa for the same one.
SENDER_SESSION, SENDER_FROM_USER, SENDER_CALL_ID = "session", "from-user", "call-id"
SENDERS = (SENDER_SESSION, SENDER_FROM_USER, SENDER_CALL_ID)
# Headers the SIP stack writes itself (From is --from/--display-name, To is --to-user): an extra header
# of one of these names would make a message with two of them, or break the dialog
RESERVED_HEADERS = frozenset({
    "from", "f", "to", "t", "call-id", "i", "cseq", "via", "v", "contact", "m", "content-length", "l",
    "content-type", "c", "max-forwards", "route", "record-route", "x-voiceload-session", "x-voiceload-auth",
})
# Columns of an identities file that give each call its own digest credentials (SIPp's per-call
# [authentication]): with both, a call answers challenges as its row's user, whose name is also its
# From user unless a From template says otherwise.
AUTH_USER_COLUMN, AUTH_PASSWORD_COLUMN = "auth_user", "auth_password"
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")  # RFC 3261 token: what a header name may be
# RFC 3261 user part: unreserved and user-unreserved characters pass, everything else is %-escaped
_USER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/")


class IdentityError(ValueError):
    """A bad template or identities file: `where` names the flag, key or file, `message` what is wrong."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


@dataclass(frozen=True)
class CallFields:
    """The fields of one call a template may use."""

    seq: int  # the call's number within its agent (1, 2, ...), as in the session id
    agent: str  # the agent's id (a0, a1, ...)
    session: str  # the session id (protocol.session_id), also sent as X-Voiceload-Session
    run: str  # the run id


@dataclass(frozen=True)
class Field:
    """One `{...}` of a template: a call field, `digits` (arg: how many) or `csv` (arg: the column)."""

    name: str
    arg: int | str | None = None


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and fields, in order."""

    text: str
    parts: tuple[str | Field, ...]

    @classmethod
    def parse(cls, text: str, where: str) -> Template:
        """`text` as a template; an IdentityError naming `where` and the bad field otherwise."""
        if "\r" in text or "\n" in text:
            raise IdentityError(where, f"{text!r} holds a line break")
        parts: list[str | Field] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c in "{}" and text[i + 1 : i + 2] == c:  # {{ and }}: a literal brace
                literal.append(c)
                i += 2
                continue
            if c == "}":
                raise IdentityError(where, f"{text!r}: a '}}' without its '{{' (write '}}}}' for a brace)")
            if c != "{":
                literal.append(c)
                i += 1
                continue
            end = text.find("}", i)
            if end < 0:
                raise IdentityError(where, f"{text!r}: a '{{' without its '}}' (write '{{{{' for a brace)")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_field(text[i + 1 : end], text, where))
            i = end + 1
        if literal:
            parts.append("".join(literal))
        return cls(text, tuple(parts))

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV columns this template reads."""
        return tuple(str(p.arg) for p in self.parts if isinstance(p, Field) and p.name == "csv")

    def expand(self, call: CallFields, row: Mapping[str, str] | None, rng: random.Random) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            elif p.name == "digits":
                assert isinstance(p.arg, int)
                out.append("".join(rng.choice("0123456789") for _ in range(p.arg)))
            elif p.name == "csv":
                assert row is not None, "a template with {csv.*} needs the call's row"
                out.append(row[str(p.arg)])
            else:
                out.append(str(getattr(call, p.name)))
        return "".join(out)


def _field(inner: str, text: str, where: str) -> Field:
    name = inner.strip()
    if name in FIELDS:
        return Field(name)
    if name.startswith("digits:"):
        n = name.partition(":")[2].strip()
        if not n.isdigit() or not 1 <= int(n) <= MAX_DIGITS:
            raise IdentityError(where, f"{text!r}: {{{inner}}} needs a count of digits from 1 to {MAX_DIGITS}")
        return Field("digits", int(n))
    if name.startswith("csv."):
        column = name[4:].strip()
        if not column:
            raise IdentityError(where, f"{text!r}: {{{inner}}} names no column")
        return Field("csv", column)
    raise IdentityError(where, f"{text!r}: unknown field {{{inner}}} (fields: "
                        f"{', '.join('{' + f + '}' for f in FIELDS)}, {{digits:N}}, {{csv.COLUMN}})")


# --- the identities file ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdentityRows:
    """An identities file: a header line of column names, then one row per call (used in order, wrapping)."""

    source: str  # the file, for messages
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def row(self, index: int) -> dict[str, str]:
        return dict(zip(self.columns, self.rows[index % len(self.rows)], strict=True))

    @property
    def has_credentials(self) -> bool:
        """Each row carries its own digest credentials (auth_user and auth_password columns)."""
        return AUTH_USER_COLUMN in self.columns and AUTH_PASSWORD_COLUMN in self.columns


def parse_identities(text: str, source: str) -> IdentityRows:
    """A CSV text (comma- or semicolon-separated, header line first; blank and `#` lines skipped) -> rows."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise IdentityError(source, "empty: expected a header line of column names, then one row per call")
    header = lines[0][1]
    delimiter = ";" if ";" in header and "," not in header else ","
    parsed = list(csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delimiter))
    columns = tuple(c.strip() for c in parsed[0])
    if any(not c for c in columns):
        raise IdentityError(f"{source} line {lines[0][0]}", "a column without a name in the header line")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise IdentityError(f"{source} line {lines[0][0]}", f"column {dupes[0]!r} named twice")
    rows = []
    for (n, _), fields in zip(lines[1:], parsed[1:], strict=True):
        if len(fields) != len(columns):
            raise IdentityError(f"{source} line {n}", f"{len(fields)} fields, the header has {len(columns)}")
        rows.append(tuple(f.strip() for f in fields))
    if not rows:
        raise IdentityError(source, "a header line but no rows (one row per call)")
    return IdentityRows(source, columns, tuple(rows))


def row_index(agent_number: int, seq: int, stride: int) -> int:
    """Which row (before wrapping) call `seq` of agent number `agent_number` takes.

    The run's agents share the rows: agent K takes rows K, K + stride, K + 2*stride, ... where
    stride is the number of agents the run plans. With one agent, that is SIPp's order exactly.
    """
    return (seq - 1) * max(1, stride) + agent_number


def agent_number(agent_id: str) -> int:
    """a0 -> 0, a12 -> 12: the number the coordinator gave an agent (0 for a name without one)."""
    m = re.search(r"(\d+)$", agent_id)
    return int(m.group(1)) if m else 0


# --- a run's identity settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CallIdentity:
    """One call's identity, expanded; None: the stack's default."""

    from_user: str | None = None
    display_name: str | None = None
    to_user: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = field(default=None, repr=False)  # (user, password) from its row

    def from_header(self, default_user: str, host: str) -> str | None:
        """The call's From value (name-addr), or None when neither a From user nor a display name is set.

        A From user with an `@` (or a whole sip:/sips: URI) keeps its own host.
        """
        if self.from_user is None and self.display_name is None:
            return None
        user = self.from_user if self.from_user is not None else default_user
        if user.startswith(("sip:", "sips:")):
            uri = user
        elif "@" in user:
            name, _, at_host = user.rpartition("@")
            uri = f"sip:{escape_user(name)}@{at_host}"
        else:
            uri = f"sip:{escape_user(user)}@{host}"
        if self.display_name is None or not self.display_name.strip():
            return f"<{uri}>"
        quoted = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{uri}>'

    @property
    def from_user_part(self) -> str | None:
        """The user part of the From as a gateway reads it (unescaped), None when From is the stack's."""
        if self.from_user is None:
            return None
        user = self.from_user
        if user.startswith(("sip:", "sips:")):
            user = user.partition(":")[2]
        return user.rpartition("@")[0] if "@" in user else user


def escape_user(user: str) -> str:
    """A user part as it may stand in a SIP URI (RFC 3261 §25: other characters %-escaped)."""
    return "".join(c if c in _USER_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in user)


def with_user(uri: str, user: str) -> str:
    """`uri` with its user part replaced (or added): the request URI and To of a call to `user`."""
    scheme, colon, rest = uri.partition(":")
    if not colon:
        raise ValueError(f"{uri!r} is not a SIP URI")
    at = rest.find("@")
    host_etc = rest[at + 1 :] if at >= 0 else rest
    return f"{scheme}:{escape_user(user)}@{host_etc}"


@dataclass(frozen=True)
class IdentitySpec:
    """How calls present themselves: templates for From/display name/To user/headers, an identities file.

    `stride` is set by the coordinator (the number of agents it plans); `identities` is an absolute path.
    """

    from_user: str | None = None
    display_name: str | None = None
    to_user: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (name, template), in order
    identities: str | None = None  # the CSV file, one row per call
    sender: str = SENDER_SESSION  # what the gateway sends Rasa as the conversation's sender
    stride: int = 1

    def templates(self) -> list[tuple[str, Template]]:
        """Each template with the name of what it sets, for messages."""
        named = [("From", self.from_user), ("display name", self.display_name), ("To user", self.to_user),
                 *((f"header {name}", value) for name, value in self.headers)]
        return [(what, Template.parse(text, what)) for what, text in named if text is not None]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for _, t in self.templates() for c in t.columns))

    @property
    def active(self) -> bool:
        return bool(self.from_user is not None or self.display_name is not None or self.to_user is not None
                     or self.headers or self.identities is not None)

    def merged(self, *, from_user: str | None = None, display_name: str | None = None, to_user: str | None = None,
               headers: Sequence[tuple[str, str]] = (), identities: str | None = None,
               sender: str | None = None) -> IdentitySpec:
        """The command line over this (the scenario's): each value given replaces it, a header by name."""
        names = {n.lower() for n, _ in headers}
        kept = tuple((n, v) for n, v in self.headers if n.lower() not in names)
        return replace(
            self, headers=kept + tuple(headers),
            from_user=self.from_user if from_user is None else from_user,
            display_name=self.display_name if display_name is None else display_name,
            to_user=self.to_user if to_user is None else to_user,
            identities=self.identities if identities is None else identities,
            sender=self.sender if sender is None else sender,
        )

    def checked(self) -> IdentitySpec:
        """Templates parse, header names are ours to set, the sender can be told apart, CSV fields have a file."""
        for name, _ in self.headers:
            check_header_name(name)
        templates = self.templates()
        if self.sender not in SENDERS:
            raise IdentityError("sender", f"{self.sender!r} is not one of {', '.join(SENDERS)}")
        if self.sender == SENDER_FROM_USER and self.from_user is None:
            raise IdentityError("sender", "from-user needs a From user per call (--from, sip.from), e.g. '{session}'")
        if self.identities is None:
            for what, t in templates:
                if t.columns:
                    raise IdentityError(what, f"{t.text!r} reads {{csv.{t.columns[0]}}} but no identities file "
                                        "is given (--identities, sip.identities)")
        return self

    def check_rows(self, rows: IdentityRows) -> None:
        """Every column the templates read is in the file."""
        for what, t in self.templates():
            for column in t.columns:
                if column not in rows.columns:
                    raise IdentityError(rows.source, f"no column {column!r}, read by {what} {t.text!r} "
                                        f"(columns: {', '.join(rows.columns)})")

    def expand(self, call: CallFields, rows: IdentityRows | None, rng: random.Random) -> CallIdentity:
        """One call's identity. `rows` is the identities file when there is one."""
        row = rows.row(row_index(agent_number(call.agent), call.seq, self.stride)) if rows is not None else None

        def value(text: str | None) -> str | None:
            return None if text is None else _compiled(text).expand(call, row, rng)

        auth = None
        if row is not None and rows is not None and rows.has_credentials:
            auth = (row[AUTH_USER_COLUMN], row[AUTH_PASSWORD_COLUMN])
        from_user = value(self.from_user)
        if from_user is None and auth is not None:  # gateways find the caller's account by its From user
            from_user = auth[0]
        return CallIdentity(
            from_user=from_user, display_name=value(self.display_name), to_user=value(self.to_user),
            headers=tuple((name, _compiled(text).expand(call, row, rng)) for name, text in self.headers),
            auth=auth,
        )


@functools.lru_cache(maxsize=64)
def _compiled(text: str) -> Template:
    """A template parsed once per process (a run has a handful), not once per call."""
    return Template.parse(text, "template")


def check_header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise IdentityError("header", f"{name!r} is not a header name")
    if name.lower() in RESERVED_HEADERS:
        hint = {"from": " (use --from/--display-name)", "f": " (use --from/--display-name)",
                "to": " (use --to-user)", "t": " (use --to-user)"}.get(name.lower(), "")
        raise IdentityError("header", f"{name} is written by the SIP stack, not settable{hint}")


def parse_header(text: str, where: str = "--header") -> tuple[str, str]:
    """'Name: template' -> (name, template); the template is checked."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise IdentityError(where, f"{text!r}: expected 'Name: value', e.g. 'X-Caller: {{csv.caller}}'")
    name = name.strip()
    try:
        check_header_name(name)
    except IdentityError as exc:
        raise IdentityError(where, exc.message) from None
    Template.parse(value.strip(), f"{where} {name}")
    return name, value.strip()


def sender_of(mode: str, *, session: str, call_id: str, from_user: str | None) -> str:
    """The Rasa sender a gateway using `mode` gives a call."""
    if mode == SENDER_CALL_ID:
        return call_id
    if mode == SENDER_FROM_USER and from_user is not None:
        return from_user
    return session
