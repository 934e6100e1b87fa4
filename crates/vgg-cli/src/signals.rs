//! Ctrl-C and termination. Commands that can stop cleanly (bench finishes its step and reports
//! what it measured) ask for a graceful stop; everywhere else, and on a second Ctrl-C, the
//! process exits at once with code 130, after deleting any output it was in the middle of
//! writing, so an interrupted run never leaves a partial file behind.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::stdout::warn;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

static GRACEFUL: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handler; call once, early.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
            warn("\ninterrupted: finishing this step, then reporting what was measured (Ctrl-C again to quit now)");
            return;
        }
        vgg_nn::io::remove_partial_outputs();
        if crate::dist::job().is_some() {
            warn(&format!(
                "error: {}stopped by a signal: Ctrl-C, or mpirun ending the job because another \
                 rank failed or exited (its own message says why)",
                crate::dist::who()
            ));
        }
        std::process::exit(EXIT_INTERRUPTED.into());
    });
}

/// From now on the first Ctrl-C sets `stop_requested` instead of exiting.
pub fn allow_graceful_stop() {
    GRACEFUL.store(true, Ordering::SeqCst);
}

/// True after a Ctrl-C while a graceful stop is allowed.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
