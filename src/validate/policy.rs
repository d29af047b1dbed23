//! Content validation: what each category accepts, and which category a file is.
//!
//! This file holds the rules ([`Policy`], [`CategoryRule`]) and how content is compared with
//! what its name and declared type claim; `admission.rs` holds the decision a put goes
//! through ([`Policy::admit`], [`Admission::guard`]) and the category rules that come with it.
//!
//! How content and claims are compared — the extension and the declared type are claims, the
//! magic bytes are evidence:
//! - A claim agrees with a detected format when they name the same type (MIME types compared
//!   after folding common aliases, or the format's usual extension is the claimed one).
//! - Containers are families: a ZIP that `file-format` cannot look inside (its central
//!   directory is at the end, past the prefix) agrees with `.docx`, `.xlsx`, `.jar`, ...; an
//!   OLE compound file with `.doc`/`.xls`/`.msi`; ISO media brands (mp4/mov/m4a/3gp), ASF
//!   (wmv/wma), Matroska (mkv/webm), Ogg and HEIF members agree with each other. When the
//!   format is known exactly (the whole file fit in the prefix) an OOXML spreadsheet named
//!   `.docx` is still a mismatch.
//! - Text is text: content that looks like text (UTF-8, no NUL) is accepted under any textual
//!   name (`.txt`, `.rs`, `.svg`, `.json`, ...) even when `file-format` recognises a text format
//!   in it (HTML, a shell script, a PEM key).
//! - A name whose format always starts with magic bytes (`.jpg`, `.pdf`, `.zip`, ... — see
//!   `NEEDS_MAGIC`) requires them: plain text or unknown bytes named `.jpg` are refused.
//!   Content nothing recognises is fine under names without magic (`.txt`, `.csv`, none).
//! - `application/octet-stream` claims nothing, as a declared type or as an extension's guess.
//!
//! Rejections are [`Error::Rejected`] with code [`TYPE_NOT_ALLOWED`] (no category takes this
//! extension or type), [`TYPE_MISMATCH`] (the content is not what it claims to be, naming both
//! types) or [`CATEGORY_MISMATCH`] (the category the caller named does not take this file);
//! sizes over the limit are [`Error::TooLarge`].

use std::collections::BTreeMap;

use bytesize::ByteSize;
use file_format::FileFormat;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::store::DEFAULT_CATEGORY;

/// Bytes of content read before the format is decided: enough for every signature
/// `file-format` knows (the deepest sits at 32 KiB) and for the headers its readers parse.
pub const PREFIX_LEN: usize = 64 * 1024;

/// [`Error::Rejected`] code: the category does not accept this extension or MIME type, or no
/// category accepts the file.
pub const TYPE_NOT_ALLOWED: &str = "type_not_allowed";
/// [`Error::Rejected`] code: the content's magic bytes disagree with the extension or the
/// declared MIME type.
pub const TYPE_MISMATCH: &str = "type_mismatch";
/// [`Error::Rejected`] code: the caller named a category whose rules the file does not satisfy
/// (its extension or its validated type is not one the category takes).
pub const CATEGORY_MISMATCH: &str = "category_mismatch";

pub(super) const OCTET_STREAM: &str = "application/octet-stream";

/// Which files each category accepts. Serialises as TOML tables, e.g.
///
/// ```toml
/// [categories.images]
/// extensions = ["jpg", "jpeg", "png"]
/// mime_types = ["image/jpeg", "image/png"]
/// max_size = "10MB"          # or a number of bytes
/// ```
///
/// A policy read from a file is exactly what the file says (missing `categories` means the
/// defaults); drop `other` to refuse files no category lists.
///
/// Three kinds of category, by what their rule lists: a category *lists an extension* when its
/// `extensions` name it, *lists a type* when its `mime_types` name it, and is a *catch-all*
/// when it lists neither (`other`). Which one a file is decided by is in `admission.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Category name → rule. Inference walks them in name order.
    pub categories: BTreeMap<String, CategoryRule>,
}

/// What one category accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    /// Allowed extensions, without the dot, compared case-insensitively (a leading dot is
    /// ignored). Empty: any extension, or none.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Allowed MIME types of the declared and of the validated type (aliases such as
    /// `video/avi`/`video/x-msvideo` are folded). Empty: any.
    #[serde(default)]
    pub mime_types: Vec<String>,
    /// Largest file in bytes. In TOML a number of bytes or a size such as `"10MB"` (10^6
    /// bytes per MB) or `"5GiB"` (2^30 per GiB); written back as a number.
    #[serde(deserialize_with = "deserialize_size")]
    pub max_size: u64,
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ByteSize::deserialize(d).map(|s| s.as_u64())
}

impl CategoryRule {
    fn new(extensions: &[&str], mime_types: &[&str], max_size: u64) -> Self {
        CategoryRule {
            extensions: extensions.iter().map(|s| s.to_string()).collect(),
            mime_types: mime_types.iter().map(|s| s.to_string()).collect(),
            max_size,
        }
    }

