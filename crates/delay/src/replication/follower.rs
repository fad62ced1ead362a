//! The slave's copy loops.
/// How often the slave polls the master's dispatch state.
pub const DISPATCH_POLL: std::time::Duration = std::time::Duration::from_millis(500);
