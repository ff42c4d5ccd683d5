//! The `idrelay-hub` executable: the reference cloud side of the relay protocol. Everything
//! lives in `idrelay::hub`; this only maps the result to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(idrelay::hub::main(&args) as u8)
}
