"""Model benchmark: our gradient-boosted trees (and the logistic and SVM baselines) against
LightGBM, on the same feature arrays, timed in the same run.

    make bench-models               # or: python3 bench/models.py [--profiles 200000]
                                    #       [--events 20000000] [--snapshots 4] [--repeat 3]

Needs the release binary (`cargo build --release -p propensity-cli`) and
`pip install numpy pyarrow lightgbm scikit-learn`.

1. `propensity generate` writes events and profiles into bench/data-models/ (skipped when
   bench/data-models/generated.json says the same data is already there), then
   `propensity features` computes the features of `--snapshots` cutoffs (the scoring cutoff and
   `--snapshots - 1` training cutoffs) into one Parquet file.
2. That file is split into flat arrays in bench/data-models/arrays/: the latest training
   cutoff is the validation set, the older training cutoffs are the training set, the scoring
   cutoff (null labels) is only predicted. Both sides read these same files.
3. In alternation, fresh processes of our `model_bench` example (built once, before any timing)
   and of LightGBM (this script with `--lightgbm-worker`), with the same hyper-parameters.
   Wall time and peak RSS (wait4) are recorded per process; the tables report medians.

Results go to bench/results-models.json and are printed as Markdown.
"""
import argparse
import importlib.util
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# The driver only starts processes, so it imports nothing heavy: a child's peak RSS (wait4)
# counts the memory of the parent it was forked from until it execs, and the conversion and
# LightGBM run in their own processes (`--convert`, `--lightgbm-worker`).
DEPENDENCIES = {"numpy": "numpy", "pyarrow": "pyarrow", "lightgbm": "lightgbm", "sklearn": "scikit-learn"}
INSTALL = "pip install numpy pyarrow lightgbm scikit-learn"
np = pa = pc = pq = lgb = None


def check_dependencies():
    missing = [pkg for mod, pkg in DEPENDENCIES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        sys.exit(f"bench/models.py needs {', '.join(missing)}: {INSTALL}")


def _load():
    """Imports numpy, pyarrow, lightgbm and scikit-learn (in the processes that use them)."""
    global np, pa, pc, pq, lgb
    if lgb is not None:
        return
    try:
        import numpy
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
        import lightgbm
        import sklearn.isotonic
        import sklearn.metrics
    except ImportError as e:
        sys.exit(f"bench/models.py: {e}: {INSTALL}")
    np, pa, pc, pq, lgb = numpy, pyarrow, pyarrow.compute, pyarrow.parquet, lightgbm


ROOT = Path(__file__).resolve().parent.parent
# Generating data and computing features are not what this bench times: the debug build
# (whose engine crate is optimised, see Cargo.toml) is used when there is no release build.
BIN = next((b for b in (ROOT / "target/release/propensity", ROOT / "target/debug/propensity") if b.exists()),
           ROOT / "target/release/propensity")
DATA = ROOT / "bench/data-models"
RESULTS = ROOT / "bench/results-models.json"
AS_OF = "2026-11-01T00:00:00Z"
END = "2026-11-01"
SEED = 42
SHAP_ROWS = 20_000
AUC_TOLERANCE = 0.005
ECE_BINS = 10

# The same hyper-parameters as our side: jobs/conversion-purchase-30d.toml [model.gbdt] and
# propensity_model::gbdt::GbdtParams::default() (lambda_l2 1.0, 255 bins, min_sum_hessian 1e-3,
# which is also LightGBM's default min_sum_hessian_in_leaf).
NUM_BOOST_ROUND = 300
EARLY_STOPPING_ROUNDS = 30
LGB_PARAMS = {
    "objective": "binary",
    "metric": "binary_logloss",
    "num_leaves": 31,
    "max_depth": 6,
    "learning_rate": 0.05,
    "min_data_in_leaf": 20,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "num_threads": 2,
    "deterministic": True,
    "seed": SEED,
    "verbose": -1,
}

OURS_KEYS = {
    "gbdt": ["train_seconds", "trees", "auc", "ece", "predict_rows_per_s", "shap_rows_per_s", "logloss"],
    "logistic": ["train_seconds", "auc", "ece"],
    "svm": ["train_seconds", "auc", "ece", "sample_rows"],
}


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def measure(cmd):
    """Runs one fresh process; returns (wall seconds, peak RSS MiB, the JSON it printed)."""
    cmd = [str(c) for c in cmd]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    drain = threading.Thread(target=lambda: err.append(p.stderr.read()))  # neither pipe can fill up
    drain.start()
    out = p.stdout.read()
    drain.join()
    _, status, ru = os.wait4(p.pid, 0)  # reaps the child: its own peak RSS
    seconds = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)  # already reaped: Popen must not wait again
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[0].decode(errors='replace')}")
    return seconds, ru.ru_maxrss / 1024, parse_json(out, cmd)


