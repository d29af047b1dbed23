//! The decision a put goes through: which category a file is, whether the category its caller
//! named may stand, and the size limit and scan decision that follow. Two steps, both on the
//! path of every `Store::put` (so of the CLI, the HTTP routes and tus finishes alike):
//!
//! 1. [`Policy::admit`], before any byte is read, with what the caller declares ([`Claims`]):
//!    a named category must exist; the extension and the declared type must not contradict
//!    what can already be decided; a declared size over the largest limit the file could still
//!    get is [`Error::TooLarge`]. When a category lists the extension, the category is known
//!    now and so is its limit.
//! 2. [`Admission::guard`]: reads a prefix of the content (at most [`PREFIX_LEN`] bytes),
//!    checks it against the claims (magic bytes, see `policy.rs`), decides the final category
//!    ([`Decision`]) and returns [`Guarded`], a reader that replays the prefix, streams the
//!    rest, and fails with [`Error::TooLarge`] (carried inside the `io::Error`) as soon as the
//!    input passes the category's limit.
//!
//! The category is the server's decision, from the extension and the detected type:
//! 1. the first category (by name) that lists the file's extension; else
//! 2. the first that lists its validated MIME type and takes its extension — any extension when
//!    the name claims no type (so a PDF named `x.bin` or `report` is a document); else
//! 3. the catch-all the caller named, if it named one; else the policy's catch-all (`other`);
//!    else the file is refused (`type_not_allowed`).
//!
//! A category the caller names is a claim, checked like the others: it must take the file's
//! extension and validated type, else the put is refused with [`CATEGORY_MISMATCH`]. For an
//! untrusted client ([`Origin::Client`]: the HTTP service) a file that a category lists is that
//! category whatever the client said, so no client choice widens a limit or skips a scan. The
//! store's owner ([`Origin::Local`]: the CLI, the library) may put a file in any category whose
//! rules it satisfies (a `.tar` in `backups`), and is not bound by the categories' size limits
//! unless the configuration says so (`Claims::local_limits`).
//!
//! Scanning is decided from the content as well: [`Decision::scan_categories`] holds the final
//! category and the one the content alone belongs to ([`Policy::content_category`]), and a put is
//! scanned when `scan.categories` covers either.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::policy::{
    CATEGORY_MISMATCH, Claim, FAMILIES, OCTET_STREAM, PREFIX_LEN, Policy, Sniffed,
    TYPE_NOT_ALLOWED, allows_mime, canonical_mime, describe_ext, extension_of, normalize_mime,
};
use crate::error::{Error, Result};

/// Whom a put is made for. It decides how far the caller's own word goes: see the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The store's owner: the CLI and the library. A named category stands when the file
    /// satisfies its rules; the categories' size limits apply only when configured.
    #[default]
    Local,
    /// An untrusted client: the HTTP service (multipart, images, tus). The category is the
    /// server's; the size limits always apply.
    Client,
}

/// What a put says about itself before its first byte.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims<'a> {
    /// The file's name; its extension is what counts.
    pub name: Option<&'a str>,
    /// The declared MIME type (parameters such as `; charset=` are ignored).
    pub mime: Option<&'a str>,
    /// The category the caller asks for.
    pub category: Option<&'a str>,
    /// The announced size.
    pub size: Option<u64>,
    pub origin: Origin,
    /// Apply the categories' size limits to a [`Origin::Local`] put too (a client's put is
    /// always limited).
    pub local_limits: bool,
}

impl Claims<'_> {
    fn limited(&self) -> bool {
        self.origin == Origin::Client || self.local_limits
    }
}

fn rejected(code: &'static str, detail: String) -> Error {
    Error::Rejected { code, detail }
}

