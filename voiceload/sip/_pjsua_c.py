"""The few pjsua C functions voiceload calls past pjsua2, declared once with their pjsua.h prototypes.

pjsua2 wraps none of them; they are reached through its SWIG extension, which links pjsua in.
Undeclared, ctypes would pass and return every value as a C int: wrong for the call's user data
(a pointer) and unchecked for the rest. No pjsua2 import here: `ua` hands over the extension's path.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char_p, c_int, c_size_t, c_uint, c_void_p

# name: (restype, argtypes) as in pjsua.h; pj_status_t, pjsua_call_id and pjsua_conf_port_id are C ints
PROTOTYPES: dict[str, tuple[type, tuple[type, ...]]] = {
    "pjsua_call_get_max_count": (c_uint, ()),
    "pjsua_call_get_count": (c_uint, ()),
    "pjsua_call_get_conf_port": (c_int, (c_int,)),
    "pjsua_conf_remove_port": (c_int, (c_int,)),
    "pjsua_call_set_user_data": (c_int, (c_int, c_void_p)),
}
# voiceload's own build only (scripts/pjsua2/50-remote-sdp.patch); absent from others
OPTIONAL: dict[str, tuple[type, tuple[type, ...]]] = {
    "pjsua_call_print_rem_nego_sdp": (c_int, (c_int, c_char_p, c_size_t)),
}
SDP_MAX = 8192  # bytes of printed SDP: a call's few lines with room to spare


class Pjsua:
    """pjsua's C API as far as voiceload uses it, bound to the shared object at `path`."""

    def __init__(self, path: str) -> None:
        self._lib = ctypes.CDLL(path)
        for name, (restype, argtypes) in PROTOTYPES.items():
            func = getattr(self._lib, name)
            func.restype, func.argtypes = restype, list(argtypes)
        self.optional: set[str] = set()
        for name, (restype, argtypes) in OPTIONAL.items():
            func = getattr(self._lib, name, None)
            if func is not None:
                func.restype, func.argtypes = restype, list(argtypes)
                self.optional.add(name)

    def call_get_max_count(self) -> int:
        """The library's call slots (its per-process call limit)."""
        return int(self._lib.pjsua_call_get_max_count())

    def call_get_count(self) -> int:
        """Call slots in use, including calls whose BYE or CANCEL is not answered yet."""
        return int(self._lib.pjsua_call_get_count())

    def call_get_conf_port(self, call_id: int) -> int:
        """The conference bridge slot of the call's audio stream; negative when it has none."""
        return int(self._lib.pjsua_call_get_conf_port(call_id))

    def conf_remove_port(self, slot: int) -> int:
        """Take a port off the conference bridge; returns the pj_status_t."""
        return int(self._lib.pjsua_conf_remove_port(slot))

    def call_set_user_data(self, call_id: int, user_data: int) -> int:
        """Attach a pointer to a call slot (pjsua2 keeps its Call object there); returns the pj_status_t."""
        return int(self._lib.pjsua_call_set_user_data(call_id, user_data))

    @property
    def prints_remote_sdp(self) -> bool:
        return "pjsua_call_print_rem_nego_sdp" in self.optional

    def call_remote_sdp(self, call_id: int) -> str | None:
        """The far end's SDP of the call's active negotiation, as text; None before one, or on a
        build without voiceload's patch (then the engine cannot learn SRTP keys or rtcp-mux)."""
        if not self.prints_remote_sdp:
            return None
        buf = ctypes.create_string_buffer(SDP_MAX)
        n = int(self._lib.pjsua_call_print_rem_nego_sdp(call_id, buf, SDP_MAX))
        return buf.raw[:n].decode("utf-8", "replace") if n > 0 else None
