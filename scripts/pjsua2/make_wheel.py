"""Wrap a built pjsua2 SWIG module (pjsua2.py + _pjsua2*.so) into an installable wheel.

pjproject's own setup.py only knows `install` (an egg that extracts the .so into a cache dir
at import); a plain wheel installs unzipped and is cached as one file. The distribution is named
`pjsua2-python`, like the PyPI wheel it replaces, with a local version (`2.12.1+voiceload.<hash>`)
so pip sees voiceload's requirement met and `voiceload doctor` can tell the builds apart.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import sysconfig
import zipfile
from pathlib import Path

DIST = "pjsua2_python"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(out: Path, version: str, module: Path, extension: Path, licence: Path | None) -> None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    info = f"{DIST}-{version}.dist-info"
    files: dict[str, bytes] = {
        "pjsua2.py": module.read_bytes(),
        extension.name: extension.read_bytes(),
        f"{info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: pjsua2-python\nVersion: {version}\n"
            "Summary: pjsua2 built by voiceload (scripts/build-pjsua2.sh): 1024 calls per process\n"
            "License: GPL-2.0-or-later\n"
        ).encode(),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: voiceload make_wheel\nRoot-Is-Purelib: false\n"
            f"Tag: {tag}-{tag}-{platform}\n"
        ).encode(),
        f"{info}/top_level.txt": b"_pjsua2\npjsua2\n",
    }
    if licence is not None and licence.exists():
        files[f"{info}/COPYING"] = licence.read_bytes()
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    tmp = out.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--module", type=Path, required=True)
    ap.add_argument("--extension", type=Path, required=True)
    ap.add_argument("--licence", type=Path)
    args = ap.parse_args()
    make_wheel(args.out, args.version, args.module, args.extension, args.licence)


if __name__ == "__main__":
    main()