impl Policy {
    /// Checks what can be decided before any byte is read (see the module documentation) and
    /// returns the admission the content is then guarded under.
    ///
    /// - A named category must exist ([`Error::InvalidInput`] otherwise).
    /// - When a category lists the extension, that category must take the declared type
    ///   ([`TYPE_NOT_ALLOWED`]), and a named category other than it must take the extension
    ///   and the declared type ([`CATEGORY_MISMATCH`]).
    /// - Otherwise some category must be able to take a file of this name at all
    ///   ([`TYPE_NOT_ALLOWED`]).
    /// - A declared size over the limit of the category the file will be in — or, when the
    ///   content decides that, over the largest limit it could get — is [`Error::TooLarge`].
    pub fn admit(&self, claims: &Claims<'_>) -> Result<Admission<'_>> {
        let extension = claims.name.and_then(extension_of);
        let declared_mime = claims.mime.and_then(normalize_mime);
        let named = match claims.category {
            Some(c) => Some(
                self.categories
                    .get_key_value(c)
                    .map(|(k, _)| k.as_str())
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "unknown category {c:?} (known: {})",
                            self.categories
                                .keys()
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?,
            ),
            None => None,
        };
        let listed = extension.as_deref().and_then(|e| self.listing_extension(e));
        let a = Admission {
            policy: self,
            describe: describe_ext(extension.as_deref(), claims.name),
            extension,
            declared_mime,
            named,
            listed,
            origin: claims.origin,
            limited: claims.limited(),
            declared_size: claims.size,
        };
        if let Some(l) = listed {
            if let Some(n) = named
                && n != l
                && !a.takes(n, a.declared_mime.as_deref())
            {
                return Err(a.mismatch(n, l, a.declared_mime.as_deref()));
            }
            let known = a.known_category().unwrap_or(l);
            let rule = &self.categories[known];
            if let Some(d) = a.declared_mime.as_deref()
                && !allows_mime(&rule.mime_types, d)
            {
                return Err(rejected(
                    TYPE_NOT_ALLOWED,
                    format!(
                        "category {known:?} does not accept type {d} (allowed: {})",
                        rule.mime_types.join(", ")
                    ),
                ));
            }
        } else if a.candidates().next().is_none() {
            return Err(rejected(
                TYPE_NOT_ALLOWED,
                format!("no category accepts {}", a.describe),
            ));
        }
        if a.limited
            && let Some(size) = claims.size
            && let Some((bound, category)) = a.size_bound()
            && size > bound
        {
            return Err(Error::TooLarge {
                limit: bound,
                what: format!(
                    "{} of {size} bytes (declared){}",
                    claims
                        .name
                        .map_or_else(|| "a file".to_string(), |n| format!("{n:?}")),
                    category.map_or_else(String::new, |c| format!(" for category {c:?}")),
                ),
            });
        }
        Ok(a)
    }
}

/// A put [`Policy::admit`] let in: the claims its content will be checked against, and what
/// was already decided from them.
#[derive(Debug, Clone)]
pub struct Admission<'p> {
    policy: &'p Policy,
    /// The extension, lower case, without the dot.
    extension: Option<String>,
    /// ".pdf files", "\"README\" (no extension)": for messages.
    describe: String,
    /// Lower case, without parameters; `application/octet-stream` counts as none.
    declared_mime: Option<String>,
    /// The category the caller named (it exists).
    named: Option<&'p str>,
    /// The category that lists the extension, if one does.
    listed: Option<&'p str>,
    origin: Origin,
    /// Whether the categories' size limits apply.
    limited: bool,
    declared_size: Option<u64>,
}

impl<'p> Admission<'p> {
    /// The file's extension, lower case, without the dot.
    pub fn extension(&self) -> Option<&str> {
        self.extension.as_deref()
    }

    /// The declared MIME type, lower case, without parameters (`application/octet-stream`
    /// counts as none).
    pub fn declared_mime(&self) -> Option<&str> {
        self.declared_mime.as_deref()
    }

