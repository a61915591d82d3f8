"""Reads a wormvault record index with DuckDB (docs/FORMAT.md §13): row count, and whether
rows are sorted by (subject_type, subject_id, occurred_at)."""

import json
import sys

import duckdb

path = sys.argv[1]
con = duckdb.connect()
rows = con.execute(f"select count(*) from read_parquet('{path}')").fetchone()[0]
out_of_order = con.execute(
    f"""select count(*) from (
          select subject_type, subject_id, occurred_at,
                 lag(subject_type) over (order by n) as pt,
                 lag(subject_id) over (order by n) as pi,
                 lag(occurred_at) over (order by n) as po
          from (select *, row_number() over () as n from read_parquet('{path}')))
        where pt > subject_type
           or (pt = subject_type and pi > subject_id)
           or (pt = subject_type and pi = subject_id and po > occurred_at)"""
).fetchone()[0]
print(json.dumps({"rows": rows, "sorted": out_of_order == 0}))
