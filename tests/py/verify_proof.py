"""An independent verifier of one wormvault proof bundle, written from docs/FORMAT.md §11-12.

Usage: verify_proof.py BUNDLE.json [VERIFIER_KEY]

Uses only hashlib, base64, json and the `cryptography` package's Ed25519. Prints a JSON report
{"valid": bool, "problems": [...], ...} and exits 0 either way (the caller asserts).
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def leaf(b: bytes) -> bytes:
    return sha256(b"\x00" + b)


def node(l: bytes, r: bytes) -> bytes:
    return sha256(b"\x01" + l + r)


def root_from_proof(index: int, size: int, h: bytes, proof: list) -> bytes | None:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, h
    for p in proof:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def hexes(v: list) -> list:
    out = []
    for h in v:
        if len(h) != 64 or h != h.lower():
            raise ValueError(f"not a lower-case hex hash: {h!r}")
        out.append(bytes.fromhex(h))
    return out


def parse_vkey(vkey: str):
    name, key_id, material = vkey.split("+", 2)
    raw = base64.b64decode(material, validate=True)
    if len(raw) != 33 or raw[0] != 1:
        raise ValueError("not an Ed25519 note key")
    if sha256(name.encode() + b"\n" + raw)[:4] != bytes.fromhex(key_id):
        raise ValueError("key id does not match the key")
    return name, bytes.fromhex(key_id), Ed25519PublicKey.from_public_bytes(raw[1:])


def open_note(note: str, vkey: str) -> str:
    name, key_id, public = parse_vkey(vkey)
    text, sep, sigs = note.rpartition("\n\n")
    if not sep:
        raise ValueError("no blank line before the signatures")
    text += "\n"
    for line in sigs.rstrip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            raise ValueError(f"bad signature line {line!r}")
        who, blob = line[2:].split(" ", 1)
        raw = base64.b64decode(blob, validate=True)
        if who == name and raw[:4] == key_id:
            try:
                public.verify(raw[4:], text.encode())
            except InvalidSignature:
                raise ValueError("the anchor's signature does not verify")
            return text
    raise ValueError("the anchor has no signature by the key")


def verify(bundle: dict, vkey: str | None) -> dict:
    problems = []
    event_bytes = bundle["event"].encode()
    event = json.loads(event_bytes)
    if event.get("event_id") != bundle["event_id"]:
        problems.append("event_id differs")
    manifest_bytes = bundle["manifest"].encode()
    manifest = json.loads(manifest_bytes)
    info = manifest["info"]
    if manifest["segment"]["key"] != bundle["segment_key"]:
        problems.append("the manifest names another segment")
    seg_root = root_from_proof(bundle["leaf_index"], info["n_events"], leaf(event_bytes), hexes(bundle["segment_proof"]))
    if seg_root is None or seg_root.hex() != info["merkle_root"]:
        problems.append("the event is not in the segment root")
    key = vkey or bundle["public_key"]
    if vkey and vkey != bundle["public_key"]:
        problems.append("the bundle's key is not the expected one")
    text = open_note(bundle["anchor"], key)
    lines = text.rstrip("\n").split("\n")
    if len(lines) != 5 or not lines[3].startswith("wormvault-day ") or not lines[4].startswith("wormvault-prev "):
        problems.append("the anchor is not a wormvault daily root")
        return {"valid": False, "problems": problems}
    origin, size, root_b64, day = lines[0], int(lines[1]), lines[2], lines[3].split(" ", 1)[1]
    day_root = root_from_proof(bundle["manifest_index"], size, leaf(manifest_bytes), hexes(bundle["day_proof"]))
    if day_root is None or day_root != base64.b64decode(root_b64, validate=True):
        problems.append("the manifest is not in the anchored daily root")
    if info["day"] != day:
        problems.append("the manifest's day is not the anchor's")
    if event["occurred_at"][:10] > day:
        problems.append("the event occurred after the day it was archived on")
    return {
        "valid": not problems,
        "problems": problems,
        "origin": origin,
        "day": day,
        "late": event["occurred_at"][:10] < day,
    }


def main():
    bundle = json.load(open(sys.argv[1], encoding="utf-8"))
    vkey = sys.argv[2] if len(sys.argv) > 2 else None
    try:
        report = verify(bundle, vkey)
    except (ValueError, KeyError, TypeError) as e:
        report = {"valid": False, "problems": [str(e)]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
