//! Building and running vipd from a config.
