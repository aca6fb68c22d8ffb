//! The open-file limit: every simulated agent holds one socket, so the limit caps the fleet per process.

/// Files kept aside for the runtime, the status file, and enrollments in flight (each holds a connection
/// or two for a moment).
pub const RESERVED_FILES: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (the most an unprivileged raise can get).
pub fn raise_open_files() -> std::io::Result<FileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                "cannot raise the open-file limit from {} to {}: {}",
                lim.rlim_cur,
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(FileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// A fleet larger than this process's open-file limit holds, and how to split it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--agents {agents} needs about {needed} open files (one connection per agent plus {RESERVED_FILES} \
     kept aside), but this process may open at most {limit} (RLIMIT_NOFILE, raised to its hard limit). \
     Run at most {per_process} agents per process: split the fleet over {processes} drover-sim processes \
     with --agents and --start-index"
)]
pub struct TooManyAgents {
    pub agents: u64,
    pub needed: u64,
    pub limit: u64,
    pub per_process: u64,
    pub processes: u64,
}

/// Refuses a fleet this process cannot hold, saying how to split it.
pub fn check_capacity(agents: u64, limit: u64) -> Result<(), TooManyAgents> {
    let needed = agents + RESERVED_FILES;
    if needed <= limit {
        return Ok(());
    }
    let per_process = limit.saturating_sub(RESERVED_FILES).max(1);
    Err(TooManyAgents {
        agents,
        needed,
        limit,
        per_process,
        processes: agents.div_ceil(per_process),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_that_fits_is_accepted_and_one_that_does_not_is_told_how_to_split() {
        assert!(check_capacity(19_000, 20_000).is_ok());
        let e = check_capacity(25_000, 20_000).unwrap_err().to_string();
        assert!(e.contains("at most 20000"), "{e}");
        assert!(e.contains("19800 agents per process"), "{e}");
        assert!(e.contains("over 2 drover-sim processes"), "{e}");
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let l = raise_open_files().unwrap();
        assert!(l.soft <= l.hard);
    }
}
