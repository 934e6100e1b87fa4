//! Signs of life on terminals: one display for every command that works for a while (a bar for
//! counted work, a spinner naming the current stage otherwise), drawn on stderr only while
//! stdout is a terminal, so piped and redirected runs print results and nothing else.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is shown at all.
pub fn interactive() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A spinner naming what is being done; `stage` changes the name, dropping it clears the line.
pub struct Stages {
    bar: ProgressBar,
}

impl Stages {
    pub fn new(first: &str) -> Stages {
        let bar = if interactive() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(first.to_string());
        Stages { bar }
    }

    pub fn stage(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A bar over `total` steps with `template`'s layout (indicatif's syntax), hidden off terminals.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}
