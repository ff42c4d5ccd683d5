//! Standard output for the commands' results (`status`, `preview`, dry-run lines, help).
//!
//! Rust ignores SIGPIPE, so a reader that goes away (`idrelay status | head -1`) turns the
//! next `println!` into a panic. Everything a command prints for a person or a script goes
//! through [`write()`] instead: a closed pipe ends the process quietly with exit 0, as Unix
//! tools do; any other write error ends it with exit 1 and one line on stderr. Logs go to
//! stderr and are not affected.

use std::fmt;
use std::io::{ErrorKind, Write};

/// Writes `args` to standard output, ending the process when nobody reads it any more.
pub fn write(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        exit_on(e.kind(), &e.to_string());
    }
}

/// Writes raw bytes to standard output, as [`write()`].
pub fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        exit_on(e.kind(), &e.to_string());
    }
}

fn exit_on(kind: ErrorKind, detail: &str) -> ! {
    if kind == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {detail}");
    std::process::exit(1);
}

/// `println!` through [`write()`](crate::stdout::write).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write()`](crate::stdout::write).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}
