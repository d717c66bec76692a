//! Embeds the web client (`web/`) into the binary at build time; see `src/transport/web.rs`.

fn main() {
    // memory-serve reports every file as a cargo warning unless told to be quiet; its sizes are
    // logged at start instead.
    // SAFETY: the build script is single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("MEMORY_SERVE_QUIET", "1") };
    // Always embedded, also in debug builds, so tests serve exactly what a release serves.
    memory_serve::load_directory_with_embed("web", true);
}
