"""An independent verifier of a wormvault archive, written from docs/FORMAT.md.

It shares no code with wormvault: pyarrow reads the segments, hashlib recomputes every leaf
and Merkle root, its own JCS (RFC 8785) serializer checks the canonical bytes, and DuckDB
queries the Hive layout in place.

usage: verify_archive.py ARCHIVE_DIR [--periods JSON]

ARCHIVE_DIR holds the archive's objects as files named by their keys (a local store's
directory, or a download of a bucket). --periods maps retention classes to periods, e.g.
'{"sec-17a-4-a": [6, 0, 0]}' (years, months, days); by default the shipped classes.

Prints one JSON document: counts, the archived event ids, and a list of problems (empty when
the archive is consistent).
"""

import datetime as dt
import decimal
import hashlib
import json
import math
import os
import sys

import duckdb
import pyarrow.parquet as pq

SHIPPED = {"sec-17a-4-a": [6, 0, 0], "sec-17a-4-b": [3, 0, 0], "finra-4511": [6, 0, 0], "cftc-1-31": [5, 0, 0]}

COLUMNS = [
    ("seq", "int64"),
    ("event_id", "string"),
    ("occurred_at", "timestamp[us, tz=UTC]"),
    ("ingested_at", "timestamp[us, tz=UTC]"),
    ("actor_type", "string"),
    ("actor_id", "string"),
    ("actor_role", "string"),
    ("action", "string"),
    ("subject_type", "string"),
    ("subject_id", "string"),
    ("origin_ip", "string"),
    ("origin_device", "string"),
    ("source", "string"),
    ("retention_class", "string"),
    ("correlation_id", "string"),
    ("payload", "string"),
    ("canonical", "binary"),
    ("leaf_hash", "fixed_size_binary[32]"),
]


# --- RFC 6962 -------------------------------------------------------------------------------

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves):
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


# --- RFC 8785 -------------------------------------------------------------------------------

def jcs_number(x):
    """ECMAScript Number.prototype.toString of a double (RFC 8785 section 3.2.2.3)."""
    if isinstance(x, bool):
        raise TypeError
    if isinstance(x, int) and abs(x) <= 2**53:
        return str(x)
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        raise ValueError("not finite")
    if x == 0:
        return "0"
    sign, digs, exp = decimal.Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digs))
    n = len(digits) + exp  # value = 0.digits * 10**n
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return ("-" if sign else "") + out


def jcs_string(s):
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\r":
            out.append("\\r")
        elif c < 0x20:
            out.append("\\u%04x" % c)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jcs(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return jcs_number(v)
    if isinstance(v, str):
        return jcs_string(v)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v.keys(), key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(v[k]) for k in keys) + "}"
    raise TypeError(type(v))


# --- time -----------------------------------------------------------------------------------

