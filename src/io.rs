//! Bounded reads. Every file pullgate reads (policy, certificates, CA bundles, docker configs,
//! manifests to review) and standard input goes through [`read_limited`]: at most a limit of
//! bytes, one byte past it telling a too-large input (or an endless device) apart without
//! trusting a size the file system reports, and one error type that names what was read.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
}

/// Reads `reader` to the end, refusing more than `limit` bytes; `what` names it in errors
/// ("policy file /etc/pullgate/policy.yaml", "<stdin>").
pub fn read_limited(
    reader: impl Read,
    limit: u64,
    what: impl fmt::Display,
) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            what: what.to_string(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// Reads the file at `path`, refusing more than `limit` bytes; `kind` says what it is for
/// ("policy file"), and errors name it with its path.
pub fn read_file(path: &Path, limit: u64, kind: &str) -> Result<Vec<u8>, ReadError> {
    let what = format!("{kind} {}", path.display());
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        what: what.clone(),
        source,
    })?;
    read_limited(file, limit, what)
}

/// Parses a small configuration file (the policy, the kubelet's credential-provider config)
/// as YAML into `T`, within a budget of nesting, anchors and aliases (their schemas nest a few
/// levels deep and need no aliases) and refusing unknown tags; the error is serde-saphyr's
/// message with the line, column and an excerpt, naming `source`.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    source: &str,
) -> Result<T, String> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 16,
            max_anchors: 64,
            max_aliases: 64,
        },
        reject_unsupported_tags: true,
    };
    serde_saphyr::from_slice_with_options(bytes, options).map_err(|e| {
        let rendered =
            e.render_with_options(serde_saphyr::render_options! { source_name: Some(source) });
        rendered
            .strip_prefix("error: ")
            .unwrap_or(&rendered)
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_past_the_limit_is_refused_and_the_limit_is_not() {
        assert_eq!(read_limited(&b"abcd"[..], 4, "x").unwrap(), b"abcd");
        let err = read_limited(&b"abcde"[..], 4, "input").unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 4, .. }));
        assert_eq!(err.to_string(), "input is larger than 4 bytes");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = read_file(Path::new("/nonexistent/p.yaml"), 10, "policy file").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read policy file /nonexistent/p.yaml: "),
            "{err}"
        );
    }
}
