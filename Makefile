# Propensity — common tasks. CI (.ci/run) runs the same targets a person runs.
CARGO ?= cargo

.DEFAULT_GOAL := help

.PHONY: help demo build plugins test lint fmt schema golden deps bench bench-models bench-candidates bench-sinks bench-quality

help: ## List the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

demo: ## Generate sample data, train and score the example job, print the summary and the report path
	$(CARGO) run --locked -p propensity-cli -- demo --dir data/demo

build: plugins ## Build the `propensity` binary and the goal plugins (debug)
	$(CARGO) build --locked -p propensity-cli

PLUGINS := repeat_purchase subscription_lapse funnel_completion spend_threshold faulty_goal old_abi_goal

plugins: ## Build the goal plugins (and the fault-test fixtures) into target/debug/, where propensity finds them
	$(CARGO) build --locked $(addprefix -p ,$(PLUGINS))

test: plugins ## Run the whole test suite (builds the plugins first: the plugin tests load them)
	$(CARGO) test --locked --workspace --all-targets
	$(CARGO) test --locked --workspace --doc

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

deps: ## Unused dependencies (needs `cargo install cargo-machete`; deliberate ones are listed under [package.metadata.cargo-machete])
	cargo machete

fmt: ## Format the code
	$(CARGO) fmt --all

schema: ## Regenerate schema/job-v1.schema.json from the job-file types
	$(CARGO) run --locked -q -p propensity-cli -- schema --output schema/job-v1.schema.json

golden: ## Rewrite golden files (tests/data/bad/*.expected, the schema) after a deliberate change
	UPDATE_GOLDEN=1 $(CARGO) test --locked --workspace --all-targets

bench-models: ## GBDT / logistic / SVM against LightGBM on the same features (needs `pip install lightgbm numpy pyarrow scikit-learn`); see bench/README.md
	$(CARGO) build --locked -p propensity-cli
	python3 bench/models.py

bench-quality: ## The untuned job against recency, RFM, BG/NBD, Pareto/NBD and LightGBM on real next-window outcomes (needs `pip install numpy pandas pyarrow lightgbm scikit-learn scipy lifetimes`); see bench/README.md
	$(CARGO) build --locked -p propensity-cli
	python3 bench/quality.py

bench-sinks: ## Rows per second published per sink for 1M score rows, each beside a plain-client reference (needs PostgreSQL and Redis on loopback); see bench/README.md
	$(CARGO) run --locked -q -p propensity-runtime --example sink_bench > bench/results-sinks.json

bench-candidates: ## forust-ml and perpetual on the arrays `make bench-models` wrote (run it first); see bench/README.md
	cd bench/candidates && $(CARGO) run --release --locked -- ../data-models/arrays

bench: ## Feature benchmark against DuckDB (release build; needs `pip install duckdb`); see bench/README.md
	$(CARGO) build --locked --release -p propensity-cli
	python3 bench/run.py
