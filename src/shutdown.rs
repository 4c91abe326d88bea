//! OS signals turned into cancellation.
