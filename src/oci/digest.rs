//! Content digests (`algorithm:hex`). A digest taken from a registry's document ends up in a
//! URL path, so it is validated strictly before use; bodies are verified against them.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// The digest algorithms the OCI image spec registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// A validated digest: known algorithm, lowercase hex of the exact length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Format(String),
    #[error("digest algorithm {0:?} is not supported (sha256, sha384, sha512 are)")]
    Algorithm(String),
    #[error("digest {0:?} must be {1} lowercase hex characters")]
    Hex(String, usize),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        // Bounded before formatting into errors: the input may come from a hostile document.
        let shown = || s.chars().take(160).collect::<String>();
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Format(shown()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Algorithm(alg.chars().take(40).collect())),
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Hex(shown(), algorithm.hex_len()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Digest of `bytes` with the given algorithm.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let hex = match algorithm {
            Algorithm::Sha256 => hex(&Sha256::digest(bytes)),
            Algorithm::Sha384 => hex(&Sha384::digest(bytes)),
            Algorithm::Sha512 => hex(&Sha512::digest(bytes)),
        };
        Digest { algorithm, hex }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::compute(self.algorithm, bytes) == *self
    }

    /// A short form for messages: `sha256:0123456789ab`.
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.name(), &self.hex[..12])
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn computes_and_matches() {
        let d = Digest::compute(Algorithm::Sha256, b"");
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert!(Digest::parse(EMPTY_SHA256).unwrap().matches(b""));
        assert!(!Digest::parse(EMPTY_SHA256).unwrap().matches(b"x"));
        let d512 = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::parse(&d512.to_string()).unwrap(), d512);
    }

    #[rstest::rstest]
    #[case::no_colon("sha256")]
    #[case::unknown_alg("md5:d41d8cd98f00b204e9800998ecf8427e")]
    #[case::uppercase("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855")]
    #[case::short("sha256:e3b0c442")]
    #[case::path_injection(
        "sha256:../../../../e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b78"
    )]
    fn rejects(#[case] input: &str) {
        assert!(Digest::parse(input).is_err(), "{input} should be rejected");
    }
}
