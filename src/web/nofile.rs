//! `serve` raises its soft limit of open files (RLIMIT_NOFILE) to the hard
//! limit at start: every connection is a file descriptor, and the usual
//! soft default (1024) is far below `[server] max_connections`.
//!
//! What must stay true: this never fails the start. Under the systemd unit
//! `SystemCallFilter=~@resources` makes getrlimit/setrlimit fail with
//! EPERM, and `LimitNOFILE=` has set soft = hard already: the failure is
//! logged, not fatal.

/// Raise the soft NOFILE limit to the hard one; log what was got, and warn
/// when it cannot hold `max_connections` connections.
pub fn raise_soft_limit(max_connections: usize) {
    match raise() {
        Ok((before, after)) => {
            tracing::info!(before, after, "open files limit (RLIMIT_NOFILE, soft)");
            if after < max_connections as u64 + 64 {
                tracing::warn!(
                    limit = after,
                    max_connections,
                    "the open files limit is below `[server] max_connections` + 64: connections beyond it fail at accept (raise LimitNOFILE= or `ulimit -n`, or lower max_connections)"
                );
            }
        }
        Err(e) => tracing::info!(
            error = %e,
            "cannot read or raise the open files limit (RLIMIT_NOFILE); under systemd, LimitNOFILE= sets it"
        ),
    }
}

/// `(soft before, soft after)`.
fn raise() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}
