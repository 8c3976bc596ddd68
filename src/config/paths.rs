//! The `paths` section: how the filter treats request paths an upstream could read in more than one
//! way (see `policy::path`).

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub encoded_slashes: EncodedSlashes,
}

/// What a path with `%2F`, `%5C` or `\` gets. Decoding upstreams take them for separators, others
/// for data, so such a path names two resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// Refused with 400 `ambiguous_path`.
    #[default]
    Reject,
    /// Passes when both readings (slash as data, slash as separator) fall under the same rule, for
    /// APIs with ids like `group%2Fproject`.
    Allow,
}
