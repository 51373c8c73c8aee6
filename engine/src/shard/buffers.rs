//! Shard-local relay buffers in size classes. A connection starts with the smallest
//! class and moves up while its reads fill the buffer (bulk traffic), and back down
//! after a read under half of it (quiet traffic): the rule of
//! [`ReadSizes::next`], which the HBONE relay follows too. Freed buffers are kept for
//! reuse up to a bound per class, so steady traffic allocates nothing.

use std::cell::RefCell;
use std::rc::Rc;

use zpath_tunnel::relay::ReadSizes;

/// Buffer sizing for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Size of the first buffer of every direction of a connection.
    pub min: usize,
    /// Largest buffer a busy direction grows to.
    pub max: usize,
    /// Buffers of each class kept for reuse when free.
    pub keep_per_class: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            min: 4 * 1024,
            max: 1024 * 1024,
            keep_per_class: 64,
        }
    }
}

/// A pool of buffers owned by one shard (not `Send`: never crosses a core).
#[derive(Debug)]
pub struct BufPool {
    cfg: BufferConfig,
    classes: RefCell<Vec<Vec<Box<[u8]>>>>,
}

impl BufPool {
    /// A pool for `cfg` (sizes are rounded to powers of two).
    pub fn new(cfg: BufferConfig) -> Rc<Self> {
        let min = cfg.min.next_power_of_two();
        let max = cfg.max.next_power_of_two().max(min);
        let classes = (max.trailing_zeros() - min.trailing_zeros() + 1) as usize;
        Rc::new(Self {
            cfg: BufferConfig { min, max, ..cfg },
            classes: RefCell::new(vec![Vec::new(); classes]),
        })
    }

    fn size(&self, class: usize) -> usize {
        self.cfg.min << class
    }

    /// The read sizes of both relays: the configured bounds, as rounded here.
    pub(crate) fn sizes(&self) -> ReadSizes {
        ReadSizes {
            min: self.cfg.min,
            max: self.cfg.max,
        }
    }

    fn take(&self, class: usize) -> Box<[u8]> {
        let reused = self.classes.borrow_mut()[class].pop();
        reused.unwrap_or_else(|| vec![0u8; self.size(class)].into_boxed_slice())
    }

    fn give(&self, class: usize, buf: Box<[u8]>) {
        let mut classes = self.classes.borrow_mut();
        if classes[class].len() < self.cfg.keep_per_class {
            classes[class].push(buf);
        }
    }

    #[cfg(test)]
    /// Buffers currently held free in the pool.
    pub fn idle_buffers(&self) -> usize {
        self.classes.borrow().iter().map(Vec::len).sum()
    }
}

/// The buffer of one relay direction; returns to its pool when dropped.
#[derive(Debug)]
pub struct RelayBuf {
    pool: Rc<BufPool>,
    class: usize,
    buf: Option<Box<[u8]>>,
}

impl RelayBuf {
    /// A smallest-class buffer from `pool`.
    pub fn new(pool: &Rc<BufPool>) -> Self {
        Self {
            buf: Some(pool.take(0)),
            pool: pool.clone(),
            class: 0,
        }
    }

    /// The buffer to read into.
    pub fn space(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }

    /// The first `n` bytes, after a read of `n`.
    pub fn filled(&self, n: usize) -> &[u8] {
        &self.buf.as_deref().unwrap_or(&[])[..n]
    }

    /// Adapts the size after a read of `n` bytes ([`ReadSizes::next`]: a full read
    /// doubles the buffer, one under half halves it). Call between a write completing
    /// and the next read.
    pub fn adapt(&mut self, n: usize) {
        let len = self.pool.size(self.class);
        let next = self.pool.sizes().next(len, n);
        if next > len {
            self.switch(self.class + 1);
        } else if next < len {
            self.switch(self.class - 1);
        }
    }

    fn switch(&mut self, class: usize) {
        if let Some(old) = self.buf.take() {
            self.pool.give(self.class, old);
        }
        self.class = class;
        self.buf = Some(self.pool.take(class));
    }
}

impl Drop for RelayBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.give(self.class, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Rc<BufPool> {
        BufPool::new(BufferConfig {
            min: 1024,
            max: 8192,
            keep_per_class: 2,
        })
    }

    #[test]
    fn full_reads_grow_up_to_max() {
        let p = pool();
        let mut b = RelayBuf::new(&p);
        for _ in 0..10 {
            let n = b.space().len();
            b.adapt(n);
        }
        assert_eq!(b.space().len(), 8192);
    }

    #[test]
    fn a_read_under_half_shrinks_and_one_of_half_keeps_the_size() {
        let p = pool();
        let mut b = RelayBuf::new(&p);
        b.adapt(1024);
        b.adapt(2048);
        assert_eq!(b.space().len(), 4096);
        b.adapt(2048);
        assert_eq!(b.space().len(), 4096, "half a buffer keeps it");
        b.adapt(2047);
        assert_eq!(b.space().len(), 2048);
        for _ in 0..5 {
            b.adapt(1);
        }
        assert_eq!(b.space().len(), 1024, "never under min");
    }

    #[test]
    fn buffers_return_to_the_pool_and_the_pool_is_bounded() {
        let p = pool();
        {
            let _a = RelayBuf::new(&p);
            let _b = RelayBuf::new(&p);
            let _c = RelayBuf::new(&p);
        }
        assert_eq!(p.idle_buffers(), 2);
        let _d = RelayBuf::new(&p);
        assert_eq!(p.idle_buffers(), 1);
    }
}