def parse_json(out, cmd):
    """The process's stdout as one JSON object (tolerating log lines before it)."""
    text = out.decode(errors="replace").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lines = text.splitlines()
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    sys.exit(f"expected one JSON object on stdout of: {' '.join(cmd)}\ngot:\n{text[:2000]}")


def build_example():
    """Builds the model_bench example once; returns the path of its executable.

    The timed runs start this executable directly, so `cargo run`'s freshness checks are not
    part of the measured wall time (the same binary `cargo run --release --locked -q -p
    propensity-model --example model_bench` would start)."""
    cmd = ["cargo", "build", "--release", "--locked", "-p", "propensity-model", "--example", "model_bench",
           "--message-format=json-render-diagnostics"]
    print("building:", " ".join(cmd[:-1]), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("cargo build of the model_bench example failed (see above)")
    exe = None
    for line in p.stdout.decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg.get("target", {}).get("name") == "model_bench"):
            exe = msg["executable"]
    if not exe:
        sys.exit("cargo build succeeded but reported no model_bench executable")
    return Path(exe)


# ---------------------------------------------------------------------------------------------
# Data: generate, features, arrays
# ---------------------------------------------------------------------------------------------

def prepare_features(a):
    if not BIN.exists():
        sys.exit(f"{BIN} not found: cargo build --locked -p propensity-cli")
    DATA.mkdir(parents=True, exist_ok=True)
    marker = DATA / "generated.json"
    want = {"events": a.events, "profiles": a.profiles, "end": END, "seed": SEED}
    if not marker.exists() or json.loads(marker.read_text()) != want:
        print(f"generating {a.events:,} events of {a.profiles:,} profiles …", flush=True)
        subprocess.run([BIN, "generate", "--out", DATA, "--profiles", str(a.profiles), "--events", str(a.events),
                        "--end", END, "--seed", str(SEED)], check=True)
        marker.write_text(json.dumps(want))
    job = (ROOT / "jobs/conversion-purchase-30d.toml").read_text()
    job = job.replace("../data/demo/", f"{DATA}/")
    job_path = DATA / "job.toml"
    job_path.write_text(job)
    out = DATA / "features.parquet"
    print(f"features: {a.snapshots} cutoffs (scoring + {a.snapshots - 1} training) …", flush=True)
    seconds, _, doc = measure([BIN, "features", job_path, "--as-of", AS_OF, "--snapshots", str(a.snapshots - 1),
                               "--out", out])
    print(f"  {seconds:.1f} s", flush=True)
    return out, doc


def to_matrix(table, features):
    """Row-major float32 (little-endian) matrix of the feature columns; null -> NaN."""
    x = np.empty((table.num_rows, len(features)), dtype="<f4")
    for j, name in enumerate(features):
        col = table.column(name)
        if col.type != pa.float32():
            if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
                    or pa.types.is_boolean(col.type)):
                sys.exit(f"feature column {name!r} has type {col.type}, expected float32")
            col = pc.cast(col, pa.float32())
        col = pc.fill_null(col, float("nan"))
        x[:, j] = col.to_numpy()
    return x


