//! The TOML configuration file (`tessera --config FILE`): every default of the product is a key
//! here. Missing keys take the defaults documented on each field; unknown keys are an error, so
//! a typo never silently leaves a default in place.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! public_url = "https://files.example.com"   # used in tus Location headers and signed links
//! header_read_timeout = "30s"                  # a request's headers must arrive within this
//! idle_timeout = "60s"                         # an idle keep-alive connection is closed after this
//! body_idle_timeout = "60s"                    # a body (up or down) that stalls this long is cut
//! # max_connections = 10000                    # default: from the open-file limit (see below)
//! # fd_reserve = 1024                          # descriptors kept for packs, index, uploads...
//!
//! [uploads]
//! max_upload = "5GiB"
//! session_ttl = "24h"
//! max_sessions_per_user = 20                   # open tus sessions per user; then 429
//! session_metadata_budget = "256KiB"           # Upload-Metadata held by one user's open sessions
//! deferred_reservation = "100MB"               # quota a deferred-length session reserves
//! local_category_limits = false                # hold CLI/library puts to category limits too
//! max_parts = 100                              # file parts per multipart request
//! max_fields = 300                             # text fields per multipart request
//! max_field_size = "4KiB"                      # longest text field
//! max_form_overhead = "256KiB"                 # non-file bytes of a multipart body
//!
//! [links]
//! default_ttl = "1h"
//! max_ttl = "7d"
//!
//! [scan]                                       # virus scanning; absent: no scanning
//! clamd = "tcp://127.0.0.1:3310"               # or "unix:/run/clamav/clamd.ctl"
//! fail_open = false                            # scanner down: refuse (503), or store unscanned
//! categories = ["all"]                         # default; or a list, e.g. ["documents", "archives"]
//! stream_max = "100MiB"                        # clamd's StreamMaxLength must be at least this
//!
//! [quotas]                                     # every key optional
//! default_tier = "free"                        # tier of users without one (default: unlimited)
//! unregistered = "unlimited"                   # owners that are not users (library, CLI)
//! webhook = "http://127.0.0.1:9000/quota"      # warnings POSTed as JSON by `serve`
//! webhook_timeout = "5s"
//! [quotas.tiers]                               # default: these four
//! free = "1GB"
//! basic = "10GB"
//! pro = "100GB"
//! enterprise = "unlimited"
//! [quotas.orgs]                                # `tessera quota org set` overrides at run time
//! acme = "500GB"
//! [maintenance]                                # jobs `serve` runs; an interval of "0s" turns one off
//! gc_interval = "1h"
//! purge_interval = "1d"
//! purge_after = "30d"                          # soft-deleted files are purged after this
//! retention_interval = "1d"
//! expiry_interval = "1d"
//! quarantine_interval = "1h"
//! quarantine_purge_after = "7d"
//! [maintenance.retention.documents]            # per category; absent: every version is kept
//! keep_last = 10
//! keep_within = "30d"
//! [maintenance.expiry]                         # per category; over the SPEC defaults
//! images = "730d"                              # (images 730d, temp 1d, backups 90d)
//! videos = "never"
//!
//! [cold]                                       # the cold tier's store; absent: no cold tier
//! backend = "s3"                               # "s3", "dir" or "none" (default)
//! endpoint = "https://s3.example.com"          # absent: TESSERA_COLD_ENDPOINT, AWS_ENDPOINT_URL,
//!                                              # else AWS itself
//! bucket = "tessera"
//! region = "eu-west-1"                         # absent: TESSERA_COLD_REGION, AWS_REGION, else
//!                                              # "us-east-1" ("garage" for a default Garage)
//! prefix = "cold"                              # keys go under this prefix in the bucket
//! access_key_id = "AKIA..."                    # absent: TESSERA_COLD_ACCESS_KEY_ID, then
//!                                              # AWS_ACCESS_KEY_ID
//! secret_access_key = "..."                    # absent: TESSERA_COLD_SECRET_ACCESS_KEY, then
//!                                              # AWS_SECRET_ACCESS_KEY; never printed or logged
//! allow_http = false                           # plain http to a non-loopback endpoint
//! storage_class = "STANDARD_IA"                # class of puts that name none (default: bucket's)
//! part_size = "16MiB"                          # multipart above this size, in parts this size
//! part_concurrency = 4                         # parts of one upload in flight
//! max_retries = 4                              # retry budget, then a temporary error (503)
//! retry_timeout = "5s"
//! connect_timeout = "2s"
//! request_timeout = "60s"
//! # path = "/srv/tessera-cold"                 # backend = "dir": a directory instead
//!
//! [categories.images]                          # replaces the built-in category list
//! extensions = ["jpg", "jpeg", "png"]
//! mime_types = ["image/jpeg", "image/png"]
//! max_size = "10MB"
//! [categories.other]                           # a catch-all: lists no extension or type
//! max_size = "100MB"
//! ```
//!
//! A file's category is the server's decision (`validate::admission`): the category that
//! lists its extension, else the one that lists its detected type, else the catch-all. A
//! category a client names must take the file (else 422 `category_mismatch`) and never changes
//! its limit or its scan.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::maintenance::gc::GcOptions;
use crate::maintenance::lifecycle::{ExpiryRules, RetentionRule, RetentionRules, default_expiry};
use crate::maintenance::scheduler::{Job, Scheduled};
use crate::maintenance::tiering::{TierRule, TierRules, default_tier_rules};
use crate::quota::QuotaConfig;
use crate::scan::{
    Clamd, ClamdAddress, DEFAULT_STREAM_MAX, ScanCategories, ScanConfig, Scanner, Timeouts,
};
use crate::store::Config;
use crate::tier::{ColdTier, LocalDirTier, RetryBudget, Secret};
use crate::upload::SessionLimits;
use crate::validate::{CategoryRule, Policy};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub uploads: UploadSettings,
    pub links: LinkSettings,
    pub auth: AuthSettings,
    /// Upload categories. When present, replaces the built-in list (SPEC §2 defaults plus
    /// `other`, 100 MB) as a whole, so what is allowed is exactly what the file says.
    pub categories: Option<BTreeMap<String, CategoryRule>>,
    /// Virus scanning with clamd. Absent: uploads are not scanned (`serve` warns about it).
    pub scan: Option<ScanSettings>,
    /// Quotas: tier limits, the default tier, the limit of owners that are not users,
    /// organisation limits, the warning webhook (see [`QuotaConfig`]).
    pub quotas: QuotaConfig,
    /// Maintenance jobs and the scheduler inside `serve`.
    pub maintenance: MaintenanceSettings,
    /// `[cold]`: the object store of the cold tier (see [`ColdTierSettings`]). Absent: no
    /// cold tier.
    pub cold: Option<ColdTierSettings>,
    /// `[tiers]`: lifecycle rules and the read path of the cold tier (the tier itself is
    /// configured in `[cold]`; without one these do nothing).
    pub tiers: TierSettings,
    /// Images: probing limits, variant workers and retries, `strip_original_exif`.
    #[cfg(feature = "media")]
    pub media: crate::media::MediaConfig,
}

