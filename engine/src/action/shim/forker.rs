//! The spare-maker: one long-lived shim that forks the spares (`exec/spare.rs`), so that a new
//! spare costs a fork of a small process instead of an exec of the shim's binary, its loading
//! and its set-up (measured: most of the CPU a step of `true` took besides the command itself,
//! and on two cores it slowed the step it overlapped).
//!
//! The daemon starts it like a spare, `<program> shim - <data dir>`, with one end of a Unix
//! socket as its stdin: that (a socket, where a spare has a pipe) is what makes a shim the
//! spare-maker. For each [`FORK`] byte it reads there, it makes two pipes and forks; the child
//! takes the pipes as its stdin and stdout and is then exactly a spare started ahead
//! ([`super::run_ahead`] with the same data dir: same command line, its own session once it
//! starts). The spare-maker sends the daemon the child's pid (4 bytes, big-endian) with the
//! daemon's ends of both pipes (`SCM_RIGHTS`), and closes its own copies, so that the spare
//! sees EOF when the daemon closes or loses its end, as any spare does.
//!
//! It stays in the daemon's session and ends when the daemon closes or loses the socket. Its
//! children are reaped by the kernel (`SIGCHLD` ignored): the daemon follows each spare through
//! its pipes, and a spare's command is the spare's own child. Its name (`comm`, as `ps -o comm`
//! and `top` show it) is `runbook-spares`; a spare's is `runbook-shim`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::pipe;

/// The byte that asks for one spare.
pub(crate) const FORK: u8 = b'f';

/// Whether this process's stdin is a socket: it was started as the spare-maker.
pub(super) fn asked() -> bool {
    // SAFETY: fstat(2) of descriptor 0 into a zeroed stat.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// The spare-maker's life: one spare per [`FORK`] read from its stdin, until EOF.
pub(super) fn serve(data_dir: &Path) -> i32 {
    // A fork copies only the thread that forks: with other threads, a lock one of them held
    // would stay locked in every spare. The daemon starts only the single-threaded binary as
    // the spare-maker; this refuses any other way it could have been started.
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads != 1 {
        eprintln!(
            "runbook shim (spares for {}): {threads} threads where one is needed to fork spares safely; exiting",
            data_dir.display()
        );
        return 1;
    }
    // SAFETY: signal(2) and prctl(2) only change this process's disposition and name.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, c"runbook-spares".as_ptr(), 0, 0, 0);
    }
    loop {
        let mut byte = [0u8; 1];
        // SAFETY: read(2) of one byte into a live array.
        let read = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
        if read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if read != 1 || byte[0] != FORK {
            // EOF (the daemon stopped or died) or not the protocol: no more spares.
            return 0;
        }
        if let Err(error) = fork_spare(data_dir) {
            eprintln!(
                "runbook shim (spares for {}): cannot make a spare: {error}",
                data_dir.display()
            );
            return 1;
        }
    }
}

/// Forks one spare and hands the daemon its pid and pipes.
fn fork_spare(data_dir: &Path) -> std::io::Result<()> {
    let (call_read, call_write) = pipe()?;
    let (ended_read, ended_write) = pipe()?;
    // SAFETY: this process has a single thread (it never starts one), so the child may run
    // any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        become_spare(
            [&call_read, &ended_write],
            [&call_write, &ended_read],
            data_dir,
        );
    }
    drop((call_read, ended_write));
    send(pid, [call_write.as_raw_fd(), ended_read.as_raw_fd()])
}

/// In the forked child: the pipes become stdin and stdout, everything of the daemon's side is
/// closed, and the spare's life begins. Never returns.
fn become_spare(ours: [&OwnedFd; 2], theirs: [&OwnedFd; 2], data_dir: &Path) -> ! {
    // SAFETY: signal(2), prctl(2), dup2(2) and close(2) on this process's own descriptors. The
    // socket (descriptor 0) is replaced by the call pipe; the daemon's ends are closed, or the
    // spare would never see EOF when the daemon goes.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_NAME, c"runbook-shim".as_ptr(), 0, 0, 0);
        libc::dup2(ours[0].as_raw_fd(), 0);
        libc::dup2(ours[1].as_raw_fd(), 1);
        for fd in ours.iter().chain(theirs.iter()) {
            libc::close(fd.as_raw_fd());
        }
    }
    std::process::exit(super::run_ahead(data_dir))
}

/// The length of a control message carrying two descriptors, and a zeroed buffer for it
/// (`u64` words: aligned as `cmsghdr` wants).
fn control_buffer() -> (libc::c_uint, Vec<u64>) {
    let size = (2 * std::mem::size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(size) } as usize;
    (size, vec![0u64; space.div_ceil(8)])
}

/// A message header of one buffer and `control`; it points into both, which must outlive it.
fn header(iov: &mut libc::iovec, control: &mut [u64]) -> libc::msghdr {
    // SAFETY: a zeroed msghdr is valid (no buffers).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(control) as _;
    message
}

/// Sends `pid` and `fds` over the socket on descriptor 0.
fn send(pid: libc::pid_t, fds: [RawFd; 2]) -> std::io::Result<()> {
    let data = pid.to_be_bytes();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let (size, mut control) = control_buffer();
    let message = header(&mut iov, &mut control);
    // SAFETY: the header's buffers are live until sendmsg returns; the control buffer has room
    // for one header and two descriptors.
    unsafe {
        let first = libc::CMSG_FIRSTHDR(&message);
        (*first).cmsg_level = libc::SOL_SOCKET;
        (*first).cmsg_type = libc::SCM_RIGHTS;
        (*first).cmsg_len = libc::CMSG_LEN(size) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(first),
            size as usize,
        );
        loop {
            if libc::sendmsg(0, &message, libc::MSG_NOSIGNAL) == data.len() as isize {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

/// The daemon's side: the pid and the two descriptors one [`FORK`] brought back on `socket`
/// (close-on-exec, so that no other child of the daemon inherits a spare's pipe).
pub(crate) fn receive(socket: RawFd) -> std::io::Result<(libc::pid_t, OwnedFd, OwnedFd)> {
    let mut data = [0u8; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let (size, mut control) = control_buffer();
    let mut message = header(&mut iov, &mut control);
    // SAFETY: the header's buffers are live until recvmsg returns; the descriptors are taken
    // only from a well-formed SCM_RIGHTS header.
    unsafe {
        let read = loop {
            let read = libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC);
            if read >= 0 {
                break read;
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        let first = libc::CMSG_FIRSTHDR(&message);
        let whole = !first.is_null()
            && (*first).cmsg_level == libc::SOL_SOCKET
            && (*first).cmsg_type == libc::SCM_RIGHTS
            && (*first).cmsg_len as usize == libc::CMSG_LEN(size) as usize;
        if !whole {
            return Err(std::io::Error::other(if read == 0 {
                "the spare-maker closed its socket".to_owned()
            } else {
                "the spare-maker sent no descriptors".to_owned()
            }));
        }
        let mut fds: [RawFd; 2] = [-1, -1];
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(first),
            fds.as_mut_ptr().cast::<u8>(),
            size as usize,
        );
        let (to_spare, from_spare) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        if read != 4 || message.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other(
                "the spare-maker sent a short or cut message",
            ));
        }
        Ok((i32::from_be_bytes(data), to_spare, from_spare))
    }
}
