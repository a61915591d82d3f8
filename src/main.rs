use clap::Parser;

/// mimalloc: the pipeline allocates and frees many small strings across threads, where it is
/// markedly faster than the system allocator (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`, entry 15 of mimalloc's option enum in v2 and v3 (the Rust binding
/// does not name it). Its documented default is 10 ms in v2 and 1000 ms in v3.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    let cli = wormvault::cli::Cli::parse();
    // In the pipeline (the daemon, imports) memory freed by one batch is reused by the next,
    // and in a sweep by the next segment: returning it to the OS after the default delay only
    // makes the kernel zero it again (a full sweep spent 5-10 % of its CPU time so), and peak
    // memory is bounded by configuration and by the segments checked at once. Anchoring and
    // retrieval keep the default.
    // SAFETY: plain option calls, before any other thread exists; the value read first checks
    // that the index still holds the purge delay (one of its documented defaults).
    if cli.command.reuses_freed_memory() {
        unsafe {
            if matches!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                10 | 1000
            ) {
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
            }
        }
    }
    wormvault::cli::run(cli)
}