/// Which cold tier backend `[cold]` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdBackend {
    /// No cold tier (the default).
    #[default]
    None,
    /// An S3-compatible bucket (needs the `s3` feature).
    S3,
    /// A local directory.
    Dir,
}

/// `[cold]`: the object store holding cold data. The S3 keys may come from the
/// environment when the file leaves them out, so a file can be committed without secrets:
/// `endpoint` from `TESSERA_COLD_ENDPOINT` then `AWS_ENDPOINT_URL`, `region` from
/// `TESSERA_COLD_REGION` then `AWS_REGION`, the access key from `TESSERA_COLD_ACCESS_KEY_ID`
/// then `AWS_ACCESS_KEY_ID`, the secret from `TESSERA_COLD_SECRET_ACCESS_KEY` then
/// `AWS_SECRET_ACCESS_KEY`. A value in the file wins over the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdTierSettings {
    /// `"s3"`, `"dir"` or `"none"`. Default none.
    pub backend: ColdBackend,
    /// `dir`: the directory (created if missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    /// `s3`: `http(s)://host:port` of an S3-compatible server; absent: the environment, else
    /// AWS itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: the bucket (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `s3`: the region; absent: the environment, else `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: a key prefix inside the bucket. Default none (the bucket's root).
    pub prefix: String,
    /// `s3`: the access key id; absent: the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `s3`: the secret key; absent: the environment. Never serialized, printed or logged.
    #[serde(skip_serializing)]
    pub secret_access_key: Option<Secret>,
    /// `s3`: allow a plain `http` endpoint that is not on loopback (loopback always may).
    /// Default false.
    pub allow_http: bool,
    /// `s3`: storage class of cold objects whose put names none. Default: the bucket's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// `s3`: objects above this size go up as multipart uploads of parts this size (5 MiB to
    /// 5 GiB; grown for very large objects to keep within 10,000 parts). Default 16 MiB.
    pub part_size: ByteSize,
    /// `s3`: parts of one upload sent at once. Default 4.
    pub part_concurrency: usize,
    /// `s3`: retries of one request (connection errors, timeouts, 5xx) before the call fails
    /// as temporarily unavailable. Default 4.
    pub max_retries: usize,
    /// `s3`: no retry starts after this long. Default 5 s.
    #[serde(with = "duration")]
    pub retry_timeout: Duration,
    /// `s3`: connecting. Default 2 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// `s3`: one request, its body included. Default 60 s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

impl Default for ColdTierSettings {
    fn default() -> Self {
        let retry = RetryBudget::default();
        ColdTierSettings {
            backend: ColdBackend::None,
            path: None,
            endpoint: None,
            bucket: None,
            region: None,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            storage_class: None,
            part_size: ByteSize::mib(16),
            part_concurrency: 4,
            max_retries: retry.max_retries,
            retry_timeout: retry.retry_timeout,
            connect_timeout: retry.connect_timeout,
            request_timeout: retry.request_timeout,
        }
    }
}

/// `[tiers]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierSettings {
    /// Memory the cold read path caches objects in. Default 64 MiB.
    pub cache: ByteSize,
    /// Cold reads fetch aligned blocks of this size, one range GET each. Default 2 MiB.
    pub read_block: ByteSize,
    /// Move a file read from the cold tier back to hot. Default false.
    pub rehydrate_on_read: bool,
    /// Per category, merged over SPEC §6's defaults (documents 90 days, images 30, backups 7).
    pub rules: BTreeMap<String, TierRuleSettings>,
}

impl Default for TierSettings {
    fn default() -> Self {
        TierSettings {
            cache: ByteSize::mib(64),
            read_block: ByteSize::mib(2),
            rehydrate_on_read: false,
            rules: BTreeMap::new(),
        }
    }
}

/// The environment variables `[cold]` falls back on, in order of preference.
pub const COLD_ENV: [(&str, [&str; 2]); 4] = [
    ("endpoint", ["TESSERA_COLD_ENDPOINT", "AWS_ENDPOINT_URL"]),
    ("region", ["TESSERA_COLD_REGION", "AWS_REGION"]),
    (
        "access_key_id",
        ["TESSERA_COLD_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"],
    ),
    (
        "secret_access_key",
        ["TESSERA_COLD_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"],
    ),
];