def convert(parquet, out_dir):
    """Splits the features Parquet into the exchange arrays the Rust example reads.

    Training cutoffs (labels set): the latest one is validation, the older ones training.
    The scoring cutoff (all labels null) is the largest cutoff. Returns a summary dict."""
    _load()
    table = pq.read_table(parquet)
    names = table.column_names
    for c in ("profile_id", "cutoff", "label"):
        if c not in names:
            sys.exit(f"{parquet}: no {c!r} column")
    features = [c for c in names if c not in ("profile_id", "cutoff", "label")]
    if not features:
        sys.exit(f"{parquet}: no feature columns")
    cutoff = pc.cast(table.column("cutoff"), pa.int64()).to_numpy()
    label_null = table.column("label").is_null().to_numpy(zero_copy_only=False)
    label = pc.fill_null(table.column("label"), False).to_numpy(zero_copy_only=False).astype(np.uint8)

    cutoffs = np.unique(cutoff)
    score_cutoff = cutoffs.max()
    is_score = cutoff == score_cutoff
    if not label_null[is_score].all() or label_null[~is_score].any():
        sys.exit(f"{parquet}: expected null labels exactly on the largest cutoff (the scoring cutoff)")
    training = cutoffs[cutoffs != score_cutoff]
    if len(training) < 2:
        sys.exit(f"{parquet}: {len(training)} training cutoff(s); need at least 2 "
                 "(older ones for training, the latest for validation): use --snapshots 3 or more")
    valid_cutoff = training.max()
    masks = {
        "train": (~is_score) & (cutoff != valid_cutoff),
        "valid": cutoff == valid_cutoff,
        "score": is_score,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    positives = {}
    for split, mask in masks.items():
        part = table.filter(pa.array(mask))
        x = to_matrix(part, features)
        x.tofile(out_dir / f"{split}_x.f32")
        rows[split] = int(x.shape[0])
        del x, part
        if split != "score":
            y = np.ascontiguousarray(label[mask], dtype=np.uint8)
            y.tofile(out_dir / f"{split}_y.u8")
            positives[split] = int(y.sum())
    meta = {
        "width": len(features),
        "features": features,
        "train_rows": rows["train"],
        "valid_rows": rows["valid"],
        "score_rows": rows["score"],
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    iso = lambda us: np.datetime_as_string(np.datetime64(int(us), "us"), unit="s") + "Z"
    return {
        "width": len(features),
        "rows": rows,
        "positives": positives,
        "cutoffs": {
            "train": [iso(c) for c in sorted(training[training != valid_cutoff])],
            "valid": iso(valid_cutoff),
            "score": iso(score_cutoff),
        },
    }


def load_arrays(d):
    _load()
    meta = json.loads((d / "meta.json").read_text())
    w = meta["width"]

    def x(name, rows):
        a = np.fromfile(d / f"{name}_x.f32", dtype="<f4")
        if a.size != rows * w:
            sys.exit(f"{d}/{name}_x.f32: {a.size} values, expected {rows} x {w}")
        return a.reshape(rows, w)

    def y(name, rows):
        a = np.fromfile(d / f"{name}_y.u8", dtype=np.uint8)
        if a.size != rows:
            sys.exit(f"{d}/{name}_y.u8: {a.size} labels, expected {rows}")
        return a

    return (meta, x("train", meta["train_rows"]), y("train", meta["train_rows"]),
            x("valid", meta["valid_rows"]), y("valid", meta["valid_rows"]), x("score", meta["score_rows"]))


# ---------------------------------------------------------------------------------------------
# Metrics (the same definitions as our side)
# ---------------------------------------------------------------------------------------------

def ece(p, y, bins=ECE_BINS):
    """Expected calibration error: equal-width bins on [0, 1], count-weighted
    |mean predicted - observed rate|."""
    _load()
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    nz = n > 0
    return float(np.sum(np.abs(sp[nz] - sy[nz])) / p.size)


def cross_fitted_isotonic(p, y):
    """Isotonic calibration fitted on one half of the validation rows (by row index parity) and
    applied to the other half, both ways. Returns the calibrated probabilities."""
    _load()
    from sklearn.isotonic import IsotonicRegression
    out = np.empty(p.size, dtype=np.float64)
    idx = np.arange(p.size)
    for fit, apply in ((idx % 2 == 0, idx % 2 == 1), (idx % 2 == 1, idx % 2 == 0)):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p[fit], y[fit])
        out[apply] = iso.predict(p[apply])
    return out


def logloss(p, y):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# ---------------------------------------------------------------------------------------------
# LightGBM side (runs in its own process: python3 bench/models.py --lightgbm-worker DIR)
# ---------------------------------------------------------------------------------------------

def lightgbm_worker(d, layout, shap_rows):
    _load()
    from sklearn.metrics import roc_auc_score
    meta, tx, ty, vx, vy, sx = load_arrays(Path(d))
    params = dict(LGB_PARAMS)
    params["force_col_wise" if layout == "col" else "force_row_wise"] = True
    # The same class weight as our pipeline: positives weighted sqrt(negatives / positives),
    # 1 to 10, when they are the minority.
    pos = int(ty.sum())
    neg = len(ty) - pos
    if 0 < pos < neg:
        params["scale_pos_weight"] = min(max((neg / pos) ** 0.5, 1.0), 10.0)
    t0 = time.perf_counter()
    dtrain = lgb.Dataset(tx, label=ty, params=params, free_raw_data=False).construct()
    # Early stopping watches the same loss as ours: the validation loss weighted like training.
    vw = np.where(vy == 1, params.get("scale_pos_weight", 1.0), 1.0)
    dvalid = lgb.Dataset(vx, label=vy, weight=vw, reference=dtrain, params=params, free_raw_data=False).construct()
    t1 = time.perf_counter()
    evals = {}
    booster = lgb.train(params, dtrain, num_boost_round=NUM_BOOST_ROUND, valid_sets=[dvalid], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False),
                                   lgb.record_evaluation(evals)])
    t2 = time.perf_counter()
    # lgb.train keeps the trees up to the best iteration; the rounds run include the patience.
    trained = len(evals["valid"]["binary_logloss"])
    best = booster.best_iteration or booster.current_iteration()

    pv = booster.predict(vx, num_iteration=best, num_threads=2)
    calibrated = cross_fitted_isotonic(pv, vy.astype(np.float64))

    t = time.perf_counter()
    booster.predict(sx, num_iteration=best, raw_score=True, num_threads=2)
    predict_s = time.perf_counter() - t

    sl = sx[:shap_rows]
    t = time.perf_counter()
    booster.predict(sl, num_iteration=best, pred_contrib=True, num_threads=2)
    shap_s = time.perf_counter() - t

    doc = {
        "train_seconds": t2 - t0,
        "dataset_seconds": t1 - t0,
        "trees": int(best),
        "trees_trained": trained,
        "auc": float(roc_auc_score(vy, pv)),
        "ece": ece(calibrated, vy),
        "ece_raw": ece(pv, vy),
        "logloss": logloss(pv, vy),
        "predict_rows_per_s": sx.shape[0] / predict_s if predict_s > 0 else float("inf"),
        "shap_rows_per_s": sl.shape[0] / shap_s if shap_s > 0 else float("inf"),
        "shap_rows": int(sl.shape[0]),
        "layout": layout,
        "lightgbm_version": lgb.__version__,
    }
    print(json.dumps(doc))


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def check_ours(doc, cmd):
    missing = [f"{m}.{k}" for m, keys in OURS_KEYS.items() for k in keys
               if not isinstance(doc.get(m), dict) or k not in doc[m]]
    if missing:
        sys.exit(f"{cmd} printed JSON without {', '.join(missing)}; expected "
                 + json.dumps({m: {k: "…" for k in keys} for m, keys in OURS_KEYS.items()}))


