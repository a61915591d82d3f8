//! The integration tests: one binary, helpers in `util`.

mod anchor;
mod archive;
mod bucket;
mod cli;
mod daemon;
mod proxy;
mod rti;
mod store;
mod sweep;
mod terraform;
mod tidy;
mod util;
