//! A progress bar on standard error while it is a terminal (never in a pipe or a log).

use std::io::{IsTerminal, Write};

/// Width of the bar, in characters.
const WIDTH: u64 = 30;

pub struct Progress {
    total: u64,
    done: u64,
    shown: bool,
}

impl Progress {
    pub fn on_terminal(total: i64) -> Progress {
        let progress = Progress { total: total.max(0) as u64, done: 0, shown: std::io::stderr().is_terminal() };
        progress.draw();
        progress
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.draw();
    }

    pub fn finish(self) {
        if self.shown {
            eprintln!();
        }
    }

    fn draw(&self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", bar(self.done, self.total));
            let _ = err.flush();
        }
    }
}

/// `[#######-------]  700/1000 profiles`: the count may pass the total when profiles are
/// created during the export, so the bar is capped, not the count.
fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 { WIDTH } else { (done.min(total) * WIDTH) / total };
    let width = total.to_string().len();
    format!(
        "[{}{}] {done:>width$}/{total} profiles",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn the_bar_fills_with_the_count_and_is_capped_at_the_total() {
        assert_eq!(bar(0, 10), format!("[{}]  0/10 profiles", "-".repeat(30)));
        assert_eq!(bar(5, 10), format!("[{}{}]  5/10 profiles", "#".repeat(15), "-".repeat(15)));
        assert_eq!(bar(12, 10), format!("[{}] 12/10 profiles", "#".repeat(30)));
        assert_eq!(bar(0, 0), format!("[{}] 0/0 profiles", "#".repeat(30)));
    }
}
