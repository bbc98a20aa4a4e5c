//! The crate graph follows ARCHITECTURE.md: every `propensity-*` dependency of a crate is in a
//! lower layer of the table there.

use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `crate → layer` from the table rows "| `propensity-x` | N | …" of ARCHITECTURE.md.
fn layers() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let name = cells[1].trim_matches('`');
        if let (true, Ok(layer)) = (name.starts_with("propensity-"), cells[2].parse::<u32>()) {
            assert!(
                out.insert(name.to_owned(), layer).is_none(),
                "{name} is listed twice"
            );
        }
    }
    out
}

/// The `propensity-*` names under `[dependencies]` and `[build-dependencies]` (dev-dependencies
/// may reach up: a test may drive a crate through the ones above it).
fn dependencies(manifest: &Path) -> Vec<String> {
    let doc: toml::Table = std::fs::read_to_string(manifest)
        .expect("manifest")
        .parse()
        .expect("manifest is TOML");
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| doc.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .filter(|k| k.starts_with("propensity-"))
        .collect()
}

/// What breaks the rule: crates without a layer, dependencies on the same or a higher layer.
fn violations(layers: &BTreeMap<String, u32>, crates: &[(String, Vec<String>)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (name, deps) in crates {
        let Some(&own) = layers.get(name) else {
            wrong.push(format!(
                "{name} is not in ARCHITECTURE.md's table of layers"
            ));
            continue;
        };
        for dep in deps {
            match layers.get(dep) {
                None => wrong.push(format!("{name} depends on {dep}, which has no layer")),
                Some(&l) if l >= own => wrong.push(format!(
                    "{name} (layer {own}) depends on {dep} (layer {l}): only lower layers may be used"
                )),
                Some(_) => {}
            }
        }
    }
    wrong
}

#[test]
fn every_dependency_points_to_a_lower_layer() {
    let layers = layers();
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        let manifest = dir.join("Cargo.toml");
        if manifest.exists() {
            let name = dir
                .file_name()
                .expect("a crate folder")
                .to_string_lossy()
                .into_owned();
            crates.push((name, dependencies(&manifest)));
        }
    }
    assert!(crates.len() >= 10, "found only {} crates", crates.len());
    for listed in layers.keys() {
        assert!(
            crates.iter().any(|(n, _)| n == listed),
            "ARCHITECTURE.md lists {listed}, which is not under crates/"
        );
    }
    let wrong = violations(&layers, &crates);
    assert!(
        wrong.is_empty(),
        "crate graph against ARCHITECTURE.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn sideways_upward_and_unlisted_edges_are_caught() {
    let layers = layers();
    assert_eq!(layers.get("propensity-core"), Some(&0));
    assert_eq!(layers.get("propensity-cli"), Some(&5));
    let deps =
        |name: &str, d: &[&str]| (name.to_owned(), d.iter().map(|s| (*s).to_owned()).collect());
    let wrong = violations(
        &layers,
        &[
            // what this layout removed: sinks on the engine (sideways, same layer)
            deps(
                "propensity-sinks",
                &["propensity-common", "propensity-engine"],
            ),
            // upward
            deps("propensity-engine", &["propensity-runtime"]),
            deps("propensity-new", &[]),
            deps(
                "propensity-runtime",
                &["propensity-engine", "propensity-sinks", "propensity-x"],
            ),
        ],
    );
    assert_eq!(wrong.len(), 4, "{wrong:#?}");
    assert!(wrong[0].contains("propensity-sinks (layer 2) depends on propensity-engine (layer 2)"));
    assert!(
        wrong[1].contains("propensity-engine (layer 2) depends on propensity-runtime (layer 3)")
    );
    assert!(wrong[2].contains("propensity-new is not in"));
    assert!(wrong[3].contains("propensity-x, which has no layer"));
}
