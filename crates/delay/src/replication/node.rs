//! A replicated delay server's life.
