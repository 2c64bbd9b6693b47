//! Keyed fingerprints: 128 bits of an HMAC-SHA256, under a key drawn at random for the
//! process, of an unambiguous encoding of some fields. What names a cache entry or a
//! credential without holding (or letting anyone outside the process predict) what it stands
//! for.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// An HMAC-SHA256 key drawn at random, never leaving the process: what makes fingerprints
/// and cache keys neither reversible nor predictable.
pub(crate) fn random_hmac_key() -> hmac::Key {
    let mut bytes = [0u8; 32];
    // Without randomness ids would be plain hashes of passwords and cache keys guessable;
    // refusing to run is the only safe answer, and an OS without a working RNG cannot do TLS
    // either.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    hmac::Key::new(hmac::HMAC_SHA256, &bytes)
}

/// A keyed hash of a sequence of fields, cut to 128 bits: what names a cache entry without
/// the entry holding (or anyone outside the process predicting) what it depends on.
///
/// Variable-length fields are length-prefixed and lists counted, so two different sequences
/// never feed the same bytes.
pub(crate) struct Fingerprint(hmac::Context);

impl Fingerprint {
    pub(crate) fn new(key: &hmac::Key) -> Self {
        Fingerprint(hmac::Context::with_key(key))
    }

    /// A field of any length.
    pub(crate) fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.count(bytes.len());
        self.0.update(bytes);
        self
    }

    /// A field whose length its place tells: fixed-size, or the last of the sequence.
    pub(crate) fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// The number of items of a list that follows.
    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        self.0.update(&(n as u64).to_le_bytes());
        self
    }

    pub(crate) fn finish(self) -> [u8; 16] {
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&self.0.sign().as_ref()[..16]);
        bits
    }
}
