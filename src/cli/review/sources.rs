//! What `-f` names, as kubectl takes it: a file, `-` for standard input, or a directory, whose
//! `.yaml`, `.yml` and `.json` files are read (here always recursively, as `kubectl -R`), in
//! name order so the output is the same on every run.

use std::path::{Path, PathBuf};

use super::ReviewError;

/// Files read from one run's directories at most: a tree larger than this is a mistake (a
/// checkout's root, a `node_modules`), not a set of manifests.
pub(super) const MAX_FILES: usize = 10_000;
/// Directory depth followed at most.
const MAX_DEPTH: usize = 32;

/// One input to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Stdin,
    File(PathBuf),
}

/// The inputs `paths` name, in order; directories expanded.
pub(super) fn expand(paths: &[PathBuf]) -> Result<Vec<Source>, ReviewError> {
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            sources.push(Source::Stdin);
        } else if path.is_dir() {
            let mut found = Vec::new();
            walk(path, 0, &mut found)?;
            sources.extend(found.into_iter().map(Source::File));
        } else {
            // A missing or unreadable file is reported when it is read.
            sources.push(Source::File(path.clone()));
        }
        if sources.len() > MAX_FILES {
            return Err(ReviewError::TooManyFiles { limit: MAX_FILES });
        }
    }
    Ok(sources)
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<(), ReviewError> {
    let unreadable = |source| ReviewError::Directory {
        dir: dir.display().to_string(),
        source,
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // Symbolic links to directories are not followed: a link cycle must not loop.
        let kind = entry.file_type().map_err(unreadable)?;
        if kind.is_dir() {
            walk(&path, depth + 1, found)?;
        } else if is_manifest(&path) {
            found.push(path);
            if found.len() > MAX_FILES {
                return Err(ReviewError::TooManyFiles { limit: MAX_FILES });
            }
        }
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_read_recursively_in_name_order_and_only_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/nested")).unwrap();
        for file in [
            "b/nested/z.yml",
            "b/a.json",
            "a.yaml",
            "README.md",
            "b/notes.txt",
        ] {
            std::fs::write(root.join(file), "").unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(root, root.join("b/loop")).unwrap();
        let sources = expand(&[root.to_owned(), PathBuf::from("-")]).unwrap();
        let expected: Vec<Source> = ["a.yaml", "b/a.json", "b/nested/z.yml"]
            .iter()
            .map(|f| Source::File(root.join(f)))
            .chain([Source::Stdin])
            .collect();
        assert_eq!(sources, expected);
    }

    #[test]
    fn a_named_file_is_kept_whatever_its_extension() {
        let sources = expand(&[PathBuf::from("/nonexistent/manifest.txt")]).unwrap();
        assert_eq!(
            sources,
            [Source::File(PathBuf::from("/nonexistent/manifest.txt"))]
        );
    }
}
