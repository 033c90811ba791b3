//! Files the store keeps beside (or instead of) its database: the key pepper, and
//! private files written once (mode 0600, never overwritten).

use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::StoreError;

/// Reads the pepper file, creating it with 32 random bytes (mode 0600) if absent.
pub(crate) fn load_or_create_pepper(path: &Path) -> Result<Vec<u8>, StoreError> {
    read_or(path, true)
}

/// The pepper in `path`, which must exist (a store that already hashed keys with one).
pub(crate) fn read_pepper(path: &Path) -> Result<Vec<u8>, StoreError> {
    read_or(path, false)
}

fn read_or(path: &Path, create: bool) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => Ok(bytes),
        Ok(_) => Err(StoreError::Invalid {
            path: path.to_owned(),
            message: "pepper file is shorter than 32 bytes; restore it from backup (keys hashed with it cannot be verified otherwise)".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Err(StoreError::Invalid {
            path: path.to_owned(),
            message: "no pepper file, and the store already holds keys hashed with a pepper: give this replica the pepper file the others use".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut pepper = vec![0u8; 32];
            rand::rng().fill_bytes(&mut pepper);
            write_private_file(path, &pepper)?;
            Ok(pepper)
        }
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}
