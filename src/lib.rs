//! wormvault: a tamper-evident, write-once archive of business events on S3 Object Lock.
pub mod canonical;
pub mod event;
pub mod layout;
pub mod manifest;
pub mod merkle;
pub mod retention;
pub mod segment;
pub mod store;
pub mod timestamp;
