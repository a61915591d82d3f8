"""Checks an unzipped RTI package independently: the PyPI `bagit` validator, and DuckDB
reading records.parquet and records.csv (same rows). Usage: check_package.py BAG_DIR"""

import json
import sys

import bagit
import duckdb

bag_dir = sys.argv[1]
bag = bagit.Bag(bag_dir)
valid = True
error = None
try:
    bag.validate()
except bagit.BagValidationError as e:
    valid, error = False, str(e)
con = duckdb.connect()
pq_ids = [r[0] for r in con.execute(
    f"select event_id from read_parquet('{bag_dir}/data/records.parquet') order by event_id").fetchall()]
csv_ids = [r[0] for r in con.execute(
    f"select event_id from read_csv('{bag_dir}/data/records.csv', header=true, all_varchar=true) order by event_id").fetchall()]
subjects = sorted({r[0] for r in con.execute(
    f"select subject_id from read_parquet('{bag_dir}/data/records.parquet')").fetchall()})
print(json.dumps({
    "bagit_valid": valid,
    "error": error,
    "records": len(pq_ids),
    "parquet_equals_csv": pq_ids == csv_ids,
    "subjects": subjects,
    "case": bag.info.get("Wormvault-Case"),
}))
