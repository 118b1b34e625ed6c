//! The agent alone: `vantage run` hands over to this binary (see
//! `cli::agent_main`), which links none of the other commands.
fn main() {
    std::process::exit(vantage::cli::agent_main());
}
