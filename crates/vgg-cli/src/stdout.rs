//! Results go to stdout through here. A closed pipe (`vgg bench | head -1`) ends the command
//! quietly, as with other command-line tools, and any other failure (a full disk) is a named
//! error; `println!` would panic on both.

use std::io::{ErrorKind, Write};

/// The reader of stdout has gone away.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write the results to stdout")),
    }
}

/// Writes `text` and a newline to stdout.
pub fn line(text: &str) -> anyhow::Result<()> {
    print(&format!("{text}\n"))
}

/// True when `e` comes from a closed stdout.
pub fn closed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<StdoutClosed>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Writes a line to stderr, ignoring failure: there is nowhere left to report it.
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
