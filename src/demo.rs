//! `vipd demo`.
