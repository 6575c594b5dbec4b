//! Progress bars for the long waits an operator watches (state sync at start, large
//! downloads) — drawn only when stdout is a terminal; logs carry the same progress.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` steps, or a hidden one when stdout is not a terminal (containers, pm2).
pub fn bar(total: u64, message: String, bytes: bool) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} [{bar:30}] {pos}/{len} ({eta})"
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total).with_style(style.progress_chars("=> ")).with_message(message)
}

/// Downloads of at least this many bytes in one fetch get a bar.
pub const LARGE_DOWNLOAD_BYTES: u64 = 64 << 20;
