//! The watchdog: one small process per runner process that kills every process group the runner
//! started if the runner dies without cleaning up (SIGKILL, the OOM killer, a crash).
//!
//! Why not the alternatives: `PR_SET_PDEATHSIG` reaches only the direct child (grandchildren in
//! its group survive) and fires when the *thread* that forked it exits, which tokio's blocking
//! pool does after idling. A subreaper only adopts orphans; it dies with the runner. A cgroup
//! needs a delegated cgroup v2 subtree, which many users and containers do not have.
//!
//! How it works: on the first spawn the runner forks the watchdog and keeps one end of a
//! `SOCK_SEQPACKET` socket pair (close-on-exec, so no task inherits it past `exec`). The runner
//! registers each process group right after spawning it, and gives each child the variable
//! `DISPATCH_RUNNER_WATCHDOG` (the watchdog's pid): on a loaded machine a child can run for milliseconds
//! before the runner's thread gets a CPU again to register it, and a runner killed then would
//! leave it behind; the watchdog also finds such children by the variable. (Registering from
//! inside the child, between fork and exec, would close the window too, but a `pre_exec` hook
//! makes std fork instead of `posix_spawn`: 2,000 `true` tasks took 2.6 s instead of 1.2 s.)
//! The runner forgets a group once it is gone; the watchdog also drops, once a second, groups
//! that no longer exist, so a reused pgid is never killed by mistake. When the runner ends
//! normally it says goodbye and the watchdog exits without touching anything; when the socket
//! reaches end-of-file without a goodbye the runner died, and the watchdog SIGKILLs every group
//! still registered and every process carrying its variable (with its group, if it leads one),
//! then exits. The watchdog never outlives the runner: the runner's end closes when the runner
//! exits, whatever the cause.
//!
//! Linux only; elsewhere these functions do nothing.

/// Makes `cmd` start in its own process group, and starts the watchdog (once per process) if it
/// is not running yet. Call [`register`] with the child's pid right after spawning.
pub fn tie_to_runner(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    if let Some(watchdog) = linux::start_once() {
        cmd.env(linux::MARKER, watchdog.to_string());
    }
}

/// The group led by `pid` (a child spawned after [`tie_to_runner`]) is the runner's: kill it
/// should the runner die. Call it at once after spawning; a child the runner dies before
/// registering is still found by its `DISPATCH_RUNNER_WATCHDOG` variable.
pub fn register(pid: u32) {
    #[cfg(target_os = "linux")]
    linux::send(linux::REGISTER, pid as i32);
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
}

/// The group is gone (no member left, not even a zombie): a later group with the same id is not
/// the runner's.
pub fn forget(pgid: i32) {
    #[cfg(target_os = "linux")]
    linux::send(linux::FORGET, pgid);
    #[cfg(not(target_os = "linux"))]
    let _ = pgid;
}