def parse_ts(s):
    assert s.endswith("Z") and len(s) == 27, s
    return dt.datetime.strptime(s[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)


def fmt_ts(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def add_period(t, years, months, days):
    """Calendar addition; a date that does not exist moves to the 1st of the next month."""
    total = t.year * 12 + (t.month - 1) + years * 12 + months
    y, m = divmod(total, 12)
    m += 1
    try:
        d = t.replace(year=y, month=m)
    except ValueError:
        y2, m2 = (y + 1, 1) if m == 12 else (y, m + 1)
        d = t.replace(year=y2, month=m2, day=1)
    return d + dt.timedelta(days=days)


# --- the checks -----------------------------------------------------------------------------

def main():
    root = sys.argv[1]
    periods = dict(SHIPPED)
    if "--periods" in sys.argv:
        periods.update(json.loads(sys.argv[sys.argv.index("--periods") + 1]))
    problems = []
    manifests = {}
    for dirpath, _, files in os.walk(os.path.join(root, "manifests")):
        for f in files:
            path = os.path.join(dirpath, f)
            key = os.path.relpath(path, root)
            with open(path, "rb") as fh:
                raw = fh.read()
            m = json.loads(raw)
            if jcs(m).encode() != raw:
                problems.append(f"{key}: manifest bytes are not its RFC 8785 canonical form")
            manifests[key] = (m, raw)

    event_ids = []
    chains = {}
    lanes = {}
    n_rows = 0
    for key, (m, raw) in sorted(manifests.items()):
        info = m["info"]
        chains.setdefault(info["writer"], []).append((info["batch_idx"], key, m, raw))
        lanes.setdefault((info["writer"], info["day"], info["retention_class"]), []).append(info)
        seg_key = m["segment"]["key"]
        expect_key = f"segments/dt={info['day']}/{info['writer']}-{info['batch_idx']:012d}.parquet"
        if not seg_key.endswith(expect_key):
            problems.append(f"{key}: segment key {seg_key} does not follow the layout ({expect_key})")
        if not key.endswith(f"manifests/dt={info['day']}/{info['writer']}-{info['batch_idx']:012d}.json"):
            problems.append(f"{key}: manifest key does not follow the layout")
        seg_path = os.path.join(root, seg_key)
        with open(seg_path, "rb") as fh:
            seg = fh.read()
        if hashlib.sha256(seg).hexdigest() != m["segment"]["sha256"]:
            problems.append(f"{seg_key}: SHA-256 differs from the manifest")
        if hashlib.md5(seg).hexdigest() != m["segment"]["md5"]:
            problems.append(f"{seg_key}: MD5 differs from the manifest")
        if len(seg) != m["segment"]["size"]:
            problems.append(f"{seg_key}: size differs from the manifest")
        if parse_ts(m["retain_until"]) < parse_ts(info["retain_until"]):
            problems.append(f"{key}: manifest is locked for less time than its segment")

        pf = pq.ParquetFile(seg_path)
        footer = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items() if k.startswith(b"wormvault.")}
        for field, value in info.items():
            if footer.get("wormvault." + field) != (value if isinstance(value, str) else json.dumps(value)):
                problems.append(f"{seg_key}: footer {field} = {footer.get('wormvault.' + field)!r}, manifest says {value!r}")
        table = pf.read()
        schema = [(f.name, str(f.type)) for f in table.schema]
        if schema != COLUMNS:
            problems.append(f"{seg_key}: schema {schema}")
            continue
        rows = table.to_pylist()
        n_rows += len(rows)
        if len(rows) != info["n_events"]:
            problems.append(f"{seg_key}: {len(rows)} rows, manifest says {info['n_events']}")
        leaves = []
        period = periods.get(info["retention_class"])
        for i, r in enumerate(rows):
            canonical = r["canonical"]
            leaf = leaf_hash(canonical)
            leaves.append(leaf)
            if leaf != r["leaf_hash"]:
                problems.append(f"{seg_key} row {i}: leaf_hash column differs from SHA-256(0x00 || canonical)")
            rec = json.loads(canonical)
            if jcs(rec).encode() != canonical:
                problems.append(f"{seg_key} row {i}: canonical bytes are not RFC 8785 canonical")
            if r["seq"] != info["first_seq"] + i:
                problems.append(f"{seg_key} row {i}: seq {r['seq']}, expected {info['first_seq'] + i}")
            actor, subject, origin = rec["actor"], rec["subject"], rec.get("origin") or {}
            expect = {
                "event_id": rec["event_id"],
                "occurred_at": rec["occurred_at"],
                "ingested_at": rec["ingested_at"],
                "actor_type": actor["type"],
                "actor_id": actor["id"],
                "actor_role": actor.get("role"),
                "action": rec["action"],
                "subject_type": subject["type"],
                "subject_id": subject["id"],
                "origin_ip": origin.get("ip"),
                "origin_device": origin.get("device"),
                "source": rec["source"],
                "retention_class": rec["retention_class"],
                "correlation_id": rec.get("correlation_id"),
                "payload": jcs(rec["payload"]),
            }
            got = dict(r)
            got["occurred_at"] = fmt_ts(r["occurred_at"])
            got["ingested_at"] = fmt_ts(r["ingested_at"])
            for col, want in expect.items():
                if got[col] != want:
                    problems.append(f"{seg_key} row {i}: column {col} = {got[col]!r}, canonical says {want!r}")
            if rec["retention_class"] != info["retention_class"]:
                problems.append(f"{seg_key} row {i}: class differs from the segment's")
            occurred = parse_ts(rec["occurred_at"])
            # On the segment's day, or earlier for a late event (FORMAT.md §11).
            if occurred.strftime("%Y-%m-%d") > info["day"]:
                problems.append(f"{seg_key} row {i}: occurred_at {rec['occurred_at']} is after the segment's day {info['day']}")
            if period is None:
                problems.append(f"{seg_key}: unknown retention class {info['retention_class']}")
            elif parse_ts(info["retain_until"]) < add_period(occurred, *period):
                problems.append(f"{seg_key} row {i}: retain-until {info['retain_until']} is earlier than occurred_at + {period}")
            event_ids.append(rec["event_id"])
        if mth(leaves).hex() != info["merkle_root"]:
            problems.append(f"{seg_key}: recomputed Merkle root {mth(leaves).hex()} differs from the manifest's {info['merkle_root']}")

    for writer, items in chains.items():
        items.sort()
        for n, (idx, key, m, raw) in enumerate(items):
            if idx != n:
                problems.append(f"writer {writer}: batch_idx {idx} where {n} was expected (a gap)")
                break
            prev = None if n == 0 else hashlib.sha256(items[n - 1][3]).hexdigest()
            if m["prev_manifest_sha256"] != prev:
                problems.append(f"{key}: prev_manifest_sha256 does not link to batch {n - 1}")
    for lane, infos in lanes.items():
        infos.sort(key=lambda i: i["batch_idx"])
        expect = 1
        for info in infos:
            if info["first_seq"] != expect or info["last_seq"] - info["first_seq"] + 1 != info["n_events"]:
                problems.append(f"lane {lane}: batch {info['batch_idx']} covers {info['first_seq']}-{info['last_seq']}, expected to start at {expect}")
            expect = info["last_seq"] + 1

    duck = {"rows": 0, "distinct_event_ids": 0}
    seg_dir = os.path.join(root, "segments")
    if os.path.isdir(seg_dir):
        con = duckdb.connect()
        q = f"SELECT count(*), count(DISTINCT event_id), count(DISTINCT dt) FROM read_parquet('{seg_dir}/*/*.parquet', hive_partitioning = true)"
        rows, distinct, days = con.execute(q).fetchone()
        duck = {"rows": rows, "distinct_event_ids": distinct, "days": days}
        if rows != n_rows:
            problems.append(f"DuckDB counts {rows} rows over the Hive layout, pyarrow {n_rows}")

    print(json.dumps({
        "manifests": len(manifests),
        "events": len(event_ids),
        "event_ids": sorted(event_ids),
        "writers": {w: len(v) for w, v in chains.items()},
        "duckdb": duck,
        "problems": problems,
    }))


if __name__ == "__main__":
    main()
