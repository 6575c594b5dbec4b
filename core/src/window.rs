//! The block clock: every peer derives the current window from the chain's block number,
//! so all agree on it without talking to each other.

use thiserror::Error;

/// A block number of the subtensor chain.
pub type Block = u64;
/// A training window: `block / window_length`.
pub type Window = u64;

/// Seconds between subtensor blocks (Bittensor's target block time).
pub const SUBTENSOR_BLOCK_TIME_MS: u64 = 12_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("window_length must be at least 1 block, got 0")]
    ZeroWindowLength,
    #[error("block_time_ms must be at least 1, got 0")]
    ZeroBlockTime,
}

/// Maps blocks to windows for one `window_length` (an hparam).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSchedule {
    window_length: u64,
}

impl WindowSchedule {
    pub fn new(window_length: u64) -> Result<Self, WindowError> {
        if window_length == 0 {
            return Err(WindowError::ZeroWindowLength);
        }
        Ok(Self { window_length })
    }

    pub fn window_length(&self) -> u64 {
        self.window_length
    }

    /// The window a block belongs to.
    pub fn window_of_block(&self, block: Block) -> Window {
        block / self.window_length
    }

    /// First block of `window` (saturating at `u64::MAX` for absurd windows).
    pub fn start_block(&self, window: Window) -> Block {
        window.saturating_mul(self.window_length)
    }

    /// Last block of `window`, inclusive.
    pub fn end_block(&self, window: Window) -> Block {
        self.start_block(window).saturating_add(self.window_length - 1)
    }

    /// Blocks still to come in the window of `block`, `block` itself excluded.
    pub fn blocks_left(&self, block: Block) -> u64 {
        self.end_block(self.window_of_block(block)) - block
    }

    /// Whether `block` is the first block of its window (the moment a window starts).
    pub fn is_window_start(&self, block: Block) -> bool {
        block.is_multiple_of(self.window_length)
    }
}

/// Wall-clock time of blocks, extrapolated from one observed `(block, time)` anchor.
///
/// Used where a time must be judged against a window — e.g. the copying defence, which
/// rejects an object whose bucket `LastModified` lies outside the time of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockTimeline {
    anchor_block: Block,
    anchor_unix_ms: i64,
    block_time_ms: u64,
}

impl BlockTimeline {
    pub fn new(anchor_block: Block, anchor_unix_ms: i64, block_time_ms: u64) -> Result<Self, WindowError> {
        if block_time_ms == 0 {
            return Err(WindowError::ZeroBlockTime);
        }
        Ok(Self { anchor_block, anchor_unix_ms, block_time_ms })
    }

    /// Estimated start time (unix ms) of `block`.
    pub fn block_start_ms(&self, block: Block) -> i64 {
        let delta_blocks = i128::from(block) - i128::from(self.anchor_block);
        let ms = i128::from(self.anchor_unix_ms) + delta_blocks * i128::from(self.block_time_ms);
        ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The block being built at `unix_ms` (block 0 for times before the chain began).
    pub fn block_at(&self, unix_ms: i64) -> Block {
        let delta_ms = i128::from(unix_ms) - i128::from(self.anchor_unix_ms);
        let delta_blocks = delta_ms.div_euclid(i128::from(self.block_time_ms));
        let block = i128::from(self.anchor_block) + delta_blocks;
        block.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The window in progress at `unix_ms`.
    pub fn window_at(&self, schedule: &WindowSchedule, unix_ms: i64) -> Window {
        schedule.window_of_block(self.block_at(unix_ms))
    }

    /// `[start, end)` of `window` in unix ms.
    pub fn window_time_bounds(&self, schedule: &WindowSchedule, window: Window) -> (i64, i64) {
        let start = self.block_start_ms(schedule.start_block(window));
        let end = self.block_start_ms(schedule.end_block(window).saturating_add(1));
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_length_is_rejected() {
        assert_eq!(WindowSchedule::new(0), Err(WindowError::ZeroWindowLength));
    }

    #[test]
    fn blocks_map_to_windows_by_integer_division() {
        let s = WindowSchedule::new(2).unwrap();
        let windows: Vec<_> = (0..7).map(|b| s.window_of_block(b)).collect();
        assert_eq!(windows, [0, 0, 1, 1, 2, 2, 3]);
        assert_eq!(s.start_block(3), 6);
        assert_eq!(s.end_block(3), 7);
        assert!(s.is_window_start(6));
        assert!(!s.is_window_start(7));
        assert_eq!(s.blocks_left(6), 1);
        assert_eq!(s.blocks_left(7), 0);
    }

    #[test]
    fn every_block_lies_between_its_window_start_and_end() {
        for len in [1u64, 2, 3, 7, 100] {
            let s = WindowSchedule::new(len).unwrap();
            for b in 0..500 {
                let w = s.window_of_block(b);
                assert!(s.start_block(w) <= b && b <= s.end_block(w), "len {len} block {b}");
            }
        }
    }

    #[test]
    fn huge_windows_saturate_instead_of_overflowing() {
        let s = WindowSchedule::new(7).unwrap();
        assert_eq!(s.start_block(u64::MAX), u64::MAX);
        assert_eq!(s.end_block(u64::MAX), u64::MAX);
    }

    #[test]
    fn timeline_maps_times_to_windows_and_back() {
        let t = BlockTimeline::new(1000, 1_700_000_000_000, 12_000).unwrap();
        let s = WindowSchedule::new(2).unwrap();
        assert_eq!(t.block_at(1_700_000_000_000), 1000);
        assert_eq!(t.block_at(1_700_000_011_999), 1000);
        assert_eq!(t.block_at(1_700_000_012_000), 1001);
        assert_eq!(t.block_at(1_699_999_999_999), 999);
        assert_eq!(t.window_at(&s, 1_700_000_000_000), 500);
        let (start, end) = t.window_time_bounds(&s, 500);
        assert_eq!((start, end), (1_700_000_000_000, 1_700_000_024_000));
        assert_eq!(t.window_at(&s, start), 500);
        assert_eq!(t.window_at(&s, end - 1), 500);
        assert_eq!(t.window_at(&s, end), 501);
        assert_eq!(t.block_at(i64::MIN), 0);
        assert!(BlockTimeline::new(0, 0, 0).is_err());
    }
}
