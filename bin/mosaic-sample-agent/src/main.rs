//! `mosaic-sample-agent`: see the library documentation.

fn main() {
    std::process::exit(mosaic_sample_agent::run_cli(std::env::args_os()));
}