def median_of(runs, path):
    """Median over the runs that have a number at `path`."""
    vals = []
    for r in runs:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(v)
    return statistics.median(vals)


def medians(runs):
    """Median of every numeric leaf across runs (same shape as one run)."""
    def walk(sample, path):
        if isinstance(sample, dict):
            return {k: walk(v, path + [k]) for k, v in sample.items()}
        if isinstance(sample, bool) or not isinstance(sample, (int, float)):
            return sample
        return median_of(runs, path)
    return walk(runs[0], [])


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    ap = argparse.ArgumentParser(description="Our GBDT (and logistic, SVM) against LightGBM on the same arrays.")
    ap.add_argument("--profiles", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--snapshots", type=int, default=4,
                    help="cutoffs in the features file: the scoring cutoff + (snapshots-1) training cutoffs, "
                         "the latest of which is validation (default 4; at least 3)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lightgbm-layout", choices=["col", "row"], default="col",
                    help="force_col_wise or force_row_wise (LightGBM asks for one with deterministic=true)")
    ap.add_argument("--lightgbm-worker", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--convert", nargs=2, metavar=("PARQUET", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--shap-rows", type=int, default=SHAP_ROWS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.lightgbm_worker:
        lightgbm_worker(a.lightgbm_worker, a.lightgbm_layout, a.shap_rows)
        return
    if a.convert:
        print(json.dumps(convert(Path(a.convert[0]), Path(a.convert[1]))))
        return
    check_dependencies()
    if a.snapshots < 3:
        sys.exit("--snapshots must be at least 3 (scoring cutoff, validation cutoff, one or more training cutoffs)")
    if a.repeat < 1:
        sys.exit("--repeat must be at least 1")

    parquet, features_doc = prepare_features(a)
    arrays = DATA / "arrays"
    _, _, summary = measure([sys.executable, Path(__file__).resolve(), "--convert", parquet, arrays])
    print(f"arrays: {summary['width']} features; rows train {summary['rows']['train']:,} "
          f"({summary['positives']['train']:,} positives), valid {summary['rows']['valid']:,} "
          f"({summary['positives']['valid']:,}), score {summary['rows']['score']:,}", flush=True)

    exe = build_example()
    ours_cmd = [exe, arrays]
    lgb_cmd = [sys.executable, Path(__file__).resolve(), "--lightgbm-worker", arrays,
               "--lightgbm-layout", a.lightgbm_layout, "--shap-rows", str(a.shap_rows)]
    ours, ref = [], []
    for i in range(a.repeat):
        s, rss, doc = measure(ours_cmd)
        check_ours(doc, "model_bench")
        ours.append({"wall_seconds": s, "peak_mib": rss, **doc})
        print(f"[{i + 1}/{a.repeat}] ours: {s:.1f} s wall, {rss:.0f} MiB; gbdt train {doc['gbdt']['train_seconds']:.2f} s, "
              f"AUC {doc['gbdt']['auc']:.4f}", flush=True)
        s, rss, doc = measure(lgb_cmd)
        ref.append({"wall_seconds": s, "peak_mib": rss, **doc})
        print(f"[{i + 1}/{a.repeat}] LightGBM: {s:.1f} s wall, {rss:.0f} MiB; train {doc['train_seconds']:.2f} s, "
              f"AUC {doc['auc']:.4f}", flush=True)

    mo, ml = medians(ours), medians(ref)
    g = mo["gbdt"]
    gap = g["auc"] - ml["auc"]
    results = {
        "config": {
            "profiles": a.profiles, "events": a.events, "snapshots": a.snapshots, "repeat": a.repeat,
            "as_of": AS_OF, "seed": SEED, "shap_rows": a.shap_rows,
            "lightgbm_version": version("lightgbm"), "sklearn_version": version("scikit-learn"),
            "numpy_version": version("numpy"), "pyarrow_version": version("pyarrow"),
            "lightgbm_params": {**LGB_PARAMS, "num_boost_round": NUM_BOOST_ROUND,
                                "early_stopping_rounds": EARLY_STOPPING_ROUNDS,
                                f"force_{a.lightgbm_layout}_wise": True},
            "ece": f"{ECE_BINS} equal-width bins, count-weighted; 'ece' after 2-fold cross-fitted isotonic "
                   "calibration on the validation cutoff (folds by row index parity)",
        },
        "data": {**summary, "features_run": features_doc},
        "runs": {"ours": ours, "lightgbm": ref},
        "medians": {"ours": mo, "lightgbm": ml},
        "auc_gap": gap,
        "auc_gap_within_tolerance": abs(gap) <= AUC_TOLERANCE,
        "auc_tolerance": AUC_TOLERANCE,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    n = a.repeat
    print()
    print(f"| medians of {n} | ours (gbdt) | LightGBM {version('lightgbm')} | ratio (ours / LightGBM) |")
    print("|---|---|---|---|")
    rows = [
        ("train s", "train_seconds", "{:.2f}", "{:.2f}"),
        ("trees", "trees", "{:.0f}", "{:.2f}"),
        ("validation AUC", "auc", "{:.4f}", "{:.3f}"),
        ("ECE (isotonic, cross-fitted)", "ece", "{:.4f}", "{:.2f}"),
        ("predict rows/s", "predict_rows_per_s", "{:,.0f}", "{:.2f}"),
        ("SHAP rows/s", "shap_rows_per_s", "{:,.0f}", "{:.2f}"),
    ]
    for label, key, fmt, rfmt in rows:
        print(f"| {label} | {fmt.format(g[key])} | {fmt.format(ml[key])} | {rfmt.format(ratio(g[key], ml[key]))} |")
    print()
    print("| model | validation AUC | ECE | train s | training rows |")
    print("|---|---|---|---|---|")
    print(f"| gbdt (ours) | {g['auc']:.4f} | {g['ece']:.4f} | {g['train_seconds']:.2f} | {summary['rows']['train']:,} |")
    print(f"| LightGBM | {ml['auc']:.4f} | {ml['ece']:.4f} | {ml['train_seconds']:.2f} | {summary['rows']['train']:,} |")
    lo, sv = mo["logistic"], mo["svm"]
    print(f"| logistic (ours) | {lo['auc']:.4f} | {lo['ece']:.4f} | {lo['train_seconds']:.2f} | {summary['rows']['train']:,} |")
    print(f"| svm (ours) | {sv['auc']:.4f} | {sv['ece']:.4f} | {sv['train_seconds']:.2f} | {sv['sample_rows']:,.0f} (sample) |")
    print()
    print(f"AUC gap (ours - LightGBM): {gap:+.4f}; within {AUC_TOLERANCE}: {'yes' if abs(gap) <= AUC_TOLERANCE else 'NO'}")
    print(f"LightGBM raw (uncalibrated) ECE: {ml['ece_raw']:.4f}; validation logloss: ours {g['logloss']:.4f}, "
          f"LightGBM {ml['logloss']:.4f} (raw probabilities); LightGBM trees trained {ml['trees_trained']:.0f} "
          f"(best {ml['trees']:.0f}), binning {ml['dataset_seconds']:.2f} s of its train s")
    print(f"process wall s / peak MiB: ours {mo['wall_seconds']:.1f} / {mo['peak_mib']:.0f}, "
          f"LightGBM {ml['wall_seconds']:.1f} / {ml['peak_mib']:.0f} (both include reading the arrays)")
    print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
