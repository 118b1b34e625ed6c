fn main() {
    std::process::exit(vantage::cli::main());
}