    /// The category the file will be in when that is known before its content: the one that
    /// lists its extension (or, for the owner, the one named, which takes it). `None` when the
    /// content decides.
    pub fn known_category(&self) -> Option<&'p str> {
        let listed = self.listed?;
        Some(match (self.origin, self.named) {
            (Origin::Local, Some(n)) => n,
            _ => listed,
        })
    }

    /// The largest size the file may have as far as its claims tell, and the category when it
    /// is known; `None` when no limit applies.
    pub fn size_bound(&self) -> Option<(u64, Option<&'p str>)> {
        if !self.limited {
            return None;
        }
        if let Some(c) = self.known_category() {
            return Some((self.policy.categories[c].max_size, Some(c)));
        }
        self.candidates()
            .map(|c| self.policy.categories[c].max_size)
            .max()
            .map(|m| (m, None))
    }

    /// Categories a file of this name (and declared type) could still end up in when no
    /// category lists its extension: those listing a type the name or the declared type
    /// claims (any type, when they claim none), and the catch-alls.
    fn candidates(&self) -> impl Iterator<Item = &'p str> + '_ {
        let ext_claim = self.extension.as_deref().and_then(Claim::extension);
        let name_claims = ext_claim.is_some();
        let claimed: Option<Vec<String>> = ext_claim
            .map(|c| c.mimes)
            .filter(|m| !m.is_empty())
            .or_else(|| {
                self.declared_mime
                    .as_deref()
                    .map(|d| Claim::declared(d).mimes)
            });
        self.policy.categories.iter().filter_map(move |(k, r)| {
            let by_type = !r.mime_types.is_empty()
                && (!name_claims || r.allows_extension(self.extension.as_deref()))
                && claimed
                    .as_ref()
                    .is_none_or(|ms| ms.iter().any(|m| allows_mime(&r.mime_types, m)));
            (by_type || r.is_catch_all()).then_some(k.as_str())
        })
    }

    /// The first category (by name) that lists the type `mime` and takes this file's
    /// extension. A name that claims no type (`x.bin`, `README`) is taken by any: the content
    /// decides; a name that claims one must be allowed, as a listed extension would be.
    fn listing_type(&self, mime: &str, name_claims: bool) -> Option<&'p str> {
        self.policy
            .categories
            .iter()
            .find(|(_, r)| {
                r.lists_type(mime)
                    && (!name_claims || r.allows_extension(self.extension.as_deref()))
            })
            .map(|(k, _)| k.as_str())
    }

    /// Does category `c` take this file's extension and the type `mime` (if any)?
    fn takes(&self, c: &str, mime: Option<&str>) -> bool {
        let rule = &self.policy.categories[c];
        rule.allows_extension(self.extension.as_deref())
            && mime.is_none_or(|m| allows_mime(&rule.mime_types, m))
    }

    fn mismatch(&self, named: &str, is: &str, mime: Option<&str>) -> Error {
        rejected(
            CATEGORY_MISMATCH,
            format!(
                "category {named:?} does not take {}{}; this file is in category {is:?}",
                self.describe,
                mime.map_or_else(String::new, |m| format!(" of type {m}")),
            ),
        )
    }

    /// Checks the first bytes of the content against the claims and decides the file's
    /// category, validated MIME type and limit. `prefix` is the whole file or at least its
    /// first [`PREFIX_LEN`] bytes. [`Admission::guard`] uses it; so may a caller that holds
    /// the start of an upload before the rest arrives.
    pub fn inspect(&self, prefix: &[u8]) -> Result<Decision> {
        let content = Sniffed::new(prefix);
        let ext_claim = self.extension.as_deref().and_then(Claim::extension);
        let declared_claim = self.declared_mime.as_deref().map(Claim::declared);
        for claim in ext_claim.iter().chain(&declared_claim) {
            content.check(claim)?;
        }
        let mime = validated_mime(&content, ext_claim.as_ref(), declared_claim.as_ref());
        let policy = self.policy;
        let server = self
            .listed
            .or_else(|| self.listing_type(&mime, ext_claim.is_some()))
            .or_else(|| self.named.filter(|n| policy.categories[*n].is_catch_all()))
            .or_else(|| policy.catch_all())
            .ok_or_else(|| {
                rejected(
                    TYPE_NOT_ALLOWED,
                    format!("no category accepts {} of type {mime}", self.describe),
                )
            })?;
        let category = match (self.origin, self.named) {
            (Origin::Local, Some(n)) if self.takes(n, Some(&mime)) => n,
            _ => server,
        };
        if let Some(n) = self.named
            && n != category
            && !self.takes(n, Some(&mime))
        {
            return Err(self.mismatch(n, category, Some(&mime)));
        }
        let rule = &policy.categories[category];
        if !allows_mime(&rule.mime_types, &mime) {
            return Err(rejected(
                TYPE_NOT_ALLOWED,
                format!(
                    "category {category:?} does not accept {mime} content (allowed: {})",
                    rule.mime_types.join(", ")
                ),
            ));
        }
        let decision = Decision {
            category: category.to_string(),
            mime,
            max_size: self.limited.then_some(rule.max_size),
            content_category: policy.content_category_of(&content).map(str::to_string),
        };
        if let Some(max) = decision.max_size {
            if let Some(size) = self.declared_size
                && size > max
            {
                return Err(Error::TooLarge {
                    limit: max,
                    what: format!(
                        "{} of {size} bytes (declared) for category {category:?}",
                        self.describe
                    ),
                });
            }
            if prefix.len() as u64 > max {
                return Err(decision.too_large());
            }
        }
        Ok(decision)
    }

    /// Reads the start of `source` (up to [`PREFIX_LEN`] bytes, or to its end), decides with
    /// [`Admission::inspect`], and returns a reader that yields exactly the bytes of `source`
    /// and fails once they pass the category's limit.
    pub fn guard<R: Read>(self, mut source: R) -> Result<Guarded<R>> {
        let mut prefix = Vec::new();
        (&mut source)
            .take(PREFIX_LEN as u64)
            .read_to_end(&mut prefix)
            .map_err(crate::error::input_error)?;
        let decision = self.inspect(&prefix)?;
        Ok(Guarded {
            total: prefix.len() as u64,
            prefix,
            pos: 0,
            source,
            decision,
        })
    }
}

