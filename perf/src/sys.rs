//! Every raw syscall of the harness, behind safe functions.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Whether the process runs with effective uid 0 (needed for namespaces and iptables).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The CPUs the harness may run on, in order (CPU 0 alone if the mask cannot be read).
pub fn cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return vec![0];
    }
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: CPU_ISSET only reads `set` at an index below CPU_SETSIZE.
    let set_has = |cpu: usize| unsafe { libc::CPU_ISSET(cpu, &set) };
    (0..max).filter(|&cpu| set_has(cpu)).collect()
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; a negative answer means "unknown".
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The file `ip netns` keeps for a named namespace.
fn netns_file(name: &str) -> io::Result<File> {
    File::open(format!("/run/netns/{name}"))
}

/// Moves the calling thread into the named network namespace. Threads it spawns
/// afterwards start in that namespace too; other threads are not affected.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let f = netns_file(name)?;
    // SAFETY: the fd is valid for the duration of the call; setns only changes the
    // calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `cmd` start its child in the named network namespace.
pub fn command_in_netns(cmd: &mut Command, name: &str) -> io::Result<()> {
    let f = netns_file(name)?;
    let fd = f.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls setns, which
    // is async-signal-safe. `f` is moved into the closure, so the fd stays open until the
    // Command (and its closure) is dropped, after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &f;
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Makes `cmd` start its child with no blocked signals: the harness blocks its stop
/// signals in every thread (see [`block_stop_signals`]) and a child would inherit that
/// mask, leaving it deaf to SIGTERM.
pub fn command_with_clean_signal_mask(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sigemptyset and pthread_sigmask on a local set, both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error.
pub fn kill(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names a single process.
    if pid > 0 {
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// SIGINT (Ctrl-C).
pub const SIGINT: i32 = libc::SIGINT;
/// SIGTERM.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL.
pub const SIGKILL: i32 = libc::SIGKILL;

/// The signals that end a run early (Ctrl-C, kill, a closed terminal).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the stop signals in the calling thread (and every thread it spawns later), so
/// that only a thread calling [`wait_stop_signal`] receives them. Children inherit the
/// mask: start them with [`command_with_clean_signal_mask`].
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits until a stop signal arrives and returns its number.
pub fn wait_stop_signal() -> i32 {
    let set = stop_signals();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` and `sig` are valid for the call; the signals are blocked in this
    // thread by [`block_stop_signals`], as sigwait requires.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// The memory page size in bytes, the unit of RSS in `/proc/PID/stat`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; a non-positive answer means "unknown".
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`,
/// IPv4).
pub fn original_dst(s: &std::net::TcpStream) -> io::Result<std::net::SocketAddr> {
    // SAFETY: sockaddr_in is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: SO_ORIGINAL_DST (80) at SOL_IP fills a sockaddr_in; `addr` and `len` are
    // valid for the call and `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            80,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(std::net::SocketAddr::new(
        ip.into(),
        u16::from_be(addr.sin_port),
    ))
}

/// Creates an unconnected IPv4 TCP socket carrying SO_MARK `mark` and connects it.
pub fn connect_marked(dst: std::net::SocketAddr, mark: u32) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = dst else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 only"));
    };
    // SAFETY: socket() has no preconditions; the fd is owned by the TcpStream below on
    // success and closed by it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own exclusively.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let m: libc::c_int = mark as libc::c_int;
    // SAFETY: `m` lives across the call and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&m as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain data, fully initialised below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
    // SAFETY: `sa` is a valid sockaddr_in and the length is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes), the fields a
/// counting tracepoint event needs; the kernel accepts this size from any version.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0 `disabled`, bit 1 `inherit`, ...: only `inherit` is set.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_FLAG_INHERIT: u64 = 1 << 1;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A kernel counter of one tracepoint in one thread and the threads and processes it
/// starts after the counter opens (perf's `inherit`), counting from the moment it opens.
#[derive(Debug)]
pub struct TracepointCounter {
    fd: std::os::fd::OwnedFd,
}

impl TracepointCounter {
    /// Counts the tracepoint with tracefs id `id` (`events/GROUP/NAME/id`) in thread `tid`.
    /// Needs root, or `kernel.perf_event_paranoid` ≤ -1 for the kernel's tracepoints.
    pub fn open(id: u64, tid: u32) -> io::Result<TracepointCounter> {
        use std::os::fd::FromRawFd;
        let tid = libc::pid_t::try_from(tid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "thread id out of range"))?;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            flags: PERF_ATTR_FLAG_INHERIT,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid perf_event_attr of the size it declares and outlives
        // the call; cpu -1 with a thread id counts that thread on every CPU; no group fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::c_int::try_from(fd)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "fd out of range"))?;
        // SAFETY: perf_event_open returned a fresh fd that nothing else owns.
        Ok(TracepointCounter {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The count so far (including exited inherited threads); the counter keeps running.
    pub fn read(&self) -> io::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: without a read_format the kernel writes exactly one u64 into `v`, which
        // is valid and 8 bytes long for the call.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n == std::mem::size_of::<u64>() as isize {
            Ok(v)
        } else if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short read of a perf counter",
            ))
        }
    }
}
