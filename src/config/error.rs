//! Errors from loading a config file, and how they are printed.
//!
//! The `Display` of [`ConfigError`] is what the CLI shows the user, so its shapes are part of
//! the contract (see `config/README.md`):
//!
//! - syntax/type errors: `FILE:LINE:COL: message` (one line, 1-based position);
//! - semantic errors: one line per problem, `FILE: service "NAME": KEY: message` or
//!   `FILE: KEY: message` for global keys.

use std::fmt;
use std::path::PathBuf;

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the file's schema (unknown key, wrong type,
    /// bad duration, missing required key).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// The parser's message, on one line.
        message: String,
    },
    /// The file parsed but its values are inconsistent; every problem found is listed.
    #[error("{}", DisplayProblems { path, problems })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order; never empty.
        problems: Vec<Problem>,
    },
}

/// One semantic problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The service the key belongs to, if any.
    pub scope: ProblemScope,
    /// The key path inside the scope, e.g. `health.timeout` or `ports[1].port`.
    pub key: String,
    /// What is wrong, without the key.
    pub message: String,
}

/// Which part of the file a [`Problem`] is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemScope {
    /// A top-level table (`runtime`, `admin`, `defaults`) or the file as a whole.
    Global,
    /// A service with a valid name.
    Service(String),
    /// A service whose name is itself invalid, by 1-based position in the file.
    ServiceIndex(usize),
}

impl fmt::Display for ProblemScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemScope::Global => Ok(()),
            ProblemScope::Service(name) => write!(f, "service \"{name}\""),
            ProblemScope::ServiceIndex(n) => write!(f, "service #{n}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope != ProblemScope::Global {
            write!(f, "{}: ", self.scope)?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Formats `Invalid`: one `FILE: problem` line per problem, no trailing newline.
struct DisplayProblems<'a> {
    path: &'a PathBuf,
    problems: &'a [Problem],
}

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_display_is_one_line_with_position() {
        let e = ConfigError::Syntax {
            path: "vipd.toml".into(),
            line: 4,
            column: 1,
            message: "unknown field `bogus`".into(),
        };
        assert_eq!(e.to_string(), "vipd.toml:4:1: unknown field `bogus`");
    }

    #[test]
    fn invalid_display_lists_every_problem() {
        let e = ConfigError::Invalid {
            path: "vipd.toml".into(),
            problems: vec![
                Problem {
                    scope: ProblemScope::Global,
                    key: "runtime.workers".into(),
                    message: "must be at least 1".into(),
                },
                Problem {
                    scope: ProblemScope::Service("web".into()),
                    key: "health.timeout".into(),
                    message: "2s must be shorter than health.period (1s)".into(),
                },
                Problem {
                    scope: ProblemScope::ServiceIndex(2),
                    key: "name".into(),
                    message: "must not be empty".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "vipd.toml: runtime.workers: must be at least 1\n\
             vipd.toml: service \"web\": health.timeout: 2s must be shorter than health.period (1s)\n\
             vipd.toml: service #2: name: must not be empty"
        );
    }
}
