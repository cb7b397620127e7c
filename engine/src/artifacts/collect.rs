//! Collecting a namespace's sealed blobs that nothing names any more: without it, every
//! artifact an action ever wrote stays, and a tenant's quota of artifact bytes only fills.
//!
//! Marking starts from the artifacts the caller's records name (trees), walks their
//! subdirectories' trees, and spares every file they list. A blob is removed only when no root
//! reaches it **and** it was last kept or used before `before` (the grace): an action's
//! outputs are stored before the record naming them is written, and a folder is uploaded
//! before the pipeline naming it is registered. A put that finds its blob kept notes the use
//! ([`SealedObjects::touch_sealed`]), and the backend checks that time again as it removes.
use super::{BlobStore, Digest, SealedInfo, SealedObjects, StoreError};
use std::collections::HashSet;
use std::time::SystemTime;

/// Blobs used lately and named by nothing are read as possible trees up to this size.
const MAX_LATELY_READ: u64 = 16 << 20;

/// Mark every blob reached from the trees `trees` (stored ones: others have nothing below
/// them that can be read). Every root and every directory a record names is a tree: with
/// `strict`, one that does not read as a tree (damaged, or a format this version does not
/// know) leaves its files unknown, and is an error; without (a blob only guessed to be a tree,
/// which anyone able to write a file could have shaped as one), it is passed over.
fn mark(
    store: &dyn BlobStore,
    stored: &HashSet<Digest>,
    reached: &mut HashSet<Digest>,
    mut trees: Vec<Digest>,
    strict: bool,
) -> Result<(), StoreError> {
    while let Some(digest) = trees.pop() {
        if !reached.insert(digest) || !stored.contains(&digest) {
            continue;
        }
        let tree = match super::tree::get_tree(store, &digest) {
            Ok(tree) => tree,
            Err(StoreError::NotFound(_)) => continue,
            Err(_) if !strict => continue,
            Err(e) => return Err(e),
        };
        trees.extend(entries_below(tree, reached));
    }
    Ok(())
}

/// Mark a tree's files as reached; returns its subdirectories' trees, to be read.
fn entries_below(tree: super::Tree, reached: &mut HashSet<Digest>) -> Vec<Digest> {
    let mut dirs = Vec::new();
    for entry in tree.entries {
        match entry {
            super::Entry::File { digest, .. } => {
                reached.insert(digest);
            }
            super::Entry::Dir { digest, .. } => dirs.push(digest),
            super::Entry::Symlink { .. } => {}
        }
    }
    dirs
}

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs kept (reached, or used within the grace).
    pub kept: usize,
    /// Blobs removed.
    pub removed: usize,
    /// Bytes they held, as stored.
    pub bytes: u64,
}

