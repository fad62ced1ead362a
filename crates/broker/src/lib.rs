//! Realtime broker: accepts sends, serves pulls and acks on top of the store.

pub mod scheduler;
pub mod subjects;
pub mod tags;
