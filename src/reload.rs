//! Values built from files and rebuilt when the files' content changes: the policy, the
//! serving certificate and the client CA. The reviewer reads the policy in force through it,
//! so it sits below the admission layer rather than in the server.
//!
//! Kubernetes updates a mounted ConfigMap or Secret by swapping the `..data` symlink to a new
//! directory, not by writing the files, so inotify on the file and the link's own mtime both
//! miss it. Polling the content is simple and always right. A new version that does not parse
//! keeps the old one in service.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::io::{ReadError, read_file};

/// Why files could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Invalid(E),
}

type Parser<T, E> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync>;

/// A value kept in step with the files it is built from.
pub struct Reloading<T, E: std::error::Error + 'static> {
    what: &'static str,
    files: Vec<PathBuf>,
    max_bytes: u64,
    parse: Option<Parser<T, E>>,
    current: RwLock<Arc<T>>,
    /// Fingerprint of the bytes last tried, good or bad, so a bad update is reported once.
    seen: Mutex<[u8; 32]>,
}

impl<T, E: std::error::Error + 'static> fmt::Debug for Reloading<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn fingerprint(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in contents {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    h.finalize().into()
}

impl<T: Send + Sync + 'static, E: std::error::Error + Send + Sync + 'static> Reloading<T, E> {
    /// Loads `files` (each at most `max_bytes`) through `parse`, which gets their contents in
    /// order.
    pub fn load(
        what: &'static str,
        files: Vec<PathBuf>,
        max_bytes: u64,
        parse: impl Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, ReloadError<E>> {
        let contents = files
            .iter()
            .map(|f| read_file(f, max_bytes, what))
            .collect::<Result<Vec<_>, _>>()?;
        let value = parse(&contents).map_err(ReloadError::Invalid)?;
        Ok(Reloading {
            what,
            files,
            max_bytes,
            parse: Some(Box::new(parse)),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(fingerprint(&contents)),
        })
    }

    /// A value that comes from no file and never changes.
    pub fn fixed(what: &'static str, value: T) -> Self {
        Reloading {
            what,
            files: Vec::new(),
            max_bytes: 0,
            parse: None,
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new([0; 32]),
        }
    }

    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the files; when their content changed and parses, swaps the value. Returns
    /// whether it changed.
    pub fn reload_if_changed(&self) -> Result<bool, ReloadError<E>> {
        let Some(parse) = &self.parse else {
            return Ok(false);
        };
        let contents = self
            .files
            .iter()
            .map(|f| read_file(f, self.max_bytes, self.what))
            .collect::<Result<Vec<_>, _>>()?;
        let now = fingerprint(&contents);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let value = parse(&contents).map_err(ReloadError::Invalid)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        Ok(true)
    }

    /// Polls every `interval` until `shutdown` resolves, logging what happens.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        if self.parse.is_none() {
            return;
        }
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(what = self.what, files = ?self.files, "reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    what = self.what,
                    error = %e,
                    "new version not loaded; keeping the previous one"
                ),
                Err(e) => tracing::warn!(what = self.what, error = %e, "reload task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("not a number: {0}")]
    struct NotANumber(String);

    fn number(contents: &[Vec<u8>]) -> Result<u64, NotANumber> {
        let text = String::from_utf8_lossy(&contents[0]).trim().to_owned();
        text.parse().map_err(|_| NotANumber(text))
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let value = Reloading::load("number", vec![path.clone()], 64, number).unwrap();
        assert!(!value.reload_if_changed().unwrap());
        std::fs::write(&path, "two").unwrap();
        assert!(matches!(
            value.reload_if_changed(),
            Err(ReloadError::Invalid(_))
        ));
        assert_eq!(*value.current(), 1);
        // The same bad content is not reported again.
        assert!(!value.reload_if_changed().unwrap());
        std::fs::write(&path, "3").unwrap();
        assert!(value.reload_if_changed().unwrap());
        assert_eq!(*value.current(), 3);
    }

    #[test]
    fn files_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "12345").unwrap();
        let err = Reloading::load("number", vec![path], 4, number).unwrap_err();
        assert!(
            matches!(err, ReloadError::Read(ReadError::TooLarge { limit: 4, .. })),
            "{err}"
        );
    }
}