impl ColdTierSettings {
    fn check(&self) -> std::result::Result<(), String> {
        let s3_keys = [
            ("endpoint", self.endpoint.is_some()),
            ("bucket", self.bucket.is_some()),
            ("region", self.region.is_some()),
            ("prefix", !self.prefix.is_empty()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("storage_class", self.storage_class.is_some()),
        ];
        match self.backend {
            ColdBackend::None => {
                if self.path.is_some() || s3_keys.iter().any(|(_, set)| *set) {
                    return Err("cold: backend is \"none\" (the default) but other keys \
                                are set; say backend = \"s3\" or \"dir\""
                        .into());
                }
            }
            ColdBackend::Dir => {
                if self.path.is_none() {
                    return Err("cold: backend \"dir\" needs a path".into());
                }
                if let Some((k, _)) = s3_keys.iter().find(|(_, set)| *set) {
                    return Err(format!("cold.{k} is for backend \"s3\", not \"dir\""));
                }
            }
            ColdBackend::S3 => {
                if cfg!(not(feature = "s3")) {
                    return Err("cold: backend \"s3\" needs a build with the `s3` feature".into());
                }
                if self.path.is_some() {
                    return Err("cold.path is for backend \"dir\", not \"s3\"".into());
                }
                if self.bucket.as_deref().unwrap_or("").is_empty() {
                    return Err("cold: backend \"s3\" needs a bucket".into());
                }
                let min = 5 << 20;
                let max = 5 << 30;
                if !(min..=max).contains(&self.part_size.as_u64()) {
                    return Err("cold.part_size must be between 5MiB and 5GiB (S3's limits)".into());
                }
                if self.part_concurrency == 0 {
                    return Err("cold.part_concurrency must be at least 1".into());
                }
                if let Some(e) = &self.endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err(format!(
                        "cold.endpoint {e:?} must start with http:// or https://"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The cold tier these settings describe, with the process environment as the fallback for
    /// the S3 keys the file leaves out. `None` for backend `none`.
    pub fn build(&self) -> Result<Option<Arc<dyn ColdTier>>> {
        self.build_with_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`build`](Self::build) with `env` as the environment (tests pass a map).
    pub fn build_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Arc<dyn ColdTier>>> {
        let invalid = |m: String| Error::InvalidInput(format!("cold: {m}"));
        self.check().map_err(invalid)?;
        match self.backend {
            ColdBackend::None => Ok(None),
            ColdBackend::Dir => {
                let path = self.path.as_ref().expect("checked");
                let tier = LocalDirTier::new(path).map_err(|source| Error::Io {
                    context: format!("creating the cold tier directory {}", path.display()),
                    source,
                })?;
                Ok(Some(Arc::new(tier)))
            }
            #[cfg(feature = "s3")]
            ColdBackend::S3 => {
                let opts = self.s3_options(env).map_err(invalid)?;
                let tier = crate::tier::S3Tier::new(opts).map_err(|e| invalid(e.to_string()))?;
                Ok(Some(Arc::new(tier)))
            }
            #[cfg(not(feature = "s3"))]
            ColdBackend::S3 => {
                let _ = env;
                unreachable!("check refuses s3 without the feature")
            }
        }
    }

    /// The S3 options: this section's keys over the environment's.
    #[cfg(feature = "s3")]
    pub fn s3_options(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<crate::tier::S3Options, String> {
        let from_env = |field: &str| {
            let (_, vars) = COLD_ENV.iter().find(|(f, _)| *f == field).expect("known");
            vars.iter().find_map(|v| env(v))
        };
        let endpoint = self.endpoint.clone().or_else(|| from_env("endpoint"));
        let region = self
            .region
            .clone()
            .or_else(|| from_env("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let access_key_id = self
            .access_key_id
            .clone()
            .or_else(|| from_env("access_key_id"))
            .ok_or("no access key id: set access_key_id, TESSERA_COLD_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID")?;
        let secret = self
            .secret_access_key
            .clone()
            .or_else(|| from_env("secret_access_key").map(Secret::new))
            .ok_or("no secret key: set secret_access_key, TESSERA_COLD_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY")?;
        let allow_http = self.allow_http
            || endpoint
                .as_deref()
                .is_some_and(crate::tier::is_loopback_http);
        Ok(crate::tier::S3Options {
            endpoint,
            bucket: self.bucket.clone().expect("checked"),
            region,
            prefix: self.prefix.clone(),
            access_key_id,
            secret_access_key: secret,
            allow_http,
            default_storage_class: self.storage_class.clone(),
            part_size: self.part_size.as_u64(),
            part_concurrency: self.part_concurrency,
            retry: RetryBudget {
                max_retries: self.max_retries,
                retry_timeout: self.retry_timeout,
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
            },
        })
    }
}

/// `[tiers.rules.<category>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRuleSettings {
    /// Files not read for this long go cold (`"90d"`), or `"never"`.
    pub cold_after: ExpirySetting,
    /// Storage class of the objects (`STANDARD_IA`, `GLACIER_IR`, …). Default: the bucket's.
    #[serde(default)]
    pub storage_class: Option<String>,
}

impl TierSettings {
    /// The lifecycle rules: SPEC §6's defaults for the categories `policy` has, with this
    /// section's entries over them.
    pub fn rules(&self, policy: &Policy) -> TierRules {
        let mut rules = default_tier_rules(policy);
        for (c, r) in &self.rules {
            match r.cold_after {
                ExpirySetting::Never => rules.remove(c),
                ExpirySetting::After(d) => rules.insert(
                    c.clone(),
                    TierRule {
                        cold_after: d,
                        storage_class: r.storage_class.clone(),
                    },
                ),
            };
        }
        rules
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanSettings {
    /// Where clamd listens: `tcp://HOST:PORT` or `unix:/PATH`. Default `tcp://127.0.0.1:3310`.
    pub clamd: ClamdAddress,
    /// When clamd is down, times out or fails: `false` (default) refuses the upload (503,
    /// nothing stored); `true` stores it marked unscanned.
    pub fail_open: bool,
    /// Categories whose uploads are scanned, or `["all"]` (the default: every upload). A put
    /// is scanned when the list names its category or the category its content alone belongs
    /// to (its detected type), so no name or client-chosen category takes a file out of it.
    pub categories: Vec<String>,
    /// Longest stream sent to clamd; a larger file in a scanned category is refused (413).
    /// clamd's `StreamMaxLength` must be at least this. Default 100 MiB.
    pub stream_max: ByteSize,
    /// Connecting to clamd. Default 5 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Each write to clamd, and PING/VERSION answers. Default 30 s.
    #[serde(with = "duration")]
    pub io_timeout: Duration,
    /// The verdict after the last byte. Default 2 min.
    #[serde(with = "duration")]
    pub scan_timeout: Duration,
}

impl Default for ScanSettings {
    fn default() -> Self {
        let t = Timeouts::default();
        ScanSettings {
            clamd: ClamdAddress::Tcp("127.0.0.1:3310".into()),
            fail_open: false,
            categories: vec!["all".into()],
            stream_max: ByteSize::b(DEFAULT_STREAM_MAX),
            connect_timeout: t.connect,
            io_timeout: t.io,
            scan_timeout: t.scan,
        }
    }
}

impl ScanSettings {
    /// The clamd client these settings describe.
    pub fn clamd(&self) -> Clamd {
        Clamd::new(
            self.clamd.clone(),
            Timeouts {
                connect: self.connect_timeout,
                io: self.io_timeout,
                scan: self.scan_timeout,
            },
        )
    }

    /// The engine's scanning configuration, with `scanner` (normally [`ScanSettings::clamd`]).
    pub fn scan_config(&self, scanner: Arc<dyn Scanner>) -> ScanConfig {
        let categories = if self.categories.iter().any(|c| c == "all") {
            ScanCategories::All
        } else {
            ScanCategories::Only(self.categories.iter().cloned().collect())
        };
        ScanConfig {
            scanner,
            fail_open: self.fail_open,
            categories,
            stream_max: self.stream_max.as_u64(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Default `127.0.0.1:8080`: loopback until someone decides otherwise.
    pub listen: SocketAddr,
    /// The URL clients reach the service at (no trailing slash). Default: `http://` + listen.
    pub public_url: Option<String>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>` (or an admin's token).
    /// Default none: metrics are open, as Prometheus scrapers usually expect on a private
    /// network.
    pub metrics_token: Option<String>,
    /// Build URLs from `X-Forwarded-Proto`/`X-Forwarded-Host` (only behind a trusted proxy).
    /// Default false.
    pub trust_forwarded: bool,
    /// Threads for engine work (puts, gets) off the async runtime. Default 0 = tokio's default
    /// blocking pool.
    pub worker_threads: usize,
    /// A client must finish sending a request's headers within this long: from accepting the
    /// connection, and on a keep-alive connection from the first byte of the next request. A
    /// connection that misses it is closed (slowloris, half-sent headers). Default 30 s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte of a new one is closed after this
    /// long. Default 60 s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A request body that delivers no byte for this long while the server waits for one fails
    /// the request (408 `body_timeout`; a multipart upload stores nothing, a tus PATCH keeps
    /// the bytes received and stays resumable), and a response the client reads nothing of for
    /// this long is cut. Default 60 s.
    #[serde(with = "duration")]
    pub body_idle_timeout: Duration,
    /// Most client connections open at once; more wait in the listen backlog until one closes
    /// (they are accepted in turn, never refused). Default: derived at start from the open-file
    /// limit (the soft `RLIMIT_NOFILE`, first raised to the hard limit) minus the descriptors
    /// already open (packs, index) minus `fd_reserve`; the figures are logged.
    pub max_connections: Option<usize>,
    /// Descriptors kept back from connections for what the service opens while it runs (new
    /// packs, staged uploads, clamd and S3 connections). Default: an eighth of the open-file
    /// limit, at least 64.
    pub fd_reserve: Option<u64>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            metrics_token: None,
            trust_forwarded: false,
            worker_threads: 0,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(60),
            max_connections: None,
            fd_reserve: None,
        }
    }
}

impl ServerSettings {
    fn check(&self) -> std::result::Result<(), String> {
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
        ] {
            // Zero would close every connection at once; "never" is what the timers exist
            // to prevent.
            if d.is_zero() {
                return Err(format!("server.{key} must be more than 0"));
            }
        }
        if self.max_connections == Some(0) {
            return Err("server.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadSettings {
    /// Largest single upload (any route). Default 5 GiB.
    pub max_upload: ByteSize,
    /// A resumable session with no activity for this long expires. Default 24 h.
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// How often `serve` sweeps expired sessions. Default 10 min.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// Open (unfinished, unexpired) tus sessions one user may hold; one more is 429
    /// `too_many_sessions` with `Retry-After`. Default 20.
    pub max_sessions_per_user: usize,
    /// Bytes of `Upload-Metadata` (as stored) one user's open sessions may hold; past it,
    /// 429 `session_metadata_budget`. Default 256 KiB.
    pub session_metadata_budget: ByteSize,
    /// Quota a deferred-length session (`Upload-Defer-Length: 1`) reserves at creation when
    /// its name does not decide its category (when it does, that category's `max_size`).
    /// Default 100 MB.
    pub deferred_reservation: ByteSize,
    /// Hold local puts (`tessera put`, the library) to the categories' `max_size` too.
    /// Default false: the store's owner is limited by quotas only; uploads through the
    /// service always are.
    pub local_category_limits: bool,
    /// Most file parts in one multipart request (`POST /api/files`, `/api/images`): the next
    /// one is refused with 413 `too_many_parts` and the request stores nothing. Default 100.
    pub max_parts: usize,
    /// Most text fields (parts without a file name) in one multipart request: 413
    /// `too_many_fields`, nothing stored. Default 300 (a `key`, `category` and `public`
    /// before each of 100 files).
    pub max_fields: usize,
    /// Longest text field: 413 `field_too_large`, nothing stored. Default 4 KiB.
    pub max_field_size: ByteSize,
    /// Most bytes of a multipart body that are not file content — boundaries, part headers,
    /// text fields, preamble and epilogue together: 413 `form_too_large`, nothing stored.
    /// It is also the quota's slack for a declared body: a request whose Content-Length
    /// minus this cannot fit is refused before its body is read. Default 256 KiB.
    pub max_form_overhead: ByteSize,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            max_upload: ByteSize::gib(5),
            session_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
            max_sessions_per_user: 20,
            session_metadata_budget: ByteSize::kib(256),
            deferred_reservation: ByteSize::mb(100),
            local_category_limits: false,
            max_parts: 100,
            max_fields: 300,
            max_field_size: ByteSize::kib(4),
            max_form_overhead: ByteSize::kib(256),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSettings {
    /// The HMAC key for signed links, at least 32 bytes, as hex. Default: a random key kept in
    /// `<store>/signing.key` (created on first start, mode 0600).
    pub signing_key: Option<String>,
    /// Keys still accepted for links signed before a rotation (hex).
    pub previous_keys: Vec<String>,
    /// Life of a link when the request does not say. Default 1 h.
    #[serde(with = "duration")]
    pub default_ttl: Duration,
    /// Longest life a link may ask for. Default 7 days.
    #[serde(with = "duration")]
    pub max_ttl: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            signing_key: None,
            previous_keys: Vec::new(),
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// On the first start with no users, create `admin` and print its token once. Default true.
    pub bootstrap_admin: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            bootstrap_admin: true,
        }
    }
}

/// `[maintenance]`: what each job does and how often `serve` runs it (store clock). An interval
/// of zero (`"0s"`) turns that job off in the scheduler; the CLI commands run it regardless.
/// Expired upload sessions are swept on `uploads.sweep_interval`, by their own loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Run the scheduler inside `serve`. Default true.
    pub enabled: bool,
    /// Garbage collection and compaction. Default 1 h.
    #[serde(with = "duration")]
    pub gc_interval: Duration,
    /// How long a chunk stays unreferenced before the collector may sweep it. Default 1 h.
    #[serde(with = "duration")]
    pub gc_grace: Duration,
    /// Garbage share (0..1) at which a pack is rewritten. Default 0.2.
    pub compact_threshold: f64,
    /// Purge of soft-deleted files. Default 1 day.
    #[serde(with = "duration")]
    pub purge_interval: Duration,
    /// Soft-deleted files are purged this long after their deletion (undelete works until
    /// then). Default 30 days.
    #[serde(with = "duration")]
    pub purge_after: Duration,
    /// Version retention (`retention`). Default 1 day.
    #[serde(with = "duration")]
    pub retention_interval: Duration,
    /// Lifecycle expiry (`expiry`). Default 1 day.
    #[serde(with = "duration")]
    pub expiry_interval: Duration,
    /// Purge of quarantined files. Default 1 h.
    #[serde(with = "duration")]
    pub quarantine_interval: Duration,
    /// Quarantined files are purged this long after they were quarantined. Default 7 days.
    #[serde(with = "duration")]
    pub quarantine_purge_after: Duration,
    /// Moves to the cold tier by the `[tiers.rules]` (`cold_move`); nothing happens without a
    /// cold tier. Default 1 day.
    #[serde(with = "duration")]
    pub cold_move_interval: Duration,
    /// Version retention per category (`keep_last`, `keep_within`): a version is kept when
    /// either rule keeps it; the current version always is. Default: none, every version is
    /// kept.
    pub retention: BTreeMap<String, RetentionSettings>,
    /// Expiry per category: a live file whose current content is older is soft-deleted (and
    /// purged `purge_after` later). A duration, or `"never"`. Merged over SPEC §6's defaults
    /// for the categories that exist: images 730 days, temp 1 day, backups 90 days.
    pub expiry: BTreeMap<String, ExpirySetting>,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        MaintenanceSettings {
            enabled: true,
            gc_interval: HOUR,
            gc_grace: HOUR,
            compact_threshold: 0.2,
            purge_interval: DAY,
            purge_after: 30 * DAY,
            retention_interval: DAY,
            expiry_interval: DAY,
            quarantine_interval: HOUR,
            quarantine_purge_after: 7 * DAY,
            cold_move_interval: DAY,
            retention: BTreeMap::new(),
            expiry: BTreeMap::new(),
        }
    }
}

/// `[maintenance.retention.<category>]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Keep the newest N versions, the current one included (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep versions written less than this long ago.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<Duration>,
}

/// An expiry age, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpirySetting {
    Never,
    After(Duration),
}

impl Serialize for ExpirySetting {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ExpirySetting::Never => s.serialize_str("never"),
            ExpirySetting::After(d) => duration::serialize(d, s),
        }
    }
}

impl<'de> Deserialize<'de> for ExpirySetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "never" {
            return Ok(ExpirySetting::Never);
        }
        match humantime::parse_duration(&s).map_err(serde::de::Error::custom)? {
            d if d.is_zero() => Err(serde::de::Error::custom(
                "an expiry of zero would delete every file; write \"never\" to turn it off",
            )),
            d => Ok(ExpirySetting::After(d)),
        }
    }
}

impl MaintenanceSettings {
    /// The retention rules, by category.
    pub fn retention_rules(&self) -> RetentionRules {
        self.retention
            .iter()
            .map(|(c, r)| {
                (
                    c.clone(),
                    RetentionRule {
                        keep_last: r.keep_last,
                        keep_within: r.keep_within,
                    },
                )
            })
            .collect()
    }

    /// The expiry rules: SPEC §6's defaults for the categories `policy` has, with this
    /// section's entries over them.
    pub fn expiry_rules(&self, policy: &Policy) -> ExpiryRules {
        let mut rules = default_expiry(policy);
        for (c, e) in &self.expiry {
            match e {
                ExpirySetting::Never => rules.remove(c),
                ExpirySetting::After(d) => rules.insert(c.clone(), *d),
            };
        }
        rules
    }

    /// Every job with its interval, as the scheduler takes them.
    pub fn jobs(&self, policy: &Policy) -> Vec<Scheduled> {
        vec![
            Scheduled {
                job: Job::Gc(GcOptions {
                    grace: self.gc_grace,
                    compact_threshold: self.compact_threshold,
                    ..GcOptions::default()
                }),
                interval: self.gc_interval,
            },
            Scheduled {
                job: Job::PurgeDeleted {
                    older_than: self.purge_after,
                },
                interval: self.purge_interval,
            },
            Scheduled {
                job: Job::Retention(self.retention_rules()),
                interval: self.retention_interval,
            },
            Scheduled {
                job: Job::Expiry(self.expiry_rules(policy)),
                interval: self.expiry_interval,
            },
            Scheduled {
                job: Job::QuarantinePurge {
                    older_than: self.quarantine_purge_after,
                },
                interval: self.quarantine_interval,
            },
            Scheduled {
                job: Job::ColdMove,
                interval: self.cold_move_interval,
            },
        ]
    }

    fn check(&self, policy: &Policy) -> std::result::Result<(), String> {
        let known = || {
            policy
                .categories
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (section, names) in [
            ("retention", self.retention.keys().collect::<Vec<_>>()),
            ("expiry", self.expiry.keys().collect::<Vec<_>>()),
        ] {
            for c in names {
                if !policy.categories.contains_key(c) {
                    return Err(format!(
                        "maintenance.{section} names {c:?}, which is not a category (known: {})",
                        known()
                    ));
                }
            }
        }
        for (c, r) in &self.retention {
            if r.keep_last == Some(0) {
                return Err(format!(
                    "maintenance.retention.{c}.keep_last must be at least 1 (the current version)"
                ));
            }
        }
        if !(self.compact_threshold > 0.0 && self.compact_threshold <= 1.0) {
            return Err("maintenance.compact_threshold must be in (0, 1]".into());
        }
        Ok(())
    }
}

impl Settings {
    /// Reads a configuration file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading configuration {}", path.display()),
            source,
        })?;
        Settings::parse(&text)
            .map_err(|e| Error::InvalidInput(format!("configuration {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Settings, String> {
        let s: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    /// Cross-section checks: scanned categories must exist.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.server.check()?;
        self.quotas.check()?;
        if self.uploads.max_sessions_per_user == 0 {
            return Err("uploads.max_sessions_per_user must be at least 1".into());
        }
        let u = &self.uploads;
        if u.max_parts == 0 {
            return Err("uploads.max_parts must be at least 1".into());
        }
        if u.max_field_size > u.max_form_overhead {
            return Err(format!(
                "uploads.max_field_size ({}) is more than uploads.max_form_overhead ({}), \
                 which counts every text field",
                u.max_field_size, u.max_form_overhead
            ));
        }
        if let Some(scan) = &self.scan {
            let policy = self.policy();
            for c in &scan.categories {
                if c != "all" && !policy.categories.contains_key(c) {
                    return Err(format!(
                        "scan.categories names {c:?}, which is not a category (known: {}, or \"all\")",
                        policy
                            .categories
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            if scan.stream_max.as_u64() == 0 {
                return Err("scan.stream_max must be more than 0".into());
            }
        }
        self.maintenance.check(&self.policy())?;
        if let Some(cold) = &self.cold {
            cold.check()?;
        }
        Ok(())
    }

    /// The validation policy these settings ask for.
    pub fn policy(&self) -> Policy {
        match &self.categories {
            Some(c) => Policy {
                categories: c.clone(),
            },
            None => Policy::default(),
        }
    }

    /// The engine configuration these settings ask for (limits, categories); the rest of
    /// [`Config`] keeps its defaults.
    pub fn store_config(&self) -> Config {
        Config {
            max_upload: self.uploads.max_upload.as_u64(),
            upload_ttl: self.uploads.session_ttl,
            policy: Arc::new(self.policy()),
            local_category_limits: self.uploads.local_category_limits,
            sessions: SessionLimits {
                max_open_per_user: self.uploads.max_sessions_per_user,
                metadata_budget: self.uploads.session_metadata_budget.as_u64(),
                deferred_reservation: self.uploads.deferred_reservation.as_u64(),
            },
            scan: self
                .scan
                .as_ref()
                .map(|s| s.scan_config(Arc::new(s.clamd()))),
            quotas: self.quotas.clone(),
            tier_rules: self.tiers.rules(&self.policy()),
            cold_cache_bytes: self.tiers.cache.as_u64(),
            cold_read_block: self.tiers.read_block.as_u64(),
            rehydrate_on_read: self.tiers.rehydrate_on_read,
            #[cfg(feature = "media")]
            media: self.media.clone(),
            ..Config::default()
        }
    }

    /// The cold tier `[cold]` describes (`None` without the section or with backend
    /// `none`); [`store_config`](Self::store_config) leaves `Config::cold_tier` to the caller,
    /// which builds the tier once with this and sets it.
    pub fn cold_tier(&self) -> Result<Option<Arc<dyn ColdTier>>> {
        match &self.cold {
            Some(c) => c.build(),
            None => Ok(None),
        }
    }

    /// The base URL for links the service hands out.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.server.listen),
        }
    }
}

/// Durations as humantime strings ("90s", "24h", "7d").
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Optional durations as humantime strings; absent is `None`.
mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_typos_are_refused() {
        let d = Settings::default();
        let text = toml::to_string(&d).unwrap();
        let back = Settings::parse(&text).unwrap();
        assert_eq!(back.uploads.session_ttl, Duration::from_secs(86400));
        assert_eq!(back.server.listen, d.server.listen);

        let s = Settings::parse(
            "[server]\nlisten = \"127.0.0.1:9999\"\n[uploads]\nmax_upload = \"1GiB\"\nsession_ttl = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 9999);
        assert_eq!(s.uploads.max_upload, ByteSize::gib(1));
        assert_eq!(s.uploads.session_ttl, Duration::from_secs(7200));
        assert_eq!(s.public_url(), "http://127.0.0.1:9999");

        let err = Settings::parse("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(Settings::parse("[uploads]\nsession_ttl = \"soon\"\n").is_err());
        assert_eq!((d.uploads.max_parts, d.uploads.max_fields), (100, 300));
        let s =
            Settings::parse("[uploads]\nmax_parts = 3\nmax_form_overhead = \"64KiB\"\n").unwrap();
        assert_eq!(s.uploads.max_parts, 3);
        assert_eq!(s.uploads.max_form_overhead, ByteSize::kib(64));
        assert!(Settings::parse("[uploads]\nmax_parts = 0\n").is_err());
        assert!(Settings::parse("[uploads]\nmax_field_size = \"1MiB\"\n").is_err());
        assert!(Settings::parse("[uploads]\nmax_part = 3\n").is_err());
    }

    #[test]
    fn upload_limits_and_category_defaults() {
        let d = Settings::default();
        assert_eq!(d.uploads.max_sessions_per_user, 20);
        assert_eq!(d.uploads.session_metadata_budget, ByteSize::kib(256));
        assert_eq!(d.uploads.deferred_reservation, ByteSize::mb(100));
        assert!(!d.uploads.local_category_limits);
        let p = d.policy();
        assert_eq!(p.categories["other"].max_size, 100_000_000);
        assert_eq!(p.categories["archives"].max_size, 100_000_000);
        let c = d.store_config();
        assert_eq!(c.sessions, SessionLimits::default());
        assert!(!c.local_category_limits);

        let s = Settings::parse(
            "[uploads]\nmax_sessions_per_user = 3\nsession_metadata_budget = \"1KiB\"\n\
             deferred_reservation = \"5MB\"\nlocal_category_limits = true\n\
             [categories.other]\nmax_size = \"1MB\"\n",
        )
        .unwrap();
        let c = s.store_config();
        assert_eq!(
            c.sessions,
            SessionLimits {
                max_open_per_user: 3,
                metadata_budget: 1024,
                deferred_reservation: 5_000_000,
            }
        );
        assert!(c.local_category_limits);
        assert_eq!(c.policy.categories.len(), 1);
        let back = Settings::parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.uploads.max_sessions_per_user, 3);
        for bad in [
            "[uploads]\nmax_sessions_per_user = 0\n",
            "[uploads]\nmax_sessions = 5\n",
            "[uploads]\ndeferred_reservation = \"lots\"\n",
        ] {
            assert!(Settings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_limits_parse_and_zero_is_refused() {
        let d = Settings::default();
        assert_eq!(d.server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(d.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(d.server.body_idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (d.server.max_connections, d.server.fd_reserve),
            (None, None)
        );
        let s = Settings::parse(
            "[server]\nheader_read_timeout = \"250ms\"\nidle_timeout = \"2s\"\n\
             body_idle_timeout = \"1500ms\"\nmax_connections = 8\nfd_reserve = 100\n",
        )
        .unwrap();
        assert_eq!(s.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(2));
        assert_eq!(s.server.body_idle_timeout, Duration::from_millis(1500));
        assert_eq!(s.server.max_connections, Some(8));
        assert_eq!(s.server.fd_reserve, Some(100));
        let back = Settings::parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(back.server.max_connections, Some(8));
        for bad in [
            "header_read_timeout = \"0s\"",
            "idle_timeout = \"0ms\"",
            "body_idle_timeout = \"0s\"",
            "max_connections = 0",
        ] {
            let err = Settings::parse(&format!("[server]\n{bad}\n")).unwrap_err();
            assert!(err.contains(bad.split(' ').next().unwrap()), "{err}");
        }
    }

    #[test]
    fn quotas_section() {
        let d = Settings::default();
        assert_eq!(d.quotas.tiers.len(), 4);
        assert!(d.quotas.default_tier.is_none() && d.quotas.webhook.is_none());
        let s = Settings::parse(
            "[quotas]\ndefault_tier = \"basic\"\nwebhook = \"http://127.0.0.1:1/q\"\n\
             [quotas.tiers]\nbasic = \"5MiB\"\n[quotas.orgs]\nacme = \"1GB\"\n",
        )
        .unwrap();
        let c = s.store_config().quotas;
        assert_eq!(c.tiers.len(), 1, "a tiers table replaces the defaults");
        assert_eq!(c.tiers["basic"].0, Some(5 << 20));
        assert_eq!(c.orgs["acme"].0, Some(1_000_000_000));
        for bad in [
            "[quotas]\ndefault_tier = \"gold\"\n",
            "[quotas]\nwebhook = \"https://x\"\n",
            "[quotas]\nunregisterd = \"1GB\"\n",
            "[quotas.tiers]\nfree = \"much\"\n",
        ] {
            assert!(Settings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scan_section() {
        assert!(Settings::default().scan.is_none());
        assert!(Settings::default().store_config().scan.is_none());
        let s = Settings::parse("[scan]\n").unwrap();
        let scan = s.scan.as_ref().unwrap();
        assert_eq!(scan.clamd, ClamdAddress::Tcp("127.0.0.1:3310".into()));
        assert!(!scan.fail_open);
        let c = s.store_config().scan.unwrap();
        // With [scan] present, every upload is scanned unless the list is narrowed.
        assert_eq!(scan.categories, ["all"]);
        assert_eq!(c.categories, ScanCategories::All);
        assert!(c.categories.covers("images") && c.categories.covers("other"));
        assert_eq!(c.stream_max, 100 << 20);
        let narrowed = Settings::parse("[scan]\ncategories = [\"documents\"]\n").unwrap();
        let c = narrowed.store_config().scan.unwrap();
        assert!(c.categories.covers("documents") && !c.categories.covers("other"));

        let s = Settings::parse(
            "[scan]\nclamd = \"unix:/run/clamd.sock\"\nfail_open = true\ncategories = [\"all\"]\n\
             stream_max = \"20MiB\"\nscan_timeout = \"5s\"\n",
        )
        .unwrap();
        let c = s.store_config().scan.unwrap();
        assert!(c.fail_open && c.categories.covers("images"));
        assert_eq!(c.stream_max, 20 << 20);
        assert_eq!(s.scan.unwrap().scan_timeout, Duration::from_secs(5));

        for bad in [
            "[scan]\nclamd = \"localhost:3310\"\n",
            "[scan]\ncategories = [\"pictures\"]\n",
            "[scan]\nfailopen = true\n",
            "[scan]\nstream_max = 0\n",
        ] {
            assert!(Settings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn maintenance_section() {
        let d = Settings::default();
        assert!(d.maintenance.enabled);
        assert_eq!(d.maintenance.purge_after, Duration::from_secs(30 * 86400));
        assert_eq!(
            d.maintenance.quarantine_purge_after,
            Duration::from_secs(7 * 86400)
        );
        let jobs = d.maintenance.jobs(&d.policy());
        let names: Vec<_> = jobs.iter().map(|j| j.job.name()).collect();
        assert_eq!(
            names,
            [
                "gc",
                "purge",
                "retention",
                "expiry",
                "quarantine_purge",
                "cold_move"
            ]
        );
        // The defaults survive a round trip through TOML.
        let back = Settings::parse(&toml::to_string(&d).unwrap()).unwrap();
        assert_eq!(back.maintenance.gc_interval, d.maintenance.gc_interval);

        let s = Settings::parse(
            "[maintenance]\ngc_interval = \"0s\"\npurge_after = \"2d\"\n\
             [maintenance.retention.documents]\nkeep_last = 3\nkeep_within = \"10d\"\n\
             [maintenance.expiry]\nimages = \"never\"\nvideos = \"90d\"\n",
        )
        .unwrap();
        let m = &s.maintenance;
        assert_eq!(m.gc_interval, Duration::ZERO);
        let r = m.retention_rules();
        assert_eq!(r["documents"].keep_last, Some(3));
        assert_eq!(
            r["documents"].keep_within,
            Some(Duration::from_secs(10 * 86400))
        );
        let e = m.expiry_rules(&s.policy());
        assert!(!e.contains_key("images"), "never overrides the default");
        assert_eq!(e["videos"], Duration::from_secs(90 * 86400));
        let back = Settings::parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.maintenance.expiry["images"], ExpirySetting::Never);

        for bad in [
            "[maintenance.retention.pictures]\nkeep_last = 2\n",
            "[maintenance.retention.documents]\nkeep_last = 0\n",
            "[maintenance.retention.documents]\nkeep_forever = true\n",
            "[maintenance.expiry]\ntemp = \"1d\"\n",
            "[maintenance.expiry]\nimages = \"0s\"\n",
            "[maintenance.expiry]\nimages = \"soon\"\n",
            "[maintenance]\ncompact_threshold = 0\n",
            "[maintenance]\ngc_every = \"1h\"\n",
        ] {
            assert!(Settings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cold_tier_section() {
        assert!(Settings::default().cold.is_none());
        let none = Settings::parse("[cold]\n").unwrap();
        assert!(none.cold.unwrap().build().unwrap().is_none());

        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[cold]\nbackend = \"dir\"\npath = \"{}\"\n",
            dir.path().join("cold").display()
        );
        let s = Settings::parse(&text).unwrap();
        let tier = s.cold.unwrap().build().unwrap().unwrap();
        assert!(tier.describe().starts_with("dir:"), "{}", tier.describe());

        for (bad, why) in [
            ("[cold]\nbackend = \"dir\"\n", "needs a path"),
            ("[cold]\nbackend = \"ftp\"\n", "unknown variant"),
            ("[cold]\nbucket = \"b\"\n", "backend is \"none\""),
            (
                "[cold]\nbackend = \"dir\"\npath = \"/x\"\nbucket = \"b\"\n",
                "bucket",
            ),
            ("[cold]\nbackend = \"s3\"\n", "needs a bucket"),
            (
                "[cold]\nbackend = \"s3\"\nbucket = \"b\"\npart_size = \"1MiB\"\n",
                "part_size",
            ),
            (
                "[cold]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"s3.local\"\n",
                "http",
            ),
            (
                "[cold]\nbackend = \"s3\"\nbucket = \"b\"\nsecret = \"x\"\n",
                "secret",
            ),
        ] {
            let err = Settings::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[cfg(feature = "s3")]
    #[test]
    fn cold_tier_s3_from_file_and_environment() {
        let s = Settings::parse(
            "[cold]\nbackend = \"s3\"\nbucket = \"cold\"\nprefix = \"t\"\n\
             secret_access_key = \"file-secret\"\nstorage_class = \"STANDARD_IA\"\n\
             retry_timeout = \"3s\"\nmax_retries = 2\n",
        )
        .unwrap();
        let cold = s.cold.clone().unwrap();
        let env: BTreeMap<&str, &str> = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900"),
            ("TESSERA_COLD_ENDPOINT", "http://[::1]:3901"),
            ("AWS_REGION", "garage"),
            ("AWS_ACCESS_KEY_ID", "GKaws"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ]
        .into();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let o = cold.s3_options(lookup).unwrap();
        assert_eq!(
            o.endpoint.as_deref(),
            Some("http://[::1]:3901"),
            "TESSERA_ first"
        );
        assert_eq!(o.region, "garage");
        assert_eq!(o.access_key_id, "GKaws");
        assert_eq!(o.secret_access_key.expose(), "file-secret", "the file wins");
        assert!(o.allow_http, "loopback http is allowed");
        assert_eq!(o.default_storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(o.retry.retry_timeout, Duration::from_secs(3));
        assert_eq!(o.retry.max_retries, 2);
        let tier = cold.build_with_env(lookup).unwrap().unwrap();
        assert!(
            tier.describe().contains("s3://cold/t"),
            "{}",
            tier.describe()
        );

        // Secrets stay out of Debug and out of serialized settings.
        assert!(!format!("{s:?}").contains("file-secret"));
        assert!(!format!("{o:?}").contains("file-secret"));
        assert!(!toml::to_string(&s).unwrap().contains("file-secret"));

        // Missing credentials, and plain http off loopback, are refused with the reason.
        let e = cold.s3_options(|_| None).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let remote = |k: &str| match k {
            "AWS_ENDPOINT_URL" => Some("http://10.1.2.3:3900".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("GK".to_string()),
            _ => None,
        };
        let e = cold.build_with_env(remote).err().unwrap().to_string();
        assert!(e.contains("plain http"), "{e}");
    }
}
