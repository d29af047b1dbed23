//! The process's open-file limit and the connection cap derived from it.
//!
//! Every client connection holds a descriptor, and so do packs (one each, kept open), the
//! index, staged uploads, clamd and S3 connections. Without a cap, idle sockets use up the
//! limit and the engine's own opens fail with EMFILE; with one, excess connections wait in the
//! kernel's listen backlog (no descriptor of ours) until a connection closes.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::ServerSettings;

/// Fewest connections a derived cap allows, however low the limit: below this the service
/// could not answer a health check next to a few clients.
const MIN_CONNECTIONS: u64 = 8;
/// The smallest default reserve (see [`ServerSettings::fd_reserve`]).
const MIN_RESERVE: u64 = 64;

/// The figures the cap came from, logged at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit before [`raise_nofile`] (None: unlimited).
    pub soft_before: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    pub hard: Option<u64>,
    /// Descriptors open when the figures were taken (packs, index, listener, stdio).
    pub in_use: u64,
    pub reserve: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// Whether `max_connections` came from the configuration rather than the limit.
    pub configured: bool,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (no privilege needed) and returns
/// (soft before, soft after, hard); `None` is unlimited. A failure leaves the soft limit as
/// it was: the cap is then derived from that.
pub fn raise_nofile() -> (Option<u64>, Option<u64>, Option<u64>) {
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum && before.maximum.is_some() {
        let wanted = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            tracing::warn!(error = %e, "could not raise the open-file limit to the hard limit");
        }
    }
    let now = getrlimit(Resource::Nofile);
    (before.current, now.current, now.maximum)
}

/// Descriptors this process has open now (0 when the platform cannot say).
pub fn open_descriptors() -> u64 {
    for dir in ["/proc/self/fd", "/dev/fd"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            // The listing itself holds one descriptor while it runs.
            return (entries.count() as u64).saturating_sub(1);
        }
    }
    0
}

/// Raises the limit and derives the connection cap: `max_connections` if configured, else the
/// soft limit minus the descriptors open now minus the reserve.
pub fn budget(settings: &ServerSettings) -> FdBudget {
    let (soft_before, soft, hard) = raise_nofile();
    let in_use = open_descriptors();
    derive(settings, soft_before, soft, hard, in_use)
}

fn derive(
    settings: &ServerSettings,
    soft_before: Option<u64>,
    soft: Option<u64>,
    hard: Option<u64>,
    in_use: u64,
) -> FdBudget {
    // The semaphore's ceiling; an unlimited file limit caps nothing else.
    let ceiling = tokio::sync::Semaphore::MAX_PERMITS as u64;
    let limit = soft.unwrap_or(ceiling).min(ceiling);
    let reserve = settings
        .fd_reserve
        .unwrap_or_else(|| (limit / 8).max(MIN_RESERVE));
    let derived = limit
        .saturating_sub(in_use)
        .saturating_sub(reserve)
        .max(MIN_CONNECTIONS);
    let (max, configured) = match settings.max_connections {
        Some(n) => (n as u64, true),
        None => (derived, false),
    };
    FdBudget {
        soft_before,
        soft,
        hard,
        in_use,
        reserve,
        max_connections: max.min(ceiling) as usize,
        configured,
    }
}

impl FdBudget {
    /// Says how the cap was reached, and warns when it leaves the engine nothing.
    pub fn log(&self) {
        let show = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
        tracing::info!(
            max_connections = self.max_connections,
            configured = self.configured,
            open_file_limit = %show(self.soft),
            raised_from = %show(self.soft_before),
            hard_limit = %show(self.hard),
            in_use = self.in_use,
            reserve = self.reserve,
            "connection cap"
        );
        if let Some(soft) = self.soft {
            let room = soft.saturating_sub(self.in_use);
            if self.max_connections as u64 + self.reserve > room {
                tracing::warn!(
                    max_connections = self.max_connections,
                    reserve = self.reserve,
                    available = room,
                    "the connection cap and the reserve exceed the open-file limit: uploads or \
                     accepts may fail with \"too many open files\" under load (raise the limit \
                     with ulimit -n or LimitNOFILE)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: Option<usize>, reserve: Option<u64>) -> ServerSettings {
        ServerSettings {
            max_connections: max,
            fd_reserve: reserve,
            ..Default::default()
        }
    }

    #[test]
    fn cap_is_the_limit_less_what_is_open_and_the_reserve() {
        let b = derive(
            &settings(None, None),
            Some(1024),
            Some(4096),
            Some(4096),
            40,
        );
        // 4096 - 40 in use - 512 (an eighth).
        assert_eq!(
            (b.reserve, b.max_connections, b.configured),
            (512, 3544, false)
        );
        let b = derive(&settings(None, None), Some(256), Some(256), Some(256), 20);
        assert_eq!((b.reserve, b.max_connections), (64, 172));
        let b = derive(&settings(None, Some(10)), None, Some(256), Some(256), 20);
        assert_eq!(b.max_connections, 226);
    }

    #[test]
    fn a_tiny_limit_still_leaves_a_few_connections_and_configuration_wins() {
        let b = derive(&settings(None, None), Some(32), Some(32), Some(32), 30);
        assert_eq!(b.max_connections, MIN_CONNECTIONS as usize);
        let b = derive(
            &settings(Some(5000), None),
            Some(256),
            Some(256),
            Some(256),
            20,
        );
        assert_eq!((b.max_connections, b.configured), (5000, true));
        let b = derive(&settings(None, None), None, None, None, 20);
        assert!(b.max_connections > 1 << 40 && b.soft.is_none());
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (_, soft, hard) = raise_nofile();
        if hard.is_some() {
            assert_eq!(soft, hard);
        }
        assert!(open_descriptors() >= 3, "stdio at least");
    }
}
