fn main() {
    std::process::exit(qresidual::cli::main());
}