/// The validated MIME type: the detected one when the content is recognised (and is what was
/// claimed, if anything was), else the extension's guess, else the declared type, else what
/// was detected, else `application/octet-stream`.
fn validated_mime(
    content: &Sniffed,
    ext_claim: Option<&Claim>,
    declared_claim: Option<&Claim>,
) -> String {
    if let Some(fmt) = content.format
        && !FAMILIES.iter().any(|f| f.generic.contains(&fmt))
    {
        // The detected type when it is the very thing claimed (or nothing was claimed). A
        // bare container is not specific: the member its name claims is more precise.
        let exact = match (ext_claim, declared_claim) {
            (Some(c), _) => c.agrees_exactly(fmt),
            (None, Some(c)) => c.agrees_exactly(fmt),
            (None, None) => true,
        };
        if exact {
            return canonical_mime(fmt.media_type()).to_string();
        }
    }
    ext_claim
        .and_then(|c| c.mimes.first())
        .or(declared_claim.and_then(|c| c.mimes.first()))
        .map(|m| m.to_string())
        .or_else(|| {
            content
                .format
                .map(|f| canonical_mime(f.media_type()).to_string())
        })
        .unwrap_or_else(|| OCTET_STREAM.to_string())
}

/// What [`Admission::inspect`] decided about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    category: String,
    mime: String,
    max_size: Option<u64>,
    content_category: Option<String>,
}

impl Decision {
    /// The category the file is stored in.
    pub fn category(&self) -> &str {
        &self.category
    }

    /// The validated MIME type (what the version records).
    pub fn mime(&self) -> &str {
        &self.mime
    }

    /// The size limit that applies; `None` for a put not bound by the category limits.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// The categories whose scan setting applies: the file's, and the one its content alone
    /// belongs to (when different). A put is scanned when `scan.categories` covers any.
    pub fn scan_categories(&self) -> Vec<&str> {
        let mut out = vec![self.category.as_str()];
        if let Some(c) = self.content_category.as_deref()
            && c != self.category
        {
            out.push(c);
        }
        out
    }

    fn too_large(&self) -> Error {
        Error::TooLarge {
            limit: self.max_size.unwrap_or(u64::MAX),
            what: format!(
                "the input is larger than category {:?} allows",
                self.category
            ),
        }
    }
}

/// The content of a put, checked: replays the prefix [`Admission::guard`] read, then streams
/// the rest of the source, counting. A read that takes the input past the category's limit
/// fails with an `io::Error` whose inner error is [`Error::TooLarge`] (the put path unwraps it,
/// so the put fails with `TooLarge`, not `Io`).
pub struct Guarded<R> {
    prefix: Vec<u8>,
    pos: usize,
    source: R,
    /// Bytes taken from `source` so far (the prefix included).
    total: u64,
    decision: Decision,
}

impl<R> Guarded<R> {
    /// What the content was decided to be.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The validated MIME type.
    pub fn mime(&self) -> &str {
        self.decision.mime()
    }

    /// The category the file goes to.
    pub fn category(&self) -> &str {
        self.decision.category()
    }
}

