//! Partition-free storage: message log, consume logs, pull logs, action log, checkpoints and recovery.
