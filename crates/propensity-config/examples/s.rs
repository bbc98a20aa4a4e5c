fn main(){ println!("{}", serde_json::to_string_pretty(&propensity_config::schema()).unwrap()); }