    pub(super) fn allows_extension(&self, ext: Option<&str>) -> bool {
        self.extensions.is_empty()
            || ext.is_some_and(|e| {
                self.extensions
                    .iter()
                    .any(|a| a.trim_start_matches('.').eq_ignore_ascii_case(e))
            })
    }

    pub(super) fn lists_extension(&self, ext: &str) -> bool {
        !self.extensions.is_empty() && self.allows_extension(Some(ext))
    }

    pub(super) fn lists_type(&self, mime: &str) -> bool {
        !self.mime_types.is_empty() && allows_mime(&self.mime_types, mime)
    }

    /// Takes any extension and any type: the category of files no other category lists.
    pub fn is_catch_all(&self) -> bool {
        self.extensions.is_empty() && self.mime_types.is_empty()
    }
}

pub(super) fn allows_mime(allowed: &[String], mime: &str) -> bool {
    let mime = canonical_mime(mime);
    allowed.is_empty() || allowed.iter().any(|a| canonical_mime(a) == mime)
}

impl Default for Policy {
    /// SPEC §2's categories, plus `other` for everything else. Sizes in MB are decimal
    /// (10 MB = 10,000,000 bytes), as `"10MB"` reads in a configuration file.
    ///
    /// - `images`: `.jpg .jpeg .png .gif .webp`; JPEG, PNG, GIF, WebP; 10 MB.
    /// - `documents`: `.pdf .doc .docx .xls .xlsx .txt`; PDF, Word, Excel (OLE and OOXML),
    ///   plain text; 50 MB.
    /// - `videos`: `.mp4 .avi .mov .wmv .flv`; MP4, AVI, QuickTime, WMV, FLV; 500 MB.
    /// - `archives`: `.zip .tar .gz .rar`; ZIP, tar, gzip, RAR; 100 MB.
    /// - `other` ([`DEFAULT_CATEGORY`]): any extension and type no other category lists;
    ///   100 MB. Magic bytes must still agree with the name.
    fn default() -> Self {
        const MB: u64 = bytesize::MB;
        let mut categories = BTreeMap::new();
        categories.insert(
            "images".to_string(),
            CategoryRule::new(
                &["jpg", "jpeg", "png", "gif", "webp"],
                &["image/jpeg", "image/png", "image/gif", "image/webp"],
                10 * MB,
            ),
        );
        categories.insert(
            "documents".to_string(),
            CategoryRule::new(
                &["pdf", "doc", "docx", "xls", "xlsx", "txt"],
                &[
                    "application/pdf",
                    "application/msword",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    "application/vnd.ms-excel",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    "text/plain",
                ],
                50 * MB,
            ),
        );
        categories.insert(
            "videos".to_string(),
            CategoryRule::new(
                &["mp4", "avi", "mov", "wmv", "flv"],
                &[
                    "video/mp4",
                    "video/x-msvideo",
                    "video/quicktime",
                    "video/x-ms-wmv",
                    "video/x-flv",
                ],
                500 * MB,
            ),
        );
        categories.insert(
            "archives".to_string(),
            CategoryRule::new(
                &["zip", "tar", "gz", "rar"],
                &[
                    "application/zip",
                    "application/x-tar",
                    "application/gzip",
                    "application/vnd.rar",
                ],
                100 * MB,
            ),
        );
        categories.insert(
            DEFAULT_CATEGORY.to_string(),
            CategoryRule::new(&[], &[], 100 * MB),
        );
        Policy { categories }
    }
}

impl Policy {
    /// The first category (by name) that lists the extension `ext`.
    pub(super) fn listing_extension(&self, ext: &str) -> Option<&str> {
        self.categories
            .iter()
            .find(|(_, r)| r.lists_extension(ext))
            .map(|(k, _)| k.as_str())
    }

    /// The first category (by name) that lists the MIME type `mime`.
    pub(super) fn listing_type(&self, mime: &str) -> Option<&str> {
        self.categories
            .iter()
            .find(|(_, r)| r.lists_type(mime))
            .map(|(k, _)| k.as_str())
    }

    /// Where files no category lists go: [`DEFAULT_CATEGORY`] when it is a catch-all, else
    /// the first catch-all by name; `None` when the policy has none (such files are refused).
    pub(super) fn catch_all(&self) -> Option<&str> {
        match self.categories.get_key_value(DEFAULT_CATEGORY) {
            Some((k, r)) if r.is_catch_all() => Some(k.as_str()),
            _ => self
                .categories
                .iter()
                .find(|(_, r)| r.is_catch_all())
                .map(|(k, _)| k.as_str()),
        }
    }

    /// The category the content alone says a file is, whatever it is named: the category
    /// that lists the type its magic bytes show (text counts as `text/plain`), else the one
    /// that lists that format's usual extension, else the catch-all. `prefix` is the whole
    /// content or at least its first [`PREFIX_LEN`] bytes. This is what decides whether a file
    /// is virus-scanned when `scan.categories` is narrowed (with the final category), so a
    /// name cannot take content out of a scanned category.
    pub fn content_category(&self, prefix: &[u8]) -> Option<&str> {
        self.content_category_of(&Sniffed::new(prefix))
    }

