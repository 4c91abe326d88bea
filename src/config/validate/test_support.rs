//! Helpers shared by the validation tests: load a config from text, collect its problem lines,
//! and build the one-service config most cases start from.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError, from_str};

pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
    from_str(text, Path::new("vipd.toml"))
}

/// The problem lines of an `Invalid` error.
pub(super) fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Err(e @ ConfigError::Invalid { .. }) => e.to_string().lines().map(String::from).collect(),
        other => panic!("expected Invalid for\n{text}\ngot {other:?}"),
    }
}

/// A one-service config with `extra` appended inside the service table.
pub(super) fn service(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\n\
         ports = [{{ port = 8000, target_port = 9000 }}]\nendpoints = [\"10.0.0.1\"]\n{extra}"
    )
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Asserts that each case's text fails with exactly its one problem line.
pub(super) fn assert_each_reports(cases: Vec<(String, &str)>) {
    for (text, want) in cases {
        assert_eq!(problems(&text), vec![want.to_string()], "for\n{text}");
    }
}
