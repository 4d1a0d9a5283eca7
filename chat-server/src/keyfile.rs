//! Secrets kept in a file of the data directory (`jwt-secret`, `vapid-private-key`): read when
//! present, else generated and written once, readable by the owner only.

use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How long a reader waits for a file another process has created but not written yet.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// A secret read from, or just written to, its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The file's content, trimmed.
    pub secret: String,
    /// Whether this call generated and wrote it.
    pub created: bool,
}

/// The secret in `path`, or a new one from `generate` written there (parent directories
/// created; `create_new`, mode 0600 on Unix, synced to disk). Of processes racing to create
/// it, one writes and the others read what it wrote.
pub fn read_or_create(path: &Path, generate: impl FnOnce() -> String) -> anyhow::Result<KeyFile> {
    read_or_create_waiting(path, generate, WRITER_GRACE)
}

fn read_or_create_waiting(
    path: &Path,
    generate: impl FnOnce() -> String,
    grace: Duration,
) -> anyhow::Result<KeyFile> {
    if path.exists() {
        return read_written(path, grace);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = match opts.open(path) {
        Ok(f) => f,
        // Another process won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_written(path, grace);
        }
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    };
    let secret = generate();
    let written = file
        .write_all(secret.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Leave no empty or partial file behind: the next start generates again.
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(KeyFile {
        secret: secret.trim().to_string(),
        created: true,
    })
}

/// The content of an existing file; an empty one is given `grace` to be written (a process
/// that created it may be writing it right now).
fn read_written(path: &Path, grace: Duration) -> anyhow::Result<KeyFile> {
    let deadline = std::time::Instant::now() + grace;
    loop {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let secret = s.trim();
        if !secret.is_empty() {
            return Ok(KeyFile {
                secret: secret.to_string(),
                created: false,
            });
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{} is empty: delete it to have a new secret generated",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tern-keyfile-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_once_then_reads_the_same_secret() {
        let d = dir("once");
        let path = d.join("sub").join("jwt-secret");
        let first = read_or_create(&path, || "s3cret\n".into()).unwrap();
        assert_eq!(
            first,
            KeyFile {
                secret: "s3cret".into(),
                created: true
            }
        );
        let second = read_or_create(&path, || panic!("must not generate again")).unwrap();
        assert_eq!(
            second,
            KeyFile {
                secret: "s3cret".into(),
                created: false
            }
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let path = d.join("vapid-private-key");
        read_or_create(&path, || "key".into()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn racing_creators_agree_on_one_secret() {
        let d = dir("race");
        let path = d.join("jwt-secret");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let results: Vec<KeyFile> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (path, barrier) = (&path, barrier.clone());
                    s.spawn(move || {
                        barrier.wait();
                        read_or_create(path, || {
                            // Widen the window between create and write.
                            std::thread::sleep(Duration::from_millis(30));
                            format!("secret-{i}")
                        })
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|k| k.created).count(), 1);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(
            results.iter().all(|k| k.secret == on_disk),
            "{results:?} vs {on_disk}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_empty_file_is_an_error_after_the_grace() {
        let d = dir("empty");
        let path = d.join("jwt-secret");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(&path, "  \n").unwrap();
        let e = read_or_create_waiting(&path, || panic!("exists"), Duration::from_millis(50))
            .unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
