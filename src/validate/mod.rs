//! Validation, in one place for the library, the CLI and the service alike.
//!
//! - `names`: owners, keys and categories as labels, and display-name sanitising — checks that
//!   need nothing but the string.
//! - [`policy`]: what each category accepts (extensions, MIME types, maximum size) and whether
//!   the content's magic bytes agree with what its name and declared type say.
//! - [`admission`]: which category a file is (decided from its extension and detected type,
//!   not from what a client says), its limit and its scan decision. `Store::put` runs
//!   [`Policy::admit`] before it reads a byte and [`Admission::guard`] around the source, so
//!   every put — library call, `tessera put`, HTTP upload — passes the same checks.

pub mod admission;
mod names;
pub mod policy;

pub use admission::{Admission, Claims, Decision, Guarded, Origin};
pub use names::{
    MAX_EXT_BYTES, MAX_KEY_BYTES, MAX_LABEL_BYTES, MAX_NAME_BYTES, check_key, check_label,
    sanitize_display_name,
};
pub use policy::{CategoryRule, Policy};
