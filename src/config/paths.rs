//! The `paths` section: how the filter treats request paths an upstream could read in more than one
//! way (see `policy::path`).

use super::read::Fields;
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    pub encoded_slashes: EncodedSlashes,
}

impl Paths {
    pub(super) fn read(mut f: Fields) -> Result<Paths, ConfigError> {
        let options = &[("reject", EncodedSlashes::Reject), ("allow", EncodedSlashes::Allow)];
        let paths = Paths { encoded_slashes: f.choice_or("encoded_slashes", options, EncodedSlashes::Reject)? };
        f.done()?;
        Ok(paths)
    }
}

/// What a path with `%2F`, `%5C` or `\` gets. Decoding upstreams take them for separators, others
/// for data, so such a path names two resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// Refused with 400 `ambiguous_path`.
    Reject,
    /// Passes when both readings (slash as data, slash as separator) fall under the same rule, for
    /// APIs with ids like `group%2Fproject`.
    Allow,
}