/// The runner is ending in order (it has cleaned up after itself): the watchdog exits without
/// killing anything. Spawns after this are no longer watched.
pub fn bye() {
    #[cfg(target_os = "linux")]
    linux::send(linux::BYE, 0);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::OnceLock;
    use std::time::Duration;

    pub const REGISTER: u8 = b'+';
    pub const FORGET: u8 = b'-';
    pub const BYE: u8 = b'.';

    /// Pids (and so pgids) on Linux are below `PID_MAX_LIMIT`, 2^22 on 64-bit systems.
    const PID_LIMIT: usize = 1 << 22;
    /// How often the watchdog drops groups that no longer exist.
    const SWEEP: Duration = Duration::from_secs(1);

    /// The runner's end of the socket pair and the watchdog's pid; `None` when the watchdog could
    /// not be started (the run goes on, unprotected, with a warning).
    static SOCKET: OnceLock<Option<(i32, i32)>> = OnceLock::new();

    /// Every child of the runner gets this variable, valued the watchdog's pid: should the runner
    /// die between spawning a child and registering it (on a loaded machine the child may run
    /// for milliseconds before the runner's thread gets a CPU again), the watchdog still finds it.
    pub const MARKER: &str = "DISPATCH_RUNNER_WATCHDOG";

    /// The watchdog's pid, for [`MARKER`].
    pub fn start_once() -> Option<i32> {
        SOCKET.get_or_init(start).map(|(_, pid)| pid)
    }

    pub fn send(op: u8, pgid: i32) {
        // Only once the watchdog exists: forgetting or saying goodbye must not start one.
        if let Some(Some((fd, _))) = SOCKET.get() {
            send_on(*fd, op, pgid);
        }
    }

    /// One record: the operation and the pgid. A watchdog that is gone (killed by hand) makes
    /// this fail with EPIPE, never SIGPIPE, and is ignored.
    fn send_on(fd: i32, op: u8, pgid: i32) {
        let p = pgid.to_le_bytes();
        let msg = [op, p[0], p[1], p[2], p[3]];
        loop {
            // SAFETY: msg outlives the call; send has no other preconditions.
            let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
            if n >= 0 || errno() != libc::EINTR {
                return;
            }
        }
    }

    fn errno() -> i32 {
        // SAFETY: reads this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    fn start() -> Option<(i32, i32)> {
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors.
        let made = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if made != 0 {
            tracing::warn!(
                "cannot start the watchdog ({}): tasks may outlive a killed runner",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let (ours, theirs) = (fds[0], fds[1]);
        // Allocated before the fork: the child may not allocate (other threads may have held the
        // allocator's locks at the fork). Zeroed pages cost nothing until touched.
        let mut registered = vec![0u64; PID_LIMIT / 64];
        let mut environ = vec![0u8; ENVIRON_MAX];
        // SAFETY: the child runs only async-signal-safe code (see `watch`) and never returns.
        match unsafe { libc::fork() } {
            -1 => {
                tracing::warn!(
                    "cannot start the watchdog ({}): tasks may outlive a killed runner",
                    std::io::Error::last_os_error()
                );
                // SAFETY: both are ours to close.
                unsafe {
                    libc::close(ours);
                    libc::close(theirs);
                }
                None
            }
            0 => watch(theirs, &mut registered, &mut environ),
            pid => {
                // SAFETY: the child has its copy; ours must go so the child sees end-of-file
                // only when the runner (and every child not yet past exec) is gone.
                unsafe { libc::close(theirs) };
                Some((ours, pid))
            }
        }
    }

    /// The watchdog's whole life. Only async-signal-safe calls: this is a fork of a
    /// multi-threaded process.
    fn watch(sock: i32, registered: &mut [u64], environ: &mut [u8]) -> ! {
        // SAFETY: plain system calls on values owned here.
        unsafe {
            // Out of the runner's group, so a Ctrl-C or a signal to the runner's group does not
            // take the watchdog down with it.
            libc::setpgid(0, 0);
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_NAME, c"dr-watchdog".as_ptr());
            // Hold nothing of the runner's: not its stdout (a reader would wait for us), not a
            // listening socket, not its end of the pair (or end-of-file would never come).
            close_all_but(sock);
        }
        let mut last_sweep = now();
        loop {
            let mut pfd = libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, SWEEP.as_millis() as i32) };
            if now().saturating_sub(last_sweep) >= SWEEP {
                sweep(registered);
                last_sweep = now();
            }
            if ready == 0 || (ready < 0 && errno() == libc::EINTR) {
                continue;
            }
            let mut msg = [0u8; 8];
            // SAFETY: msg has room for what is read.
            let n = unsafe { libc::recv(sock, msg.as_mut_ptr().cast(), msg.len(), 0) };
            if n < 0 && matches!(errno(), libc::EINTR | libc::EAGAIN) {
                continue;
            }
            if n <= 0 {
                // End-of-file without a goodbye: the runner died.
                kill_all(registered);
                kill_marked(environ);
                // SAFETY: leaves without running anything of the runner's.
                unsafe { libc::_exit(0) };
            }
            let pgid = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
            match msg[0] {
                REGISTER => set(registered, pgid, true),
                FORGET => set(registered, pgid, false),
                // SAFETY: as above.
                BYE => unsafe { libc::_exit(0) },
                _ => {}
            }
        }
    }

    fn set(registered: &mut [u64], pgid: i32, on: bool) {
        // Never 0 or 1: killpg(0) is our own group, 1 is init's.
        if pgid <= 1 || pgid as usize >= PID_LIMIT {
            return;
        }
        let (word, bit) = (pgid as usize / 64, 1u64 << (pgid as usize % 64));
        if on {
            registered[word] |= bit;
        } else {
            registered[word] &= !bit;
        }
    }

    fn each(registered: &mut [u64], mut f: impl FnMut(i32) -> bool) {
        for (w, word) in registered.iter_mut().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if !f((w * 64 + b) as i32) {
                    *word &= !(1u64 << b);
                }
            }
        }
    }

    /// Drops groups with no member left (not even a zombie): their id may be reused.
    fn sweep(registered: &mut [u64]) {
        // SAFETY: killpg with signal 0 only checks.
        each(registered, |pgid| unsafe { libc::killpg(pgid, 0) } == 0);
    }

    fn kill_all(registered: &mut [u64]) {
        // SAFETY: the groups were registered by the runner's children, which led them.
        each(registered, |pgid| {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            false
        });
    }

    /// How much of a process's environment is searched for [`MARKER`].
    const ENVIRON_MAX: usize = 1 << 20;

    /// Kills every process carrying `MARKER=<our pid>` (with its group, if it leads one): the
    /// children spawned but not yet registered when the runner died, and whatever they started.
    /// Without allocating: raw `getdents64` over /proc, buffers from before the fork.
    fn kill_marked(environ: &mut [u8]) {
        // `MARKER=<pid>`, built on the stack.
        let mut want = [0u8; 64];
        let mut len = 0;
        for &b in MARKER.as_bytes().iter().chain(b"=") {
            want[len] = b;
            len += 1;
        }
        // SAFETY: getpid has no preconditions.
        len += write_decimal(unsafe { libc::getpid() }, &mut want[len..]);
        let want = &want[..len];
        // SAFETY: plain system calls on buffers owned here.
        unsafe {
            let dir = libc::open(
                c"/proc".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if dir < 0 {
                return;
            }
            let mut entries = [0u8; 8192];
            loop {
                let n = libc::syscall(
                    libc::SYS_getdents64,
                    dir,
                    entries.as_mut_ptr(),
                    entries.len(),
                );
                if n <= 0 {
                    break;
                }
                let mut at = 0usize;
                while at < n as usize {
                    // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                    let reclen = u16::from_ne_bytes([entries[at + 16], entries[at + 17]]) as usize;
                    let name = &entries[at + 19..at + reclen];
                    at += reclen;
                    let Some(pid) = parse_pid(name) else {
                        continue;
                    };
                    if carries(pid, want, environ) {
                        if libc::getpgid(pid) == pid {
                            libc::killpg(pid, libc::SIGKILL);
                        } else {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            libc::close(dir);
        }
    }

    /// Whether `/proc/<pid>/environ` holds exactly the entry `want`.
    fn carries(pid: i32, want: &[u8], environ: &mut [u8]) -> bool {
        let mut path = [0u8; 32];
        let mut len = 0;
        for &b in b"/proc/" {
            path[len] = b;
            len += 1;
        }
        len += write_decimal(pid, &mut path[len..]);
        for &b in b"/environ\0" {
            path[len] = b;
            len += 1;
        }
        // SAFETY: path is NUL-terminated; reads stay within `environ`.
        let filled = unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return false;
            }
            let mut filled = 0usize;
            while filled < environ.len() {
                let n = libc::read(
                    fd,
                    environ[filled..].as_mut_ptr().cast(),
                    environ.len() - filled,
                );
                if n <= 0 {
                    break;
                }
                filled += n as usize;
            }
            libc::close(fd);
            filled
        };
        environ[..filled]
            .split(|&b| b == 0)
            .any(|entry| entry == want)
    }

    fn parse_pid(name: &[u8]) -> Option<i32> {
        let mut pid: i32 = 0;
        let mut digits = 0;
        for &b in name {
            if b == 0 {
                break;
            }
            if !b.is_ascii_digit() {
                return None;
            }
            pid = pid.checked_mul(10)?.checked_add((b - b'0') as i32)?;
            digits += 1;
        }
        (digits > 0 && pid > 1).then_some(pid)
    }

    /// Writes `n` (positive) in decimal; returns the number of bytes.
    fn write_decimal(n: i32, out: &mut [u8]) -> usize {
        let mut digits = [0u8; 12];
        let (mut n, mut len) = (n, 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            out[i] = digits[len - 1 - i];
        }
        len
    }

    fn now() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime is async-signal-safe and ts is valid.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Closes every descriptor except `keep`.
    unsafe fn close_all_but(keep: i32) {
        // SAFETY: closing descriptors has no memory-safety preconditions.
        unsafe {
            let ok = (keep == 0 || libc::close_range(0, keep as u32 - 1, 0) == 0)
                && libc::close_range(keep as u32 + 1, u32::MAX, 0) == 0;
            if !ok {
                // Kernels before 5.9: close what a process usually has open.
                for fd in 0..65536 {
                    if fd != keep {
                        libc::close(fd);
                    }
                }
            }
        }
    }
}
