//! forust-ml and perpetual on the arrays `bench/models.py` writes: training time, validation
//! AUC, prediction and contribution throughput. Prints one JSON object.
//!
//! Usage: `gbdt-candidates DIR [--perpetual-budget 0.5]`

use std::time::Instant;

fn read_f32(p: &std::path::Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Column-major f64, as both crates want.
fn columns(x: &[f32], width: usize) -> (Vec<f64>, usize) {
    let rows = x.len() / width;
    let mut out = vec![0.0; rows * width];
    for r in 0..rows {
        for c in 0..width {
            out[c * rows + r] = f64::from(x[r * width + c]);
        }
    }
    (out, rows)
}

/// Rank AUC with ties averaged.
fn auc(scores: &[f64], y: &[u8]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            if y[idx[k]] == 1 {
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    let pos = y.iter().filter(|v| **v == 1).count() as f64;
    let neg = y.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: gbdt-candidates DIR"));
    let budget: f32 = args
        .iter()
        .position(|a| a == "--perpetual-budget")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json")).expect("json");
    let width = meta["width"].as_u64().expect("width") as usize;
    let (tx, n) = columns(&read_f32(&dir.join("train_x.f32")), width);
    let (vx, m) = columns(&read_f32(&dir.join("valid_x.f32")), width);
    let (sx, s) = columns(&read_f32(&dir.join("score_x.f32")), width);
    let ty: Vec<f64> = std::fs::read(dir.join("train_y.u8")).expect("y").iter().map(|v| f64::from(*v)).collect();
    let vy8 = std::fs::read(dir.join("valid_y.u8")).expect("y");
    let vy: Vec<f64> = vy8.iter().map(|v| f64::from(*v)).collect();
    let pos = ty.iter().filter(|v| **v == 1.0).count() as f64;
    let pos_weight = ((ty.len() as f64 - pos) / pos).sqrt().clamp(1.0, 10.0);
    let w: Vec<f64> = ty.iter().map(|y| if *y == 1.0 { pos_weight } else { 1.0 }).collect();
    let vw: Vec<f64> = vy.iter().map(|y| if *y == 1.0 { pos_weight } else { 1.0 }).collect();
    let shap_rows = 2_000.min(s);
    let (head, _) = columns(&read_f32(&dir.join("score_x.f32"))[..shap_rows * width], width);
    let mut out = serde_json::Map::new();

    // forust-ml: LightGBM-like settings (leaf-wise, 31 leaves, depth 6, lr 0.05, 300 trees,
    // L2 1, 256 bins, early stopping 30 on the weighted validation log loss).
    {
        use forust_ml::gradientbooster::{ContributionsMethod, GrowPolicy};
        use forust_ml::metric::Metric;
        use forust_ml::objective::ObjectiveType;
        use forust_ml::{GradientBooster, Matrix};
        let train = Matrix::new(&tx, n, width);
        let valid = Matrix::new(&vx, m, width);
        let mut b = GradientBooster::default()
            .set_objective_type(ObjectiveType::LogLoss)
            .set_iterations(300)
            .set_learning_rate(0.05)
            .set_max_depth(6)
            .set_max_leaves(31)
            .set_l2(1.0)
            .set_nbins(256)
            .set_min_leaf_weight(1e-3)
            .set_num_threads(Some(2))
            .set_missing(f64::NAN)
            .set_evaluation_metric(Some(Metric::LogLoss))
            .set_early_stopping_rounds(Some(30));
        b.grow_policy = GrowPolicy::LossGuide;
        let t = Instant::now();
        b.fit(&train, &ty, &w, Some(vec![(Matrix::new(&vx, m, width), vy.as_slice(), vw.as_slice())]))
            .expect("forust fit");
        let train_s = t.elapsed().as_secs_f64();
        let a = auc(&b.predict(&valid, true), &vy8);
        let t = Instant::now();
        let p = b.predict(&Matrix::new(&sx, s, width), true);
        let predict = s as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(p);
        let t = Instant::now();
        let c = b.predict_contributions(&Matrix::new(&head, shap_rows, width), ContributionsMethod::Shapley, true);
        let shap = shap_rows as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(c);
        out.insert(
            "forust-ml 0.8.0".into(),
            serde_json::json!({"train_seconds": train_s, "trees": b.best_iteration.unwrap_or(b.trees.len()),
                "auc": a, "predict_rows_per_s": predict, "shap_rows_per_s": shap}),
        );
        eprintln!("forust: {train_s:.1} s, AUC {a:.4}");
    }

    // perpetual: its own budget instead of hyper-parameters; LogLoss.
    {
        use perpetual::objective::Objective;
        use perpetual::{ContributionsMethod, Matrix, PerpetualBooster};
        let train = Matrix::new(&tx, n, width);
        let valid = Matrix::new(&vx, m, width);
        let mut b = PerpetualBooster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(budget)
            .set_num_threads(Some(2));
        let t = Instant::now();
        b.fit(&train, &ty, Some(&w), None).expect("perpetual fit");
        let train_s = t.elapsed().as_secs_f64();
        let a = auc(&b.predict(&valid, true), &vy8);
        let t = Instant::now();
        let p = b.predict(&Matrix::new(&sx, s, width), true);
        let predict = s as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(p);
        let t = Instant::now();
        let c = b.predict_contributions(&Matrix::new(&head, shap_rows, width), ContributionsMethod::Shapley, true);
        let shap = shap_rows as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(c);
        out.insert(
            format!("perpetual 3.0.0-rc.2 (budget {budget})"),
            serde_json::json!({"train_seconds": train_s, "trees": b.get_prediction_trees().len(),
                "auc": a, "predict_rows_per_s": predict, "shap_rows_per_s": shap}),
        );
        eprintln!("perpetual: {train_s:.1} s, AUC {a:.4}");
    }
    println!("{}", serde_json::Value::Object(out));
}