/// Remove the blobs of `listed` (namespace `ns`'s, as [`SealedObjects::list_sealed`] gave them)
/// that no tree of `roots` reaches and that were last used before `before`. A tree that
/// cannot be read (damaged, not a tree, the backend unreachable) ends the collection with its
/// error: nothing is removed on a guess. A root not stored is skipped (nothing below it can be
/// read).
pub fn collect(
    store: &dyn BlobStore,
    objects: &dyn SealedObjects,
    ns: &str,
    listed: &[SealedInfo],
    roots: impl IntoIterator<Item = Digest>,
    before: SystemTime,
) -> Result<Collected, StoreError> {
    let stored: HashSet<Digest> = listed.iter().map(|b| b.address).collect();
    let mut reached: HashSet<Digest> = HashSet::new();
    mark(
        store,
        &stored,
        &mut reached,
        roots.into_iter().collect(),
        true,
    )?;
    // A blob used lately that nothing names may be a tree about to be named (a cache hit or
    // a `pipeline put` notes the use of an artifact's tree, not of each file under it): what
    // it lists is spared too. Only small ones are read (trees are: a few MiB at most); one
    // that is not a tree, or cannot be read, has nothing below it.
    let lately: Vec<Digest> = listed
        .iter()
        .filter(|b| b.ns == ns && b.used_at >= before && b.bytes <= MAX_LATELY_READ)
        .filter(|b| !reached.contains(&b.address))
        .map(|b| b.address)
        .collect();
    for digest in lately {
        if reached.contains(&digest) {
            continue;
        }
        let Ok(tree) = super::tree::get_tree(store, &digest) else {
            continue;
        };
        reached.insert(digest);
        let dirs = entries_below(tree, &mut reached);
        mark(store, &stored, &mut reached, dirs, false)?;
    }
    let mut done = Collected::default();
    for blob in listed.iter().filter(|b| b.ns == ns) {
        if reached.contains(&blob.address) || blob.used_at >= before {
            done.kept += 1;
            continue;
        }
        match objects.drop_unused_sealed(ns, &blob.address, before)? {
            Some(bytes) => {
                done.removed += 1;
                done.bytes += bytes;
            }
            // Used meanwhile (or gone already).
            None => done.kept += 1,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::{BlobStore, LocalStore, SealedStore, TenantKey, tree};
    use std::sync::Arc;
    use std::time::Duration;

    fn write(dir: &std::path::Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    /// Make every blob of `ns` look last used two days ago.
    fn age(local: &LocalStore, ns: &str) {
        let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
        for b in local.list_sealed().unwrap().iter().filter(|b| b.ns == ns) {
            let path = local.sealed_path(ns, &b.address).unwrap();
            std::fs::File::open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }

    fn addresses(local: &LocalStore, ns: &str) -> HashSet<Digest> {
        let listed = local.list_sealed().unwrap();
        listed
            .into_iter()
            .filter(|b| b.ns == ns)
            .map(|b| b.address)
            .collect()
    }

    #[test]
    fn what_no_root_reaches_goes_once_past_its_grace_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::open(dir.path().join("cas")).unwrap());
        let acme = SealedStore::new(local.clone(), "acme", TenantKey::derive(&[1; 32]));
        let globex = SealedStore::new(local.clone(), "globex", TenantKey::derive(&[2; 32]));
        let (kept_dir, gone_dir) = (dir.path().join("kept"), dir.path().join("gone"));
        write(&kept_dir, &[("a", "shared"), ("sub/b", "only kept")]);
        write(&gone_dir, &[("a", "shared"), ("c", "only gone")]);
        let (kept, _) = tree::put_tree(&acme, &kept_dir).unwrap();
        let (gone, _) = tree::put_tree(&acme, &gone_dir).unwrap();
        let loose = acme.put_bytes(b"named by nothing").unwrap();
        tree::put_tree(&globex, &gone_dir).unwrap();
        let before_acme = addresses(&local, "acme");
        let globex_blobs = addresses(&local, "globex");
        // kept: its tree, a, sub's tree, b; gone: its tree, c (a is shared); the loose blob.
        assert_eq!(before_acme.len(), 7);
        let collect_now = |before: SystemTime| {
            let listed = local.list_sealed().unwrap();
            collect(&acme, &*local, "acme", &listed, [kept], before).unwrap()
        };

        // Within the grace: everything stays.
        let done = collect_now(SystemTime::now() - Duration::from_secs(86_400));
        assert_eq!((done.kept, done.removed), (7, 0));

        // Past it: what `kept` does not reach goes, with its bytes counted off the quota.
        age(&local, "acme");
        let used = local.sealed_bytes("acme").unwrap();
        let done = collect_now(SystemTime::now() - Duration::from_secs(86_400));
        assert_eq!((done.kept, done.removed), (4, 3), "{done:?}");
        assert_eq!(local.sealed_bytes("acme").unwrap(), used - done.bytes);
        let after = addresses(&local, "acme");
        assert!(!after.contains(&gone) && !after.contains(&loose));
        assert!(after.contains(&kept));
        tree::materialize(&acme, &kept, &dir.path().join("out")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/sub/b")).unwrap(),
            "only kept"
        );
        // Another tenant's blobs, the same content among them, are not touched.
        assert_eq!(addresses(&local, "globex"), globex_blobs);

        // A put of content kept long ago notes its use: the next collection spares it.
        age(&local, "acme");
        let again = acme.put_bytes(b"shared").unwrap();
        let listed = local.list_sealed().unwrap();
        let done = collect(
            &acme,
            &*local,
            "acme",
            &listed,
            [],
            SystemTime::now() - Duration::from_secs(86_400),
        )
        .unwrap();
        assert_eq!((done.kept, done.removed), (1, 3), "{done:?}");
        assert_eq!(addresses(&local, "acme"), HashSet::from([again]));
    }

    #[test]
    fn a_tree_used_lately_keeps_its_files_though_nothing_names_it_yet() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::open(dir.path().join("cas")).unwrap());
        let acme = SealedStore::new(local.clone(), "acme", TenantKey::derive(&[1; 32]));
        write(&dir.path().join("t"), &[("a", "one"), ("sub/b", "two")]);
        let (root, _) = tree::put_tree(&acme, &dir.path().join("t")).unwrap();
        let file = acme.put_bytes(b"not a tree, used lately").unwrap();
        let old = acme.put_bytes(b"old and named by nothing").unwrap();
        age(&local, "acme");
        // A cache hit about to name the tree, a put of the file: each notes only its own use.
        assert!(acme.touch(&root).unwrap() && acme.touch(&file).unwrap());
        let listed = local.list_sealed().unwrap();
        let before = SystemTime::now() - Duration::from_secs(86_400);
        let done = collect(&acme, &*local, "acme", &listed, [], before).unwrap();
        assert_eq!((done.kept, done.removed), (5, 1), "{done:?}");
        let left = addresses(&local, "acme");
        assert!(left.contains(&root) && left.contains(&file) && !left.contains(&old));
        tree::materialize(&acme, &root, &dir.path().join("out")).unwrap();
    }

    #[test]
    fn a_tree_that_cannot_be_read_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::open(dir.path().join("cas")).unwrap());
        let acme = SealedStore::new(local.clone(), "acme", TenantKey::derive(&[1; 32]));
        write(&dir.path().join("t"), &[("a", "one"), ("b", "two")]);
        let (root, _) = tree::put_tree(&acme, &dir.path().join("t")).unwrap();
        let loose = acme.put_bytes(b"loose").unwrap();
        age(&local, "acme");
        // A root that is not a tree (its files would be unknown).
        let listed = local.list_sealed().unwrap();
        let err = collect(&acme, &*local, "acme", &listed, [loose], SystemTime::now()).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert_eq!(addresses(&local, "acme").len(), 4);
        // The root's ciphertext changed at rest.
        let path = local.sealed_path("acme", &root).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let listed = local.list_sealed().unwrap();
        let err = collect(&acme, &*local, "acme", &listed, [root], SystemTime::now()).unwrap_err();
        assert!(matches!(err, StoreError::Tampered(_)), "{err}");
        assert_eq!(addresses(&local, "acme").len(), 4);
    }
}
