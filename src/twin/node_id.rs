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

/// The node id: `configured`, else the one kept in `data_dir`, else a new
/// one (written there when there is a data dir). Returns (id, source) where
/// source says where it came from, for the start-up log.
pub fn resolve(
    configured: Option<u16>,
    data_dir: Option<&Path>,
) -> Result<(u16, &'static str), NodeIdError> {
    if let Some(id) = configured {
        return Ok((id, "--node-id"));
    }
    let Some(dir) = data_dir else {
        let id = generate_node_id().map_err(|source| NodeIdError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
        return Ok((id, "generated (no data dir to keep it in)"));
    };
    let path = dir.join(FILE_NAME);
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(id) if (1..=MAX_NODE_ID).contains(&id) => Ok((id, "kept in the data dir")),
            _ => Err(NodeIdError::Bad { path: shown, text }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = generate_node_id().map_err(|source| NodeIdError::Io {
                path: "/dev/urandom".into(),
                source,
            })?;
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, format!("{id}\n")))
                .map_err(|source| NodeIdError::Io {
                    path: shown,
                    source,
                })?;
            Ok((id, "generated and kept in the data dir"))
        }
        Err(source) => Err(NodeIdError::Io {
            path: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_then_kept_then_reused() {
        assert_eq!(resolve(Some(9), None).expect("ok").0, 9);
        let (id, _) = resolve(None, None).expect("ok");
        assert!((1..=MAX_NODE_ID).contains(&id));
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("data");
        let (a, src) = resolve(None, Some(&sub)).expect("ok");
        assert!(src.contains("generated"));
        let (b, src) = resolve(None, Some(&sub)).expect("ok");
        assert_eq!((a, src), (b, "kept in the data dir"));
        assert_eq!(resolve(Some(5), Some(&sub)).expect("ok").0, 5);
        std::fs::write(sub.join(FILE_NAME), "0\n").expect("write");
        assert!(matches!(
            resolve(None, Some(&sub)),
            Err(NodeIdError::Bad { .. })
        ));
    }
}
