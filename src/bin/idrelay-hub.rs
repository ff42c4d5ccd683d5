//! The `idrelay-hub` executable: the reference cloud side of the relay protocol. Everything
//! lives in `idrelay::hub`; this only maps the result to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any token is read: no core dump, no ptrace by other processes of the user.
    if let Err(e) = idrelay::privilege::make_non_dumpable() {
        eprintln!(
            "warning: cannot make the process non-dumpable (a core dump could hold tokens): {e}"
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(idrelay::hub::main(&args) as u8)
}