impl<R> std::fmt::Debug for Guarded<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("decision", &self.decision)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.pos);
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        let n = self.source.read(buf)?;
        self.total += n as u64;
        if let Some(max) = self.decision.max_size
            && self.total > max
        {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                self.decision.too_large(),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::CategoryRule;
    use crate::validate::policy::tests::{admit, jpeg, pdf, png, text, zip};
    use crate::validate::policy::{TYPE_MISMATCH, TYPE_NOT_ALLOWED};

    const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn rule(exts: &[&str], mimes: &[&str], max_size: u64) -> CategoryRule {
        CategoryRule {
            extensions: exts.iter().map(|s| s.to_string()).collect(),
            mime_types: mimes.iter().map(|s| s.to_string()).collect(),
            max_size,
        }
    }

    fn local<'p>(
        p: &'p Policy,
        name: &str,
        category: Option<&str>,
        size: Option<u64>,
        local_limits: bool,
    ) -> Result<Admission<'p>> {
        p.admit(&Claims {
            name: Some(name),
            category,
            size,
            origin: Origin::Local,
            local_limits,
            ..Default::default()
        })
    }

    /// The category a client's put of `data` named `name` (asking for `category`) ends in.
    fn decided(p: &Policy, name: &str, category: Option<&str>, data: &[u8]) -> Result<Decision> {
        admit(p, Some(name), None, category, None)?.inspect(data)
    }

    fn code(r: Result<impl std::fmt::Debug>) -> &'static str {
        match r {
            Err(Error::Rejected { code, .. }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_listed_extension_decides_the_category_before_reading() {
        let p = Policy::default();
        let a = admit(&p, Some("x.JPG"), None, None, Some(5)).unwrap();
        assert_eq!(
            (a.known_category(), a.extension(), a.size_bound()),
            (
                Some("images"),
                Some("jpg"),
                Some((10_000_000, Some("images")))
            )
        );
        for (name, cat) in [
            ("a.mov", "videos"),
            ("a.gz", "archives"),
            ("a.txt", "documents"),
        ] {
            let a = admit(&p, Some(name), None, None, None).unwrap();
            assert_eq!(a.known_category(), Some(cat), "{name}");
        }
        // Names no category lists leave it to the content; the bound is the largest limit
        // such a file could get.
        for name in ["lib.rs", "x.bin", "README"] {
            let a = admit(&p, Some(name), None, None, None).unwrap();
            assert_eq!(a.known_category(), None, "{name}");
        }
        assert_eq!(
            admit(&p, Some("x.bin"), None, None, None)
                .unwrap()
                .size_bound(),
            Some((500_000_000, None)),
            "x.bin could be a video"
        );
        assert_eq!(
            admit(&p, Some("lib.rs"), None, None, None)
                .unwrap()
                .size_bound(),
            Some((100_000_000, None)),
            "a .rs file can only be in other"
        );
        // Sizes: the limit itself passes, one byte more does not, before a byte is read.
        assert!(admit(&p, Some("a.png"), None, None, Some(10_000_000)).is_ok());
        match admit(&p, Some("a.png"), None, None, Some(10_000_001)) {
            Err(Error::TooLarge { limit, what }) => {
                assert_eq!(limit, 10_000_000);
                assert!(what.contains("images"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        // A declared type the category does not take.
        assert_eq!(
            code(admit(&p, Some("a.jpg"), Some("text/html"), None, None)),
            TYPE_NOT_ALLOWED
        );
        // An unknown category is bad input.
        assert!(matches!(
            admit(&p, Some("a.jpg"), None, Some("photos"), None),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn a_client_category_is_checked_never_obeyed() {
        let p = Policy::default();
        // `other` takes anything, but a file a category lists is that category.
        let d = decided(&p, "a.zip", Some("other"), &zip(&[("a", b"a")])).unwrap();
        assert_eq!((d.category(), d.mime()), ("archives", "application/zip"));
        let d = decided(&p, "report.pdf", Some("other"), &pdf()).unwrap();
        assert_eq!(d.category(), "documents");
        // ...and its limit binds, declared before reading or not.
        match admit(&p, Some("big.zip"), None, Some("other"), Some(100_000_001)) {
            Err(Error::TooLarge { limit, what }) => {
                assert_eq!(limit, 100_000_000);
                assert!(what.contains("archives"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        // A category that does not take the file: refused, before reading when the name says.
        let e = admit(&p, Some("notes.txt"), None, Some("images"), None).unwrap_err();
        let msg = e.to_string();
        assert_eq!(code(Err::<(), _>(e)), CATEGORY_MISMATCH);
        assert!(msg.contains("images") && msg.contains("documents"), "{msg}");
        assert_eq!(
            code(decided(&p, "scan.bin", Some("images"), &pdf())),
            CATEGORY_MISMATCH,
            "the content is a PDF, which images do not take"
        );
        assert_eq!(
            code(decided(&p, "blob", Some("documents"), &[0x13; 300])),
            CATEGORY_MISMATCH
        );
        // The category it is in may be named, however it was decided.
        assert_eq!(
            decided(&p, "scan.bin", Some("documents"), &pdf())
                .unwrap()
                .category(),
            "documents"
        );
    }

    #[test]
    fn names_that_claim_nothing_are_classified_by_their_content() {
        let p = Policy::default();
        let cat = |name: &str, data: &[u8]| decided(&p, name, None, data).unwrap();
        assert_eq!(cat("x.bin", &pdf()).category(), "documents");
        assert_eq!(cat("upload", &png()).category(), "images");
        let z = cat("data", &zip(&[("a.txt", b"hi")]));
        assert_eq!((z.category(), z.mime()), ("archives", "application/zip"));
        assert_eq!(cat("README", &text()).category(), "other");
        assert_eq!(cat("blob.bin", &[0x13; 300]).category(), "other");
        // The content category's limit applies: a 60 MB PDF named x.bin is a document.
        let a = admit(&p, Some("x.bin"), None, None, Some(60_000_000)).unwrap();
        match a.inspect(&pdf()) {
            Err(Error::TooLarge { limit, what }) => {
                assert_eq!(limit, 50_000_000);
                assert!(what.contains("documents"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_owner_may_choose_any_category_that_takes_the_file() {
        let mut p = Policy::default();
        p.categories.insert("backups".into(), rule(&[], &[], 1000));
        let d = local(&p, "e.png", Some("other"), None, false)
            .unwrap()
            .inspect(&png())
            .unwrap();
        assert_eq!(d.category(), "other");
        let a = local(&p, "db.txt", Some("backups"), Some(5000), false).unwrap();
        assert_eq!(a.known_category(), Some("backups"));
        // The owner is not bound by the category limits unless asked to be.
        assert_eq!(a.size_bound(), None);
        assert_eq!(a.inspect(&text()).unwrap().max_size(), None);
        assert!(matches!(
            local(&p, "db.txt", Some("backups"), Some(5000), true),
            Err(Error::TooLarge { limit: 1000, .. })
        ));
        // Not even the owner puts a file where its rules do not take it.
        assert_eq!(
            code(local(&p, "notes.txt", Some("images"), None, false)),
            CATEGORY_MISMATCH
        );
        // A client naming the catch-all `backups` for a file no category lists gets it.
        let d = decided(&p, "dump.bin", Some("backups"), &[0x13; 300]).unwrap();
        assert_eq!(d.category(), "backups");
        // ...but not for a file a category lists.
        let d = decided(&p, "a.png", Some("backups"), &png()).unwrap();
        assert_eq!(d.category(), "images");
    }

    #[test]
    fn the_contents_category_joins_the_scan_decision() {
        let p = Policy::default();
        // EICAR is text: named .rs it is in `other`, but its content is a document's.
        let d = decided(&p, "eicar.rs", None, EICAR).unwrap();
        assert_eq!(d.category(), "other");
        assert_eq!(d.scan_categories(), ["other", "documents"]);
        assert_eq!(p.content_category(EICAR), Some("documents"));
        let d = decided(&p, "a.png", None, &png()).unwrap();
        assert_eq!(d.scan_categories(), ["images"]);
        // A ZIP under a member's name it no category lists (.jar) is in `other`, and its
        // content is an archive.
        let mut jar = b"PK\x03\x04".to_vec();
        jar.extend(std::iter::repeat_n(0x5a, PREFIX_LEN * 2));
        let d = decided(&p, "app.jar", None, &jar).unwrap();
        assert_eq!(d.scan_categories(), ["other", "archives"]);
        assert_eq!(p.content_category(&jpeg()), Some("images"));
        assert_eq!(
            p.content_category(&[0x00, 0xfe, 0x13].repeat(100)),
            Some("other")
        );
    }

    #[test]
    fn the_validated_type_must_be_one_the_category_allows() {
        let mut p = Policy::default();
        p.categories.insert(
            "pictures".into(),
            rule(&["jpg", "png"], &["image/png"], 1000),
        );
        p.categories.remove("images");
        assert_eq!(
            code(decided(&p, "a.jpg", None, &jpeg())),
            TYPE_NOT_ALLOWED,
            "pictures lists .jpg but takes only PNG"
        );
        assert_eq!(
            decided(&p, "a.png", None, &png()).unwrap().category(),
            "pictures"
        );
        // A content mismatch is still a mismatch.
        assert_eq!(code(decided(&p, "a.png", None, &jpeg())), TYPE_MISMATCH);
    }

    #[test]
    fn a_type_listed_category_takes_a_name_only_when_it_claims_nothing() {
        let mut p = Policy::default();
        // Images take WebP content, but not under the name .webp.
        p.categories.get_mut("images").unwrap().extensions = vec!["png".into()];
        let mut webp = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00".to_vec();
        webp.extend_from_slice(&[0x10, 0x07, 0x10, 0x11, 0x11, 0x88, 0x88, 0xfe, 0x07, 0x00]);
        assert_eq!(
            decided(&p, "a.webp", None, &webp).unwrap().category(),
            "other"
        );
        assert_eq!(
            code(decided(&p, "a.webp", Some("images"), &webp)),
            CATEGORY_MISMATCH
        );
        // A name that claims nothing leaves it to the content.
        assert_eq!(
            decided(&p, "upload", None, &webp).unwrap().category(),
            "images"
        );
    }

    #[test]
    fn without_a_catch_all_unlisted_files_are_refused() {
        let mut p = Policy::default();
        p.categories.remove(crate::store::DEFAULT_CATEGORY);
        // Decided by the name, before reading.
        assert_eq!(
            code(admit(&p, Some("lib.rs"), None, None, None)),
            TYPE_NOT_ALLOWED
        );
        // Decided by the content.
        assert_eq!(code(decided(&p, "README", None, &text())), TYPE_NOT_ALLOWED);
        assert_eq!(
            decided(&p, "README", None, &pdf()).unwrap().category(),
            "documents"
        );
    }

    /// Reads in small, odd pieces.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(977);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn guarded_replays_the_exact_bytes_at_every_size() {
        let p = Policy::default();
        let mut data = png();
        data.extend((0..PREFIX_LEN * 3).map(|i| (i * 7 % 251) as u8));
        for len in [
            8,
            png().len(),
            PREFIX_LEN - 1,
            PREFIX_LEN,
            PREFIX_LEN + 1,
            data.len(),
        ] {
            let a = admit(&p, Some("a.png"), None, None, None).unwrap();
            let mut g = a.guard(Dribble(&data[..len])).unwrap();
            let mut back = Vec::new();
            let mut buf = [0u8; 3001];
            loop {
                match g.read(&mut buf).unwrap() {
                    0 => break,
                    n => back.extend_from_slice(&buf[..n]),
                }
            }
            assert_eq!(back.len(), len);
            assert!(back == data[..len], "bytes differ at length {len}");
        }
    }

    #[test]
    fn the_limit_holds_while_streaming() {
        let mut p = Policy::default();
        p.categories.insert("tiny".into(), rule(&[], &[], 100_000));
        let data = vec![b'x'; 100_001];
        // A file no category lists, in the catch-all the client named: exactly the limit
        // passes.
        let a = admit(&p, Some("a.dat"), None, Some("tiny"), None).unwrap();
        let mut g = a.guard(&data[..100_000]).unwrap();
        assert_eq!(g.category(), "tiny");
        assert_eq!(io::copy(&mut g, &mut io::sink()).unwrap(), 100_000);
        // One byte more fails, with the engine's error inside the io::Error.
        let a = admit(&p, Some("a.dat"), None, Some("tiny"), None).unwrap();
        let mut g = a.guard(&data[..]).unwrap();
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        match crate::error::input_error(e) {
            Error::TooLarge { limit, what } => {
                assert_eq!(limit, 100_000);
                assert!(what.contains("tiny"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        // The owner streams past it.
        let a = local(&p, "a.dat", Some("tiny"), None, false).unwrap();
        let mut g = a.guard(&data[..]).unwrap();
        assert_eq!(io::copy(&mut g, &mut io::sink()).unwrap(), 100_001);
        // A limit smaller than the prefix is caught by the guard itself.
        p.categories.insert("wee".into(), rule(&[], &[], 10));
        let a = admit(&p, Some("a.dat"), None, Some("wee"), None).unwrap();
        assert!(matches!(
            a.guard(&data[..11]),
            Err(Error::TooLarge { limit: 10, .. })
        ));
        let a = admit(&p, Some("a.dat"), None, Some("wee"), None).unwrap();
        assert!(a.guard(&data[..10]).is_ok());
    }
}
