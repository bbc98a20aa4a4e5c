"""Feature benchmark: `propensity features` against the same features written as DuckDB SQL,
on the same generated Parquet files, timed in the same run.

    make bench                      # or: python3 bench/run.py [--events 10000000] [--repeat 3]

Needs the release binary (`cargo build --release -p propensity-cli`) and `pip install duckdb`.
Each measurement is a fresh process; wall time and peak RSS (from wait4) are recorded; the
table reports medians. Results go to bench/results.json and are printed as Markdown.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/propensity"
AS_OF = "2026-11-01T00:00:00Z"


def measure(cmd):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    if status != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err.decode()}")
    return seconds, ru.ru_maxrss / 1024, json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--profiles", type=int, default=250_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cutoffs", default="1,2,4")
    a = ap.parse_args()
    data = ROOT / "bench/data"
    marker = data / "generated.json"
    want = {"events": a.events, "profiles": a.profiles, "end": "2026-11-01", "seed": 42}
    if not marker.exists() or json.loads(marker.read_text()) != want:
        print(f"generating {a.events:,} events of {a.profiles:,} profiles …", flush=True)
        subprocess.run([BIN, "generate", "--out", data, "--profiles", str(a.profiles), "--events", str(a.events),
                        "--end", "2026-11-01", "--seed", "42"], check=True)
        marker.write_text(json.dumps(want))
    job = (ROOT / "jobs/conversion-purchase-30d.toml").read_text()
    job = job.replace("../data/demo/", f"{data}/")
    job_path = ROOT / "bench/data/job.toml"
    job_path.write_text(job)
    results = []
    for k in [int(x) for x in a.cutoffs.split(",")]:
        ours, ref = [], []
        for _ in range(a.repeat):
            s, rss, doc = measure([BIN, "features", job_path, "--as-of", AS_OF, "--snapshots", str(k - 1),
                                   "--out", data / f"ours-{k}.parquet"])
            ours.append((s, rss, doc))
            s, rss, doc = measure([sys.executable, ROOT / "bench/features_duckdb.py", data, AS_OF, str(k - 1),
                                   data / f"duckdb-{k}.parquet"])
            ref.append((s, rss, doc))
        row = {
            "cutoffs": k,
            "ours_seconds": statistics.median(x[0] for x in ours),
            "ours_peak_mib": statistics.median(x[1] for x in ours),
            "ours_rows": ours[0][2]["rows"],
            "ours_stages": ours[0][2]["seconds"],
            "duckdb_seconds": statistics.median(x[0] for x in ref),
            "duckdb_peak_mib": statistics.median(x[1] for x in ref),
            "duckdb_rows": ref[0][2]["rows"],
            "features": ours[0][2]["features"],
            "events": ours[0][2]["events_kept"],
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    parity = check_parity(data, max(int(x) for x in a.cutoffs.split(",")))
    (ROOT / "bench/results.json").write_text(json.dumps({"results": results, "parity": parity}, indent=2) + "\n")
    one = results[0]
    print()
    print("| cutoffs | propensity (s) | DuckDB (s) | ratio | propensity peak MiB | DuckDB peak MiB | rows (ours / DuckDB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['cutoffs']} | {r['ours_seconds']:.2f} | {r['duckdb_seconds']:.2f} | "
              f"{r['ours_seconds'] / r['duckdb_seconds']:.2f} | {r['ours_peak_mib']:.0f} | {r['duckdb_peak_mib']:.0f} | "
              f"{r['ours_rows']:,} / {r['duckdb_rows']:,} |")
    print()
    for r in results[1:]:
        print(f"{r['cutoffs']} cutoffs / 1 cutoff: propensity {r['ours_seconds'] / one['ours_seconds']:.2f}x, "
              f"DuckDB {r['duckdb_seconds'] / one['duckdb_seconds']:.2f}x")
    print("parity:", json.dumps(parity))


def check_parity(data, k):
    """The two outputs hold the same rows and the same values for a sample of features."""
    import duckdb
    con = duckdb.connect()
    ours = f"read_parquet('{data}/ours-{k}.parquet')"
    ref = f"read_parquet('{data}/duckdb-{k}.parquet')"
    cols = ["event_count_30d", "commerce_purchases_count_90d", "active_days_90d", "cart_add_count_7d"]
    out = {}
    q = lambda sql: con.execute(sql).fetchone()
    out["rows"] = [q(f"SELECT count(*) FROM {ours}")[0], q(f"SELECT count(*) FROM {ref}")[0]]
    out["positives"] = [q(f"SELECT count(*) FILTER (WHERE label) FROM {ours}")[0],
                        q(f"SELECT count(*) FILTER (WHERE label) FROM {ref}")[0]]
    for c in cols:
        out[c] = [q(f"SELECT sum({c}) FROM {ours}")[0], q(f"SELECT sum({c}) FROM {ref}")[0]]
    out["days_since_last_event_mean"] = [
        round(q(f"SELECT avg(days_since_last_event) FROM {ours}")[0], 4),
        round(q(f"SELECT avg(days_since_last_event) FROM {ref}")[0], 4)]
    mism = q(f"""SELECT count(*) FROM {ours} o JOIN {ref} r ON o.profile_id = r.pid AND o.cutoff = r.cutoff
                 WHERE o.event_count_90d <> r.event_count_90d
                    OR o.gap_days_max IS DISTINCT FROM CAST(r.gap_days_max AS FLOAT)
                    OR abs(o.gap_days_std - r.gap_days_std) > 1e-4
                    OR abs(o.commerce_order_pricetotal_mean_30d - r.price_mean_30d) > 1e-3
                    OR abs(o.event_count_trend_30d - r.event_count_trend_30d) > 1e-5
                    OR abs(o.days_since_first_goal_event - r.days_since_first_goal_event) > 1e-3""")[0]
    out["rows_differing_in_any_of_6_more_features"] = mism
    return out


if __name__ == "__main__":
    main()
