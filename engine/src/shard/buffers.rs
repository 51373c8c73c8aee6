//! Read sizes of the HBONE relay. A stream's first read is `min` bytes and grows while
//! reads fill it (bulk), shrinking after a read under half of it (quiet traffic): the
//! rule of [`ReadSizes::next`]. Passthrough needs no sizes of its own: it receives into
//! the shard ring's provided buffers (see `zpath_uring`).

use zpath_tunnel::relay::ReadSizes;

/// Buffer sizing for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Size of the first read of every direction of an HBONE stream.
    pub min: usize,
    /// Largest read a busy direction grows to.
    pub max: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            min: 4 * 1024,
            max: 1024 * 1024,
        }
    }
}

impl BufferConfig {
    /// The read sizes of the HBONE relay, rounded to powers of two (`max` at least `min`).
    pub fn sizes(&self) -> ReadSizes {
        let min = self.min.next_power_of_two();
        ReadSizes {
            min,
            max: self.max.next_power_of_two().max(min),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_and_max_is_at_least_min() {
        let s = BufferConfig {
            min: 3000,
            max: 2000,
        }
        .sizes();
        assert_eq!((s.min, s.max), (4096, 4096));
        let s = BufferConfig::default().sizes();
        assert_eq!((s.min, s.max), (4096, 1 << 20));
    }
}
