#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    // wasmtime builds (and drops) error values on hot paths; with `RUST_BACKTRACE=1` set, each
    // would capture a backtrace (~20 µs per action). Panics still print theirs; set
    // `RUST_LIB_BACKTRACE=1` to get error backtraces too.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    sluice_engine::cli::main()
}
