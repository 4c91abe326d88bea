//! Validation: raw → typed.

use std::path::Path;

use super::raw::RawConfig;
use super::{Config, ConfigError, Runtime};

/// Validates a parsed file.
pub fn validate(_raw: RawConfig, _path: &Path) -> Result<Config, ConfigError> {
    Ok(Config {
        runtime: Runtime { workers: None },
        admin: None,
        services: vec![],
    })
}
