//! Stops a build of the simulation that lacks `--cfg tokio_unstable` with the reason, instead of
//! a missing-method error deep inside: the flag comes from sim/.cargo/config.toml, which cargo
//! reads only when it runs from sim/.

fn main() {
    // The flag's presence changes only with the rustflags, which rebuild everything anyway.
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_CFG_TOKIO_UNSTABLE").is_none() {
        eprintln!(
            "palaver-sim needs `--cfg tokio_unstable` (tokio's seeded scheduler): run cargo from \
             sim/, where sim/.cargo/config.toml sets it"
        );
        std::process::exit(1);
    }
}
