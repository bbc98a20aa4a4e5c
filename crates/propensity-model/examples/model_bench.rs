//! Trains, scores and explains on exported feature arrays and prints one JSON object of
//! timings and quality figures; `bench/models.py` runs it beside LightGBM on the same arrays.
//!
//! Usage: `model_bench DIR` where DIR holds `train_x.f32`, `train_y.u8`, `valid_x.f32`,
//! `valid_y.u8`, `score_x.f32` and `meta.json` (`{"width": W, ...}`).

use std::path::Path;
use std::time::Instant;

use propensity_model::Matrix;
use propensity_model::gbdt::{self, GbdtParams};
use propensity_model::linear::Linear;
use propensity_model::metrics;
use propensity_model::pipeline::{self, CalibrationMethod, Model, Scorer};

fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn quality(margins: &[f64], y: &[u8]) -> (f64, f64, f64) {
    let labels: Vec<bool> = y.iter().map(|l| *l == 1).collect();
    let auc = metrics::auc(margins, &labels).unwrap_or(f64::NAN);
    let probs = pipeline::cross_fitted(CalibrationMethod::Isotonic, margins, y);
    let ece = metrics::expected_calibration_error(&probs, &labels);
    let raw: Vec<f64> = margins.iter().map(|m| 1.0 / (1.0 + (-m).exp())).collect();
    (auc, ece, metrics::log_loss(&raw, &labels))
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: model_bench DIR"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json"))
            .expect("meta.json is JSON");
    let width = meta["width"].as_u64().expect("width") as usize;
    let tx = read_f32(&dir.join("train_x.f32"));
    let ty = std::fs::read(dir.join("train_y.u8")).expect("train_y.u8");
    let vx = read_f32(&dir.join("valid_x.f32"));
    let vy = std::fs::read(dir.join("valid_y.u8")).expect("valid_y.u8");
    let sx = read_f32(&dir.join("score_x.f32"));
    let (train, valid, scoring) = (
        Matrix::new(&tx, width),
        Matrix::new(&vx, width),
        Matrix::new(&sx, width),
    );

    // GBDT with the job defaults and the pipeline's class weight.
    let pos = ty.iter().filter(|l| **l == 1).count();
    let neg = ty.len() - pos;
    let mut p = GbdtParams::default();
    if pos < neg && pos > 0 {
        p.pos_weight = (neg as f64 / pos as f64).sqrt().clamp(1.0, 10.0);
    }
    let t = Instant::now();
    let (g, log) = gbdt::train(train, &ty, Some((valid, &vy)), &p, &|_, _| {});
    let train_seconds = t.elapsed().as_secs_f64();
    let model = Model::Gbdt(g);
    let (auc, ece, logloss) = quality(&pipeline::margins(&model, valid), &vy);
    let t = Instant::now();
    let m = pipeline::margins(&model, scoring);
    let predict = scoring.rows as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(m);
    let scorer = Scorer::new(model, propensity_model::calibrate::Calibrator::None);
    let shap_rows = scoring.rows.min(20_000);
    let head = Matrix::new(&sx[..shap_rows * width], width);
    let t = Instant::now();
    let scored = pipeline::score(&scorer, head, &[], 5, 75, 25, &|_, _| {});
    let shap = shap_rows as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(scored);

    if std::env::var("MODEL_BENCH_ONLY").is_ok_and(|v| v == "gbdt") {
        println!(
            "{}",
            serde_json::json!({"gbdt": {"train_seconds": train_seconds, "trees": log.trees,
            "auc": auc, "predict_rows_per_s": predict, "shap_rows_per_s": shap}})
        );
        return;
    }
    let t = Instant::now();
    let lr = Linear::fit_logistic(train, &ty, 42).expect("logistic");
    let lr_seconds = t.elapsed().as_secs_f64();
    let (lr_auc, lr_ece, _) = quality(&pipeline::margins(&Model::Linear(lr), valid), &vy);
    let t = Instant::now();
    let svm = Linear::fit_svm(train, &ty, 42).expect("svm");
    let svm_seconds = t.elapsed().as_secs_f64();
    let sample_rows = svm.fitted_rows;
    let (svm_auc, svm_ece, _) = quality(&pipeline::margins(&Model::Linear(svm), valid), &vy);

    let out = serde_json::json!({
        "gbdt": {"train_seconds": train_seconds, "trees": log.trees, "auc": auc, "ece": ece,
                 "predict_rows_per_s": predict, "shap_rows_per_s": shap, "logloss": logloss,
                 "pos_weight": p.pos_weight, "binning_seconds": log.binning_seconds},
        "logistic": {"train_seconds": lr_seconds, "auc": lr_auc, "ece": lr_ece},
        "svm": {"train_seconds": svm_seconds, "auc": svm_auc, "ece": svm_ece, "sample_rows": sample_rows},
    });
    println!("{out}");
}
