//! Data-plane spikes: alternative TCP relays for one worker socket, chosen at startup by the
//! `VIPD_DATA_PLANE` environment variable, so `benches/compare` can run each beside the tokio
//! data path on the same config and snapshot. The winner becomes vipd's data plane; the rest is
//! deleted. Without the variable (or with `tokio`) nothing here runs.

use std::sync::OnceLock;

use thiserror::Error;

pub mod uring;

/// Which loop serves TCP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlane {
    /// vipd's tokio accept loop and connection tasks (the default).
    Tokio,
    /// One io_uring per worker socket on a thread of its own (`uring.rs`).
    IoUring,
}

/// `VIPD_DATA_PLANE` names no data plane.
#[derive(Debug, Error)]
#[error("VIPD_DATA_PLANE={0:?}: expected one of {NAMES}")]
pub struct UnknownDataPlane(String);

const NAMES: &str = "\"tokio\", \"io_uring\"";

impl DataPlane {
    /// Parses a `VIPD_DATA_PLANE` value.
    pub fn parse(value: &str) -> Result<DataPlane, UnknownDataPlane> {
        match value {
            "" | "tokio" => Ok(DataPlane::Tokio),
            "io_uring" => Ok(DataPlane::IoUring),
            other => Err(UnknownDataPlane(other.to_owned())),
        }
    }

    /// The data plane `VIPD_DATA_PLANE` asks for, read once per process.
    pub fn from_env() -> Result<DataPlane, &'static UnknownDataPlane> {
        CHOSEN
            .get_or_init(|| DataPlane::parse(&std::env::var("VIPD_DATA_PLANE").unwrap_or_default()))
            .as_ref()
            .copied()
    }

    /// Chooses the data plane for this process instead of `VIPD_DATA_PLANE`; refused once the
    /// choice was read (or set).
    pub fn set_for_process(plane: DataPlane) -> Result<(), AlreadyChosen> {
        CHOSEN.set(Ok(plane)).map_err(|_| AlreadyChosen)
    }
}

/// The data plane of this process was already read or set.
#[derive(Debug, Error)]
#[error("the data plane of this process was already chosen")]
pub struct AlreadyChosen;

/// The process's data plane, read once.
static CHOSEN: OnceLock<Result<DataPlane, UnknownDataPlane>> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_strangers_are_refused() {
        assert_eq!(DataPlane::parse("").unwrap(), DataPlane::Tokio);
        assert_eq!(DataPlane::parse("tokio").unwrap(), DataPlane::Tokio);
        let error = DataPlane::parse("epoll2").unwrap_err().to_string();
        assert!(error.contains("\"epoll2\""), "{error}");
    }
}
