//! The data plane being built to replace the tokio one: vipd's own edge-triggered event loop on
//! mio ([`mio_loop`]), chosen at startup by `VIPD_DATA_PLANE=mio`, so `benches/compare` can run
//! it beside the tokio data path on the same config and snapshot. It won the spike against an
//! io_uring loop (figures and reasons in benches/README.md); until it carries every behaviour of
//! the tokio path (splice, buffers released while idle, UDP), tokio stays the default. Without
//! the variable (or with `tokio`) nothing here runs.

use std::cell::Cell;
use std::sync::OnceLock;

use thiserror::Error;

pub mod mio_loop;

/// Which loop serves TCP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlane {
    /// vipd's tokio accept loop and connection tasks (the default).
    Tokio,
    /// Spike (a): vipd's own edge-triggered epoll loop on mio ([`mio_loop`]).
    Mio,
}

/// `VIPD_DATA_PLANE` names no data plane.
#[derive(Debug, Error)]
#[error("VIPD_DATA_PLANE={0:?}: expected one of {NAMES}")]
pub struct UnknownDataPlane(String);

const NAMES: &str = "\"tokio\", \"mio\"";

impl DataPlane {
    /// Parses a `VIPD_DATA_PLANE` value.
    pub fn parse(value: &str) -> Result<DataPlane, UnknownDataPlane> {
        match value {
            "" | "tokio" => Ok(DataPlane::Tokio),
            "mio" => Ok(DataPlane::Mio),
            other => Err(UnknownDataPlane(other.to_owned())),
        }
    }

    /// The data plane `VIPD_DATA_PLANE` asks for, read once per process.
    pub fn from_env() -> Result<DataPlane, &'static UnknownDataPlane> {
        static CHOSEN: OnceLock<Result<DataPlane, UnknownDataPlane>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| DataPlane::parse(&std::env::var("VIPD_DATA_PLANE").unwrap_or_default()))
            .as_ref()
            .copied()
    }

    /// The data plane listeners opened from this thread get: the one chosen by
    /// [`DataPlane::select_on_this_thread`], else [`DataPlane::from_env`] (checked at startup).
    pub fn current() -> DataPlane {
        ON_THIS_THREAD
            .get()
            .unwrap_or_else(|| DataPlane::from_env().unwrap_or(DataPlane::Tokio))
    }

    /// Chooses the data plane of listeners opened from this thread (`None`: back to the
    /// environment's). For tests: each in-process vipd of a test runs on its test's thread
    /// (the app task opens listeners there), so tests of one binary can use different data
    /// planes side by side, which a process-wide choice would not allow.
    pub fn select_on_this_thread(plane: Option<DataPlane>) {
        ON_THIS_THREAD.set(plane);
    }
}

thread_local! {
    static ON_THIS_THREAD: Cell<Option<DataPlane>> = const { Cell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_strangers_are_refused() {
        assert_eq!(DataPlane::parse("").unwrap(), DataPlane::Tokio);
        assert_eq!(DataPlane::parse("tokio").unwrap(), DataPlane::Tokio);
        assert_eq!(DataPlane::parse("mio").unwrap(), DataPlane::Mio);
        let error = DataPlane::parse("epoll2").unwrap_err().to_string();
        assert!(error.contains("\"epoll2\""), "{error}");
    }
}