    pub(super) fn content_category_of(&self, content: &Sniffed) -> Option<&str> {
        let by_format = content.format.and_then(|f| {
            self.listing_type(canonical_mime(f.media_type()))
                .or_else(|| self.listing_extension(ext_synonym(f.extension())))
        });
        let by_text = || {
            (content.format.is_none() && content.text)
                .then(|| self.listing_type("text/plain"))
                .flatten()
        };
        by_format.or_else(by_text).or_else(|| self.catch_all())
    }
}

// ------------------------------------------------------------------------------ content

/// What the first bytes of a file are.
pub(super) struct Sniffed {
    /// The recognised format; `None` for empty content and for content `file-format` does
    /// not recognise.
    pub(super) format: Option<FileFormat>,
    empty: bool,
    /// UTF-8 without NULs (a character cut by the end of the prefix is fine).
    pub(super) text: bool,
}

impl Sniffed {
    pub(super) fn new(prefix: &[u8]) -> Self {
        let format = match FileFormat::from_bytes(prefix) {
            FileFormat::Empty => None,
            // A reader that needs more than the prefix (a ZIP's central directory at the end,
            // an OLE directory further in) fails, and `file-format` then reports arbitrary
            // binary: fall back to the container's own signature.
            FileFormat::ArbitraryBinaryData => container_signature(prefix),
            f => Some(f),
        };
        Sniffed {
            format,
            empty: prefix.is_empty(),
            text: looks_like_text(prefix),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self.format {
            Some(f) => format!("{} ({})", f.name(), canonical_mime(f.media_type())),
            None if self.text => "text".to_string(),
            None => "data of no known format".to_string(),
        }
    }

    /// Checks one claim (the extension's, or the declared type's) against the content.
    pub(super) fn check(&self, claim: &Claim) -> Result<()> {
        if self.empty {
            return Ok(());
        }
        if let Some(fmt) = self.format
            && claim.agrees(fmt)
        {
            return Ok(());
        }
        // Text under a textual name, whatever text format `file-format` saw in it.
        if self.text && !claim.needs_magic() && (claim.mimes.is_empty() || claim.is_textual()) {
            return Ok(());
        }
        if self.format.is_none() && !claim.needs_magic() {
            return Ok(());
        }
        Err(Error::Rejected {
            code: TYPE_MISMATCH,
            detail: format!(
                "the content is {}, but {} says {}",
                self.describe(),
                claim.source,
                claim.says
            ),
        })
    }
}

/// Signatures of containers whose `file-format` readers need more than a prefix.
fn container_signature(prefix: &[u8]) -> Option<FileFormat> {
    const CFB: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";
    const ASF: &[u8] = b"\x30\x26\xB2\x75\x8E\x66\xCF\x11\xA6\xD9\x00\xAA\x00\x62\xCE\x6C";
    if prefix.starts_with(b"PK\x03\x04")
        || prefix.starts_with(b"PK\x05\x06")
        || prefix.starts_with(b"PK\x07\x08")
    {
        Some(FileFormat::Zip)
    } else if prefix.starts_with(CFB) {
        Some(FileFormat::CompoundFileBinary)
    } else if prefix.starts_with(ASF) {
        Some(FileFormat::AdvancedSystemsFormat)
    } else if prefix.starts_with(b"\x1A\x45\xDF\xA3") {
        Some(FileFormat::ExtensibleBinaryMetaLanguage)
    } else if prefix.starts_with(b"ID3") {
        Some(FileFormat::Id3v2)
    } else if prefix.get(4..8) == Some(b"ftyp") {
        // An ISO media brand `file-format` does not list.
        Some(FileFormat::Mpeg4Part14)
    } else if is_old_tar_header(prefix) {
        Some(FileFormat::TapeArchive)
    } else {
        None
    }
}

/// A tar header without the POSIX `ustar` magic (pre-POSIX tar, some pax test files): its
/// header checksum gives it away.
fn is_old_tar_header(prefix: &[u8]) -> bool {
    let Some(h) = prefix.get(..512) else {
        return false;
    };
    if h[0] == 0 {
        return false;
    }
    let field = &h[148..156];
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| (b'0'..=b'7').contains(&b));
    let mut stored = 0u32;
    let mut any = false;
    for &d in digits {
        stored = stored * 8 + u32::from(d - b'0');
        any = true;
    }
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                0x20
            } else {
                u32::from(b)
            }
        })
        .sum();
    any && stored == sum
}

fn looks_like_text(prefix: &[u8]) -> bool {
    if prefix.is_empty() || prefix.contains(&0) {
        return false;
    }
    match std::str::from_utf8(prefix) {
        Ok(_) => true,
        // The prefix may end inside a character.
        Err(e) => e.error_len().is_none() && prefix.len() - e.valid_up_to() < 4,
    }
}

// ------------------------------------------------------------------------------ claims

