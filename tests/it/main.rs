//! The integration tests: one binary, helpers in `util`.

mod archive;
mod cli;
mod proxy;
mod store;
mod tidy;
mod util;
