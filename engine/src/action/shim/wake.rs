//! How the shim sleeps until something happens, without looking every few milliseconds.
//!
//! SIGCHLD (the command, or an orphan the shim adopted as subreaper, ended), SIGTERM and SIGINT
//! (stop the command) each write one byte into a pipe, and the shim waits on the pipe's read end
//! with ppoll(2) (the self-pipe trick). A signal that arrives after the shim last looked, even
//! just before it starts to wait, has left its byte in the pipe and ends the wait at once: while
//! the command runs, the shim waits without a timeout and wakes only when there is something to
//! do. Without a pipe (no descriptor left), it looks again after each timeout, as it always could.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Set by SIGTERM and SIGINT: stop the command.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// The write end of the wake pipe; -1 while there is none.
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    wake();
}

extern "C" fn on_child_signal(_signal: libc::c_int) {
    wake();
}

/// One byte into the wake pipe; async-signal-safe. errno is kept: the code the signal
/// interrupted may be about to read it.
fn wake() {
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno; write(2) is async-signal-safe and
    // reads one byte of a live array. A full pipe (EAGAIN, the pipe is non-blocking) is already
    // readable, which is all a wake needs.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        let byte = [1u8];
        libc::write(fd, byte.as_ptr().cast(), 1);
        *errno = saved;
    }
}

/// Installs `handler` for `signal`, restarting interrupted system calls like signal(3) does.
fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is valid; the handler only touches atomics and write(2) (see
    // above). Handlers are reset to the default in the command by exec.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
    }
}

/// The read end of the wake pipe, with the handlers that write into it.
pub(super) struct Wake {
    read: Option<OwnedFd>,
    /// Every child's end wakes [`Wake::wait`] (the SIGCHLD handler is in place).
    children_wake: bool,
}

impl Wake {
    /// Creates the pipe and installs the handlers of SIGTERM, SIGINT and SIGCHLD.
    pub(super) fn install() -> Wake {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: pipe2 writes two descriptors into the array.
        let read = if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }
            == 0
        {
            // The write end stays open for the life of the process (a handler may use it).
            WAKE_WRITE.store(fds[1], Ordering::SeqCst);
            // SAFETY: `fds[0]` was just opened and is owned here alone.
            Some(unsafe { OwnedFd::from_raw_fd(fds[0]) })
        } else {
            eprintln!(
                "runbook shim: cannot create its wake pipe ({}); looking for the command's end every {:?} instead",
                std::io::Error::last_os_error(),
                super::POLL
            );
            None
        };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            if !install(signal, on_stop_signal, 0) {
                eprintln!(
                    "runbook shim: cannot handle signal {signal}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let children_wake = install(libc::SIGCHLD, on_child_signal, libc::SA_NOCLDSTOP);
        Wake {
            read,
            children_wake,
        }
    }

    /// Whether every event the shim waits for ends [`Wake::wait`], so that it may wait without
    /// a timeout.
    pub(super) fn is_reliable(&self) -> bool {
        self.read.is_some() && self.children_wake
    }

    /// Sleeps until one of the signals came since the last wait, or `timeout` passed (`None`:
    /// no limit; only when [`Wake::is_reliable`]).
    pub(super) fn wait(&self, timeout: Option<Duration>) {
        let Some(read) = &self.read else {
            std::thread::sleep(timeout.unwrap_or(super::POLL));
            return;
        };
        let mut pollfd = libc::pollfd {
            fd: read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let limit = timeout.map(|timeout| libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        });
        let limit_ptr = limit
            .as_ref()
            .map_or(std::ptr::null(), |limit| limit as *const libc::timespec);
        // SAFETY: one valid pollfd, a valid or null timespec, no signal mask change. EINTR (a
        // signal came) ends the wait like a byte does.
        unsafe { libc::ppoll(&mut pollfd, 1, limit_ptr, std::ptr::null()) };
        let mut bytes = [0u8; 64];
        // SAFETY: non-blocking reads into a live buffer, until the pipe is empty.
        while unsafe { libc::read(read.as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len()) } > 0 {}
    }
}