/// What a name or a declared type says the content is.
pub(super) struct Claim {
    /// "the extension .jpg", "the declared type" — for messages.
    source: String,
    /// The type the claim names — for messages.
    says: String,
    /// Extensions the claim stands for.
    exts: Vec<String>,
    /// Canonical MIME types the claim stands for (never `application/octet-stream`).
    pub(super) mimes: Vec<String>,
}

impl Claim {
    /// The claim of an extension; `None` when it claims nothing (unknown to `mime_guess` and
    /// without magic bytes, or guessed as `application/octet-stream`).
    pub(super) fn extension(ext: &str) -> Option<Claim> {
        let mimes = guess_mimes(ext);
        if mimes.is_empty() && !NEEDS_MAGIC.contains(&ext) {
            return None;
        }
        Some(Claim {
            source: format!("the extension .{ext}"),
            says: mimes.first().cloned().unwrap_or_else(|| format!(".{ext}")),
            exts: vec![ext.to_string()],
            mimes,
        })
    }

    pub(super) fn declared(mime: &str) -> Claim {
        Claim {
            source: "the declared type".to_string(),
            says: mime.to_string(),
            exts: mime_guess::get_mime_extensions_str(mime)
                .unwrap_or_default()
                .iter()
                .map(|e| e.to_string())
                .collect(),
            mimes: vec![canonical_mime(mime).to_string()],
        }
    }

    /// The detected format is the claimed type itself.
    pub(super) fn agrees_exactly(&self, fmt: FileFormat) -> bool {
        let media = canonical_mime(fmt.media_type());
        let fext = fmt.extension();
        self.mimes.iter().any(|m| m == media)
            || self.exts.iter().any(|e| ext_synonym(e) == fext)
            || guess_mimes(fext)
                .iter()
                .any(|g| g != "text/plain" && self.mimes.contains(g))
    }

    /// The detected format is the claimed type, or the claim names a member of the detected
    /// container family (or the detected format is a member of the claimed container).
    fn agrees(&self, fmt: FileFormat) -> bool {
        self.agrees_exactly(fmt)
            || self
                .exts
                .iter()
                .any(|e| FAMILIES.iter().any(|f| f.admits(fmt, ext_synonym(e))))
    }

    fn needs_magic(&self) -> bool {
        self.exts.iter().any(|e| NEEDS_MAGIC.contains(&e.as_str()))
    }

    fn is_textual(&self) -> bool {
        self.mimes.iter().any(|m| is_textual_mime(m))
    }
}

/// Formats built on one container.
pub(super) struct Family {
    /// What `file-format` reports when it sees the container but not what is inside.
    pub(super) generic: &'static [FileFormat],
    /// Extensions that name the container itself, so agree with any member.
    generic_exts: &'static [&'static str],
    /// Extensions of the members.
    members: &'static [&'static str],
    /// Members are interchangeable (ISO brands, an audio-only WMV): any member agrees with any
    /// member name. Otherwise only the bare container does (an OOXML spreadsheet is not a
    /// document).
    loose: bool,
}

impl Family {
    fn admits(&self, fmt: FileFormat, ext: &str) -> bool {
        let generic = self.generic.contains(&fmt);
        let fmt_in = generic || self.members.contains(&fmt.extension());
        let ext_generic = self.generic_exts.contains(&ext);
        let ext_in = ext_generic || self.members.contains(&ext);
        fmt_in && ext_in && (self.loose || generic || ext_generic)
    }
}

pub(super) const FAMILIES: &[Family] = &[
    Family {
        generic: &[FileFormat::Zip],
        generic_exts: &["zip"],
        members: &[
            "docx", "docm", "dotx", "dotm", "xlsx", "xlsm", "xltx", "xltm", "xlsb", "pptx", "pptm",
            "potx", "ppsx", "ppsm", "vsdx", "odt", "ott", "ods", "ots", "odp", "otp", "odg", "otg",
            "odf", "odb", "epub", "jar", "war", "ear", "apk", "aab", "xpi", "ipa", "kmz", "xps",
            "oxps", "3mf", "cbz", "whl", "nupkg", "appx", "msix", "usdz", "idml",
        ],
        loose: false,
    },
    Family {
        generic: &[FileFormat::CompoundFileBinary],
        generic_exts: &[],
        members: &[
            "doc", "dot", "xls", "xlt", "xlw", "ppt", "pot", "pps", "msi", "msp", "msg", "pub",
            "vsd", "vss", "mpp", "wps",
        ],
        loose: false,
    },
    Family {
        generic: &[FileFormat::Mpeg4Part14, FileFormat::AppleQuicktime],
        generic_exts: &[],
        members: &[
            "mp4", "m4v", "m4a", "m4b", "m4p", "m4r", "mov", "qt", "3gp", "3g2", "f4v", "f4a",
        ],
        loose: true,
    },
    Family {
        generic: &[],
        generic_exts: &[],
        members: &["heic", "heics", "heif", "heifs", "hif", "avif", "avifs"],
        loose: true,
    },
    Family {
        generic: &[FileFormat::AdvancedSystemsFormat],
        generic_exts: &["asf"],
        members: &["wmv", "wma"],
        loose: true,
    },
    Family {
        generic: &[FileFormat::ExtensibleBinaryMetaLanguage],
        generic_exts: &[],
        members: &["mkv", "mka", "mks", "mk3d", "webm"],
        loose: true,
    },
    Family {
        generic: &[FileFormat::OggMultiplexedMedia],
        generic_exts: &["ogx"],
        members: &["ogg", "oga", "ogv", "ogm", "opus", "spx"],
        loose: true,
    },
    Family {
        // An ID3v2 tag in front of MPEG audio (or FLAC) too long for the prefix.
        generic: &[FileFormat::Id3v2],
        generic_exts: &[],
        members: &["mp3", "mp2", "mpga", "aac", "flac"],
        loose: true,
    },
];

