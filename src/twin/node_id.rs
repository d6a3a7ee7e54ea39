//! Which node id this node stamps its versions with.
//!
//! `--node-id` wins. Otherwise an id is generated once and kept in
//! `<data-dir>/NODE_ID`, so a restarted node keeps stamping with the same id
//! (its persisted versions and CAS tokens stay its own). Without a data dir
//! a fresh id is drawn at every start, which is harmless: ids only need to
//! differ between the two twins, and the handshake refuses equal ones.

use crate::version::{generate_node_id, MAX_NODE_ID};
use std::io;
use std::path::Path;

pub const FILE_NAME: &str = "NODE_ID";

/// Why no node id could be settled.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} holds {text:?}, not a node id in 1-4095: fix or delete it")]
    Bad { path: String, text: String },
}

/// Where the node id came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Kept,
    /// Drawn now; `keep` is the file to write it to (with [`keep`]) once the
    /// data dir is ours: writing it as root before privileges drop would leave
    /// a file, or a data dir, the service user cannot own.
    Generated {
        keep: Option<std::path::PathBuf>,
    },
}

impl Source {
    pub fn describe(&self) -> &'static str {
        match self {
            Source::Flag => "--node-id",
            Source::Kept => "kept in the data dir",
            Source::Generated { keep: Some(_) } => "generated, kept in the data dir",
            Source::Generated { keep: None } => "generated (no data dir to keep it in)",
        }
    }
}

/// The node id: `configured`, else the one kept in `data_dir`, else a new
/// one. Reads only; see [`Source::Generated`].
pub fn resolve(
    configured: Option<u16>,
    data_dir: Option<&Path>,
) -> Result<(u16, Source), NodeIdError> {
    if let Some(id) = configured {
        return Ok((id, Source::Flag));
    }
    let fresh = || {
        generate_node_id().map_err(|source| NodeIdError::Io {
            path: "/dev/urandom".into(),
            source,
        })
    };
    let Some(dir) = data_dir else {
        return Ok((fresh()?, Source::Generated { keep: None }));
    };
    let path = dir.join(FILE_NAME);
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(id) if (1..=MAX_NODE_ID).contains(&id) => Ok((id, Source::Kept)),
            _ => Err(NodeIdError::Bad { path: shown, text }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok((fresh()?, Source::Generated { keep: Some(path) }))
        }
        // Not a usable directory at all: persistence refuses it with its own,
        // clearer message, so do not fail first here.
        Err(_) if !dir.is_dir() => Ok((fresh()?, Source::Generated { keep: None })),
        Err(source) => Err(NodeIdError::Io {
            path: shown,
            source,
        }),
    }
}

/// Write a generated id where [`resolve`] will find it next time.
pub fn keep(source: &Source, id: u16) -> Result<(), NodeIdError> {
    let Source::Generated { keep: Some(path) } = source else {
        return Ok(());
    };
    std::fs::write(path, format!("{id}\n")).map_err(|source| NodeIdError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_then_kept_then_reused() {
        assert_eq!(resolve(Some(9), None).expect("ok"), (9, Source::Flag));
        let (id, _) = resolve(None, None).expect("ok");
        assert!((1..=MAX_NODE_ID).contains(&id));
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("data");
        std::fs::create_dir(&sub).expect("mkdir");
        let (a, src) = resolve(None, Some(&sub)).expect("ok");
        assert!(matches!(src, Source::Generated { keep: Some(_) }));
        assert!(!sub.join(FILE_NAME).exists(), "resolve only reads");
        keep(&src, a).expect("keep");
        let (b, src) = resolve(None, Some(&sub)).expect("ok");
        assert_eq!((a, src), (b, Source::Kept));
        assert_eq!(resolve(Some(5), Some(&sub)).expect("ok").0, 5);
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").expect("write");
        assert!(matches!(
            resolve(None, Some(&file)),
            Ok((_, Source::Generated { keep: None }))
        ));
        std::fs::write(sub.join(FILE_NAME), "0\n").expect("write");
        assert!(matches!(
            resolve(None, Some(&sub)),
            Err(NodeIdError::Bad { .. })
        ));
    }
}
