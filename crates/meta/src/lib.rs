//! Meta server: broker registry, subject routing, client state and admin operations.