/// Extensions whose formats always start with magic bytes `file-format` knows: content
/// without them is not what the name says.
const NEEDS_MAGIC: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "webp", "bmp", "tif", "tiff", "pdf", "doc",
    "xls", "ppt", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "mp4", "m4v", "m4a", "mov",
    "avi", "wmv", "wma", "asf", "flv", "mkv", "webm", "wav", "flac", "ogg", "oga", "ogv", "opus",
    "zip", "jar", "apk", "tar", "gz", "tgz", "bz2", "xz", "7z", "rar", "zst",
];

/// Extensions that name the same format as another one `file-format` reports.
fn ext_synonym(ext: &str) -> &str {
    match ext {
        "jpeg" | "jpe" | "jfif" => "jpg",
        "apng" => "png",
        "tif" => "tiff",
        "tgz" => "gz",
        "qt" => "mov",
        "htm" => "html",
        other => other,
    }
}

/// `mime_guess`'s types for an extension, canonical, without `application/octet-stream`.
fn guess_mimes(ext: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in mime_guess::from_ext(ext).iter_raw() {
        let m = canonical_mime(m);
        if m != OCTET_STREAM && !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    out
}

/// One name for types known by several.
pub(super) fn canonical_mime(mime: &str) -> &str {
    match mime {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "video/avi" | "video/msvideo" | "video/vnd.avi" => "video/x-msvideo",
        "application/x-rar-compressed" | "application/x-rar" => "application/vnd.rar",
        "application/x-gzip" | "application/x-compressed" => "application/gzip",
        "application/x-zip-compressed" | "application/x-zip" => "application/zip",
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav",
        "audio/mp3" | "audio/x-mp3" | "audio/x-mpeg" => "audio/mpeg",
        "application/x-pdf" => "application/pdf",
        "application/xml" => "text/xml",
        "application/x-tar-gz" => "application/gzip",
        "audio/x-flac" => "audio/flac",
        "image/x-ms-bmp" => "image/bmp",
        other => other,
    }
}

fn is_textual_mime(m: &str) -> bool {
    m.starts_with("text/")
        || m.ends_with("+xml")
        || m.ends_with("/xml")
        || m.ends_with("+json")
        || m.ends_with("/json")
        || matches!(
            m,
            "application/javascript"
                | "application/ecmascript"
                | "application/x-javascript"
                | "application/x-sh"
                | "application/x-csh"
                | "application/x-shellscript"
                | "application/toml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/sql"
                | "application/x-tex"
                | "application/x-latex"
                | "application/rtf"
                | "application/postscript"
                | "application/x-httpd-php"
                | "application/x-perl"
                | "application/x-python"
                | "application/x-ruby"
                | "application/x-ndjson"
                | "application/pgp-signature"
                | "application/pgp-keys"
                | "application/x-pem-file"
                | "application/x-subrip"
        )
}

/// The lower-case extension of a name's last component; none for `.bashrc` or `name.`.
pub(super) fn extension_of(name: &str) -> Option<String> {
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let (stem, ext) = file.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() {
        return None;
    }
    Some(ext.to_lowercase())
}

/// A declared type, lower case, without parameters; `None` when it says nothing.
pub(super) fn normalize_mime(mime: &str) -> Option<String> {
    let m = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if m.is_empty() || m == OCTET_STREAM || m == "binary/octet-stream" {
        None
    } else {
        Some(m)
    }
}

pub(super) fn describe_ext(ext: Option<&str>, name: Option<&str>) -> String {
    match (ext, name) {
        (Some(e), _) => format!(".{e} files"),
        (None, Some(n)) => format!("{n:?} (no extension)"),
        (None, None) => "files without a name".to_string(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::validate::admission::{Admission, Claims, Origin};
    use std::io::Read;

    /// Admits as the HTTP service does: a client's put, limits on.
    pub(in crate::validate) fn admit<'p>(
        p: &'p Policy,
        name: Option<&str>,
        mime: Option<&str>,
        category: Option<&str>,
        size: Option<u64>,
    ) -> Result<Admission<'p>> {
        p.admit(&Claims {
            name,
            mime,
            category,
            size,
            origin: Origin::Client,
            local_limits: false,
        })
    }

    // ------------------------------------------------------------- small real headers

    pub(in crate::validate) fn png() -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
        v.extend_from_slice(&[0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 0, b'I', b'E', b'N', b'D']);
        v
    }

    pub(in crate::validate) fn jpeg() -> Vec<u8> {
        let mut v =
            b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec();
        v.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
        v.extend_from_slice(&[7u8; 64]);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    pub(in crate::validate) fn gif() -> Vec<u8> {
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec()
    }

    pub(in crate::validate) fn webp() -> Vec<u8> {
        let mut v = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00".to_vec();
        v.extend_from_slice(&[0x10, 0x07, 0x10, 0x11, 0x11, 0x88, 0x88, 0xfe, 0x07, 0x00]);
        v
    }

    pub(in crate::validate) fn pdf() -> Vec<u8> {
        b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n".to_vec()
    }

    /// A ZIP of stored entries with a central directory, so `file-format` can look inside.
    pub(in crate::validate) fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let offset = out.len() as u32;
            let n = name.len() as u16;
            let len = data.len() as u32;
            out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            out.extend_from_slice(&0u32.to_le_bytes()); // crc (unchecked)
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central
                .extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            central.extend_from_slice(&0u32.to_le_bytes());
            central.extend_from_slice(&len.to_le_bytes());
            central.extend_from_slice(&len.to_le_bytes());
            central.extend_from_slice(&n.to_le_bytes());
            central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// A Windows PE header: DOS stub pointing at "PE\0\0" and a COFF header (an .exe).
    pub(in crate::validate) fn pe() -> Vec<u8> {
        let mut v = vec![0u8; 0x200];
        v[..2].copy_from_slice(b"MZ");
        v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        v[0x80..0x84].copy_from_slice(b"PE\0\0");
        v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes()); // x86-64
        v[0x96..0x98].copy_from_slice(&0x0022u16.to_le_bytes()); // executable, large address
        v
    }

    pub(in crate::validate) fn elf() -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..8].copy_from_slice(b"\x7FELF\x02\x01\x01\x00");
        v[16..20].copy_from_slice(&[2, 0, 0x3E, 0]); // executable, x86-64
        v
    }

    pub(in crate::validate) fn text() -> Vec<u8> {
        b"fn main() {\n    println!(\"hello\");\n}\n".to_vec()
    }

    // ------------------------------------------------------------- helpers

    fn guard_all(
        policy: &Policy,
        name: &str,
        declared: Option<&str>,
        data: &[u8],
    ) -> Result<(String, String)> {
        let admission = admit(policy, Some(name), declared, None, None)?;
        let mut g = admission.guard(data)?;
        let mut back = Vec::new();
        g.read_to_end(&mut back)
            .map_err(crate::error::input_error)?;
        assert_eq!(back, data, "the guard must replay the exact bytes");
        Ok((g.category().to_string(), g.mime().to_string()))
    }

    fn ok(name: &str, declared: Option<&str>, data: &[u8]) -> (String, String) {
        guard_all(&Policy::default(), name, declared, data)
            .unwrap_or_else(|e| panic!("{name} ({declared:?}) refused: {e}"))
    }

    fn rejected(name: &str, declared: Option<&str>, data: &[u8]) -> (&'static str, String) {
        rejected_in(None, name, declared, data)
    }

    fn rejected_in(
        category: Option<&str>,
        name: &str,
        declared: Option<&str>,
        data: &[u8],
    ) -> (&'static str, String) {
        let policy = Policy::default();
        let result =
            admit(&policy, Some(name), declared, category, None).and_then(|a| a.guard(data));
        match result {
            Err(Error::Rejected { code, detail }) => (code, detail),
            other => panic!("{name} ({declared:?}): expected a rejection, got {other:?}"),
        }
    }

    // ------------------------------------------------------------- tests

    #[test]
    fn defaults_are_the_spec_categories_plus_other() {
        let p = Policy::default();
        let names: Vec<&str> = p.categories.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["archives", "documents", "images", "other", "videos"]
        );
        assert_eq!(p.categories["images"].max_size, 10_000_000);
        assert_eq!(p.categories["documents"].max_size, 50_000_000);
        assert_eq!(p.categories["videos"].max_size, 500_000_000);
        assert_eq!(p.categories["archives"].max_size, 100_000_000);
        let other = &p.categories[DEFAULT_CATEGORY];
        assert_eq!(other.max_size, 100_000_000);
        assert!(other.is_catch_all());
        assert!(other.extensions.is_empty() && other.mime_types.is_empty());
    }

    #[test]
    fn magic_bytes_that_agree_pass_with_the_detected_type() {
        assert_eq!(
            ok("a.png", None, &png()),
            ("images".into(), "image/png".into())
        );
        assert_eq!(
            ok("a.jpg", None, &jpeg()),
            ("images".into(), "image/jpeg".into())
        );
        assert_eq!(ok("a.JPEG", None, &jpeg()).1, "image/jpeg");
        assert_eq!(
            ok("a.gif", None, &gif()),
            ("images".into(), "image/gif".into())
        );
        assert_eq!(
            ok("a.webp", None, &webp()),
            ("images".into(), "image/webp".into())
        );
        assert_eq!(
            ok("a.pdf", Some("application/pdf"), &pdf()),
            ("documents".into(), "application/pdf".into())
        );
        let z = zip(&[("hello.txt", b"hello")]);
        assert_eq!(
            ok("a.zip", None, &z),
            ("archives".into(), "application/zip".into())
        );
        assert_eq!(
            ok("a.exe", None, &pe()).1,
            "application/vnd.microsoft.portable-executable"
        );
        assert_eq!(
            ok("prog", None, &elf()),
            ("other".into(), "application/x-executable".into())
        );
    }

    #[test]
    fn an_executable_under_an_image_name_is_a_mismatch_naming_both() {
        let (code, detail) = rejected("holiday.jpg", None, &pe());
        assert_eq!(code, TYPE_MISMATCH);
        assert!(detail.contains("image/jpeg"), "{detail}");
        assert!(detail.contains("portable-executable"), "{detail}");
        let (code, detail) = rejected("x.png", None, &elf());
        assert_eq!(code, TYPE_MISMATCH);
        assert!(
            detail.contains("ELF") || detail.contains("Executable"),
            "{detail}"
        );
        assert_eq!(rejected("notes.txt", None, &pe()).0, TYPE_MISMATCH);
        assert_eq!(rejected("main.rs", None, &elf()).0, TYPE_MISMATCH);
        // Another image format under an image name is a mismatch too.
        assert_eq!(rejected("a.jpg", None, &png()).0, TYPE_MISMATCH);
    }

    #[test]
    fn declared_type_must_agree_with_the_content() {
        // Where a PDF is allowed (a name that claims nothing), the content gives the lie to
        // the declared type.
        let (code, detail) = rejected_in(Some("other"), "scan", Some("application/pdf"), &png());
        assert_eq!(code, TYPE_MISMATCH);
        assert!(
            detail.contains("application/pdf") && detail.contains("image/png"),
            "{detail}"
        );
        // In `images` (where a .png is, whatever category is named), a PDF is not even
        // allowed.
        assert_eq!(
            rejected_in(Some("other"), "a.png", Some("application/pdf"), &png()).0,
            TYPE_NOT_ALLOWED
        );
        assert_eq!(
            rejected("a.png", Some("application/pdf"), &png()).0,
            TYPE_NOT_ALLOWED
        );
        // Without a name, the declared type alone is checked.
        assert_eq!(
            rejected("upload", Some("image/gif"), &png()).0,
            TYPE_MISMATCH
        );
        // Parameters, case and aliases do not matter; octet-stream claims nothing.
        assert_eq!(ok("a.png", Some("IMAGE/PNG; q=1"), &png()).1, "image/png");
        assert_eq!(ok("a.jpg", Some("image/jpg"), &jpeg()).1, "image/jpeg");
        assert_eq!(
            ok("a.png", Some("application/octet-stream"), &png()).1,
            "image/png"
        );
        assert_eq!(ok("upload", Some("image/png"), &png()).1, "image/png");
        // A declared type with magic requires it.
        assert_eq!(
            rejected("upload", Some("image/png"), &text()).0,
            TYPE_MISMATCH
        );
    }

    #[test]
    fn names_with_magic_require_it_and_names_without_do_not() {
        let (code, detail) = rejected("a.jpg", None, b"just some text\n");
        assert_eq!(code, TYPE_MISMATCH);
        assert!(
            detail.contains("text") && detail.contains("image/jpeg"),
            "{detail}"
        );
        assert_eq!(rejected("a.pdf", None, &[0x13; 300]).0, TYPE_MISMATCH);
        assert_eq!(rejected("a.zip", None, &text()).0, TYPE_MISMATCH);
        // Unrecognised content is fine where no magic is expected.
        assert_eq!(
            ok("main.rs", None, &text()),
            ("other".into(), "text/x-rust".into())
        );
        assert_eq!(
            ok("notes.txt", None, &text()),
            ("documents".into(), "text/plain".into())
        );
        assert_eq!(ok("data.csv", None, b"a,b\n1,2\n").1, "text/csv");
        assert_eq!(ok("README", None, &text()).1, OCTET_STREAM);
        assert_eq!(ok("blob.bin", None, &[0x13; 300]).1, OCTET_STREAM);
        assert_eq!(ok("blob", None, &[0x13, 0x00, 0xfe, 0x80]).1, OCTET_STREAM);
        // Text formats `file-format` recognises are still text under a textual name.
        assert_eq!(
            ok("page.md", None, b"<!DOCTYPE html>\n<p>hi</p>\n").1,
            "text/markdown"
        );
        // ... and the detected type is the validated one when it agrees with the name.
        assert_eq!(
            ok("run.sh", None, b"#!/bin/sh\necho hi\n").1,
            "text/x-shellscript"
        );
        assert_eq!(
            ok("logo.svg", None, b"<?xml version=\"1.0\"?>\n<svg/>\n").1,
            "image/svg+xml"
        );
        assert_eq!(
            ok("page.html", None, b"<!DOCTYPE html>\n<p>hi</p>\n").1,
            "text/html"
        );
        // Empty files claim nothing and contradict nothing.
        assert_eq!(
            ok("empty.jpg", None, b""),
            ("images".into(), "image/jpeg".into())
        );
        assert_eq!(ok("empty", None, b"").1, OCTET_STREAM);
    }

    #[test]
    fn containers_agree_with_their_members() {
        let docx = zip(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", b"<w/>"),
        ]);
        let xlsx = zip(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("xl/workbook.xml", b"<x/>"),
        ]);
        let docx_mime = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        assert_eq!(
            ok("r.docx", None, &docx),
            ("documents".into(), docx_mime.into())
        );
        assert_eq!(ok("r.xlsx", None, &xlsx).0, "documents");
        // Known exactly (the whole file was seen): a spreadsheet is not a document.
        assert_eq!(rejected("r.docx", None, &xlsx).0, TYPE_MISMATCH);
        // Any ZIP-based file is a ZIP.
        assert_eq!(ok("r.zip", None, &docx).1, "application/zip");
        // A ZIP too large for the prefix: its directory is out of sight, the container is not.
        let mut big = b"PK\x03\x04".to_vec();
        big.extend(std::iter::repeat_n(0x5a, PREFIX_LEN * 2));
        assert_eq!(ok("big.docx", None, &big).1, docx_mime);
        assert_eq!(ok("big.zip", None, &big).1, "application/zip");
        assert_eq!(rejected("big.png", None, &big).0, TYPE_MISMATCH);
        // OLE compound files (doc, xls) past the prefix.
        let mut ole = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
        ole.extend(std::iter::repeat_n(0, PREFIX_LEN * 2));
        assert_eq!(ok("old.doc", None, &ole).1, "application/msword");
        assert_eq!(ok("old.xls", None, &ole).1, "application/vnd.ms-excel");
        assert_eq!(rejected("old.pdf", None, &ole).0, TYPE_MISMATCH);
        // ISO media brands are interchangeable; QuickTime keeps its name's type.
        let mut mp4 = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
        mp4.extend_from_slice(&[0; 32]);
        assert_eq!(
            ok("v.mp4", None, &mp4),
            ("videos".into(), "video/mp4".into())
        );
        assert_eq!(
            ok("v.mov", None, &mp4),
            ("videos".into(), "video/quicktime".into())
        );
        assert_eq!(rejected("v.avi", None, &mp4).0, TYPE_MISMATCH);
    }

    #[test]
    fn policy_round_trips_through_toml() {
        let snippet = r#"
            [categories.images]
            extensions = ["jpg", ".PNG"]
            mime_types = ["image/jpeg", "image/png"]
            max_size = "10MB"

            [categories.videos]
            extensions = ["mp4"]
            max_size = "5GiB"

            [categories.other]
            max_size = 12345
        "#;
        let p: Policy = toml::from_str(snippet).unwrap();
        assert_eq!(p.categories.len(), 3);
        assert_eq!(p.categories["images"].max_size, 10_000_000);
        assert_eq!(p.categories["videos"].max_size, 5 * 1024 * 1024 * 1024);
        assert!(p.categories["videos"].mime_types.is_empty());
        assert_eq!(p.categories["other"].max_size, 12345);
        // ".PNG" in a list matches "png" names.
        assert_eq!(
            admit(&p, Some("a.png"), None, None, None)
                .unwrap()
                .known_category(),
            Some("images")
        );
        let back: Policy = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let d = Policy::default();
        let back: Policy = toml::from_str(&toml::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        // Nothing written: the defaults. Typos and bad sizes are errors.
        assert_eq!(toml::from_str::<Policy>("").unwrap(), d);
        assert!(toml::from_str::<Policy>("[categories.a]\nmax_size = \"ten\"").is_err());
        assert!(toml::from_str::<Policy>("[categories.a]\nmax_size = 1\nextension = []").is_err());
        assert!(toml::from_str::<Policy>("[categories.a]\nextensions = []").is_err());
    }

    #[test]
    fn tar_without_ustar_magic_is_recognised_by_its_checksum() {
        let mut h = vec![0u8; 1024];
        h[..5].copy_from_slice(b"a.txt");
        h[100..107].copy_from_slice(b"0000644");
        h[156] = b'0';
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum::<u32>() + 8 * 0x20;
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        assert_eq!(
            ok("old.tar", None, &h),
            ("archives".into(), "application/x-tar".into())
        );
        // A wrong checksum is not a tar.
        h[0] = b'b';
        assert_eq!(rejected("old.tar", None, &h).0, TYPE_MISMATCH);
    }

    #[test]
    fn text_detection_tolerates_a_cut_character() {
        assert!(looks_like_text("héllo".as_bytes()));
        assert!(looks_like_text(&"hé".as_bytes()[..2]));
        assert!(!looks_like_text(b"a\0b"));
        assert!(!looks_like_text(b"\xff\xfe\xfd"));
        assert!(!looks_like_text(b""));
    }
}
