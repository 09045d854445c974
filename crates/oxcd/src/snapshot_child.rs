//! Encoding a snapshot in a forked child process, so that applying does not wait for it.
//!
//! A snapshot must be the store exactly as of one applied index. Encoding the live tree
//! holds the store while it walks every node (0.4 s at 4.5 million keys), and over a load
//! that snapshots every `--snapshot-count` entries the waits add up to a share of the load
//! that grows with the store. Instead the apply thread forks: the child process gets the
//! memory as it is at that index (the kernel copies page tables, ~10 ms per GB, and then a
//! page only when the parent writes to it), encodes and compresses its copy, sends the bytes
//! back through a pipe and exits; the parent applies on at once, and a snapshot thread reads
//! the bytes and writes the file as before. This is how Redis writes its RDB snapshots.
//!
//! Invariants:
//! - the child runs only the encoding closure and raw system calls: no logging, no locks
//!   another thread may have held at the fork (glibc's allocator is reset for the child by
//!   glibc itself), no destructors (`_exit`);
//! - the child keeps only the pipe's write end and the standard streams: it holds no
//!   listening socket, data-directory lock or WAL file of the parent's, and it is killed
//!   when the parent dies (`PR_SET_PDEATHSIG`), so a SIGKILLed member restarts at once;
//! - every child is reaped: [`Child::wait`] or, if the job is dropped unread, `Drop`;
//! - bytes count only when the child said how many it would send, sent them all and exited
//!   with status 0; anything else is an error (the snapshot is skipped and taken again after
//!   the next `--snapshot-count` entries), never a truncated snapshot.
//!
//! Where `fork` fails (a process limit, strict overcommit), the caller encodes in place.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A forked child encoding a snapshot.
pub struct Child {
    pid: libc::pid_t,
    /// The pipe's read end; `None` once the child is reaped.
    output: Option<File>,
}

/// Forks a child that runs `encode` on its copy of this process's memory and sends the bytes
/// back. `encode` runs only in the child; the parent returns at once.
pub fn spawn<F: FnOnce() -> Vec<u8>>(encode: F) -> io::Result<Child> {
    let (read_end, write_end) = pipe()?;
    let parent = std::process::id();
    match fork()? {
        0 => child_main(encode, write_end.as_raw_fd(), parent),
        pid => {
            drop(write_end);
            Ok(Child {
                pid,
                output: Some(File::from(read_end)),
            })
        }
    }
}

impl Child {
    /// Waits for the child and returns what it encoded.
    pub fn wait(mut self) -> Result<Vec<u8>, String> {
        let Some(mut output) = self.output.take() else {
            return Err("snapshot child already reaped".into());
        };
        let received = read_framed(&mut output);
        drop(output);
        let status = self.reap();
        match (received, status) {
            (Ok(data), Ok(())) => Ok(data),
            (_, Err(e)) | (Err(e), Ok(())) => Err(e),
        }
    }

    /// Waits for the child to exit (it exits soon: its pipe's reader is gone) and tells how.
    fn reap(&mut self) -> Result<(), String> {
        self.output = None;
        let status = waitpid(self.pid).map_err(|e| format!("waiting for snapshot child: {e}"))?;
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFSIGNALED(status) {
            Err(format!(
                "snapshot child {} was killed by signal {}",
                self.pid,
                libc::WTERMSIG(status)
            ))
        } else {
            Err(format!(
                "snapshot child {} exited with status {}",
                self.pid,
                libc::WEXITSTATUS(status)
            ))
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.output.is_some() {
            let _ = self.reap();
        }
    }
}

/// Reads the child's answer: an 8-byte little-endian length, then that many bytes.
fn read_framed(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|e| format!("reading snapshot child's length: {e}"))?;
    let len = u64::from_le_bytes(len);
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 30));
    r.take(len)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading snapshot child's bytes: {e}"))?;
    if data.len() as u64 != len {
        return Err(format!("snapshot child sent {} of {len} bytes", data.len()));
    }
    Ok(data)
}

/// The child: encode, send, exit. Never returns.
fn child_main<F: FnOnce() -> Vec<u8>>(encode: F, out: libc::c_int, parent: u32) -> ! {
    isolate(out, parent);
    let data = encode();
    let sent = write_all(out, &(data.len() as u64).to_le_bytes()) && write_all(out, &data);
    exit_now(if sent { 0 } else { 1 })
}

// ---- system calls ----------------------------------------------------------------------

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[allow(unsafe_code)]
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn fork() -> io::Result<libc::pid_t> {
    #[allow(unsafe_code)]
    // SAFETY: the child runs only `child_main`: the caller's closure (which must use no lock
    // another thread may hold; glibc makes its allocator usable in the child) and raw
    // system calls, then `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

fn waitpid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        #[allow(unsafe_code)]
        // SAFETY: `status` is a valid int for the kernel to fill.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// In the child: die with the parent and close every descriptor but `keep` and 0–2.
fn isolate(keep: libc::c_int, parent: u32) {
    #[allow(unsafe_code)]
    // SAFETY: prctl, getppid and close_range take no pointers; closing descriptors the child
    // inherited affects only the child (the parent's stay open).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent died before the line above: nobody will read.
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::_exit(2);
        }
        let keep = keep as libc::c_uint;
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep + 1, libc::c_uint::MAX, 0);
    }
}

fn write_all(fd: libc::c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        #[allow(unsafe_code)]
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

fn exit_now(code: libc::c_int) -> ! {
    #[allow(unsafe_code)]
    // SAFETY: ends the child without running destructors or atexit handlers (they belong to
    // the parent's state).
    unsafe {
        libc::_exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_sends_back_what_it_encodes_from_the_memory_at_the_fork() {
        let mut state = vec![7u8; 100_000];
        let child = spawn(|| state.iter().map(|b| b + 1).collect()).unwrap();
        // The parent changes its copy at once; the child encodes the state at the fork.
        state.fill(0);
        let data = child.wait().unwrap();
        assert_eq!(data.len(), 100_000);
        assert!(data.iter().all(|&b| b == 8));
        assert!(state.iter().all(|&b| b == 0));
    }

    #[test]
    fn large_answers_pass_through_the_pipe_whole() {
        let data = spawn(|| (0..5_000_000u32).map(|i| i as u8).collect())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(data.len(), 5_000_000);
        assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn a_child_that_dies_is_an_error_not_a_short_snapshot() {
        let child = spawn(|| {
            #[allow(unsafe_code)]
            // SAFETY: raises a signal in the child only.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
            vec![1, 2, 3]
        })
        .unwrap();
        let err = child.wait().unwrap_err();
        assert!(err.contains("snapshot child"), "{err}");
    }

    #[test]
    fn a_dropped_job_reaps_its_child() {
        let child = spawn(|| vec![0u8; 1 << 20]).unwrap();
        let pid = child.pid;
        drop(child);
        // Reaped: the pid is no longer our child.
        let mut status = 0;
        #[allow(unsafe_code)]
        // SAFETY: `status` is a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(rc, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECHILD)
        );
    }

    #[test]
    fn framing_rejects_a_short_answer() {
        let mut short = Vec::new();
        short.extend_from_slice(&10u64.to_le_bytes());
        short.extend_from_slice(&[1, 2, 3]);
        assert!(read_framed(&mut &short[..])
            .unwrap_err()
            .contains("3 of 10"));
        assert!(read_framed(&mut &[1u8, 2][..]).is_err());
    }
}
