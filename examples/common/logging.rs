//! The logger of the examples and the `rewardsds` binary (included with `#[path = ...] mod logging;`).

/// Sends the engine's `log` records to stderr: warnings and errors by default (a truncated
/// prompt, an ignored setting), more with `RUST_LOG` (e.g. `RUST_LOG=info`).
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("warn");
    // A second init (never in these examples) would only keep the first logger.
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp(None)
        .try_init();
}
