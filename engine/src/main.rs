fn main() -> std::process::ExitCode {
    sluice_engine::cli::main()
}
