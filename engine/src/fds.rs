//! How the process's file descriptors are shared, so that idle sockets on one kind of
//! listener cannot take the descriptors the others need.
//!
//! The kernel gives a new socket the lowest free descriptor number, so every number
//! below an accepted socket's is in use: the number is a free lower bound of how many
//! descriptors the process holds, with no system call. Admin endpoints stop accepting
//! once a reserve is left (for the data path and the control thread); the data path
//! stops a smaller reserve before the limit (for xDS, the CA and files of the control
//! thread).

/// Descriptors the data path leaves to the control thread (xDS and CA reconnects,
/// config and certificate files), at most half the limit.
pub const CONTROL_RESERVE: u64 = 64;

/// The descriptor numbers above which each kind of listener refuses new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    admin_ceiling: u64,
    data_ceiling: u64,
}

impl FdBudget {
    /// The budget for a process allowed `limit` descriptors, keeping `reserve` of them
    /// from the admin endpoints (at most half the limit).
    pub fn new(limit: u64, reserve: u64) -> Self {
        let control = CONTROL_RESERVE.min(limit / 2);
        let reserve = reserve.max(control).min(limit / 2);
        FdBudget {
            admin_ceiling: limit - reserve,
            data_ceiling: limit - control,
        }
    }

    /// Whether an admin endpoint may keep a connection accepted on descriptor `fd`.
    pub fn admin_allows(&self, fd: i32) -> bool {
        u64::try_from(fd).is_ok_and(|fd| fd < self.admin_ceiling)
    }

    /// Whether the data path may keep a connection accepted on descriptor `fd`.
    pub fn data_allows(&self, fd: i32) -> bool {
        u64::try_from(fd).is_ok_and(|fd| fd < self.data_ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_stops_at_the_reserve_and_the_data_path_near_the_limit() {
        let b = FdBudget::new(4096, 1024);
        assert!(b.admin_allows(3071));
        assert!(!b.admin_allows(3072));
        assert!(b.data_allows(4031));
        assert!(!b.data_allows(4032));
    }

    #[test]
    fn a_reserve_larger_than_a_small_limit_keeps_half_for_admin() {
        let b = FdBudget::new(1024, 4096);
        assert!(b.admin_allows(511));
        assert!(!b.admin_allows(512));
        assert!(b.data_allows(959));
        // A reserve below the control thread's still leaves the control thread its own.
        let b = FdBudget::new(4096, 0);
        assert!(!b.admin_allows(4032));
        assert!(!FdBudget::new(4096, 0).admin_allows(-1));
    }
}
