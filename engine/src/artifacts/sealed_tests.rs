//! Sealed artifacts: what a reader of the store at rest sees, and what a reader through the
//! store gets.
use super::*;
use crate::artifacts::LocalStore;

fn stores(dir: &Path) -> (Arc<LocalStore>, SealedStore, SealedStore) {
    let local = Arc::new(LocalStore::open(dir).unwrap());
    let acme = SealedStore::new(local.clone(), "acme", TenantKey::derive(&[1; 32]));
    let globex = SealedStore::new(local.clone(), "globex", TenantKey::derive(&[2; 32]));
    (local, acme, globex)
}

/// Content that is easy to find in a file and differs chunk to chunk.
fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"SLUICE-PLAINTEXT-"[i % 17] ^ (i / CHUNK) as u8)
        .collect()
}

fn sealed_file(local: &LocalStore, ns: &str, d: &Digest) -> PathBuf {
    local.sealed_path(ns, d).unwrap()
}

#[test]
fn content_of_every_size_comes_back_and_is_never_kept_plain() {
    let dir = tempfile::tempdir().unwrap();
    let (local, acme, _) = stores(&dir.path().join("cas"));
    // Around every boundary of chunks and windows.
    for len in [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK,
        3 * CHUNK + 5,
        4 * CHUNK,
        5 * CHUNK - 1,
        7 * CHUNK + 1024,
        WINDOW,
        WINDOW + CHUNK + 3,
        2 * WINDOW + 1,
    ] {
        let bytes = content(len);
        let expected = TenantKey::derive(&[1; 32]).address_of(&bytes);
        // Bytes, a file the caller keeps, a file handed over (sealed in place when large).
        assert_eq!(acme.put_bytes(&bytes).unwrap(), expected, "{len}");
        let src = dir.path().join("src");
        fs::write(&src, &bytes).unwrap();
        assert_eq!(acme.put_file(&src).unwrap(), expected, "{len}");
        assert!(src.exists(), "put_file leaves the caller's file");
        acme.discard_all_for_test(&expected);
        assert_eq!(acme.put_owned(&src).unwrap(), expected, "{len}");
        assert!(!src.exists(), "an owned file is taken");

        assert_eq!(acme.get_bytes(&expected).unwrap(), bytes, "{len}");
        let out = dir.path().join("out");
        acme.get_to_file(&expected, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), bytes, "{len}");
        fs::remove_file(&out).unwrap();
        assert_eq!(acme.verify(&expected).unwrap(), len as u64);

        let at_rest = fs::read(sealed_file(&local, "acme", &expected)).unwrap();
        assert_eq!(
            at_rest.len(),
            len + len.div_ceil(CHUNK).max(1) * TAG + TRAILER
        );
        if len >= 17 {
            assert!(
                !at_rest.windows(17).any(|w| w == b"SLUICE-PLAINTEXT-"),
                "{len}: plaintext at rest"
            );
        }
        // Not kept under its plain digest either.
        assert!(!local.contains(&Digest::of(&bytes)));
    }
}

#[test]
fn two_tenants_get_unrelated_addresses_and_cannot_read_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (local, acme, globex) = stores(dir.path());
    let bytes = content(100_000);
    let a = acme.put_bytes(&bytes).unwrap();
    let g = globex.put_bytes(&bytes).unwrap();
    assert_ne!(a, g);
    assert_ne!(a, Digest::of(&bytes));
    // Knowing the other's address finds nothing, and says nothing about existence.
    assert!(!globex.contains(&a));
    assert!(matches!(globex.get_bytes(&a), Err(StoreError::NotFound(_))));
    // The other tenant's file moved into this tenant's namespace does not open under its key.
    let theirs = sealed_file(&local, "acme", &a);
    let mine = local.sealed_blob_path("globex", &a).unwrap();
    fs::create_dir_all(mine.parent().unwrap()).unwrap();
    fs::copy(&theirs, &mine).unwrap();
    assert!(matches!(globex.get_bytes(&a), Err(StoreError::Tampered(d)) if d == a));
}

#[test]
fn changed_truncated_or_swapped_ciphertext_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (local, acme, _) = stores(dir.path());
    let (one, two) = (content(3 * CHUNK + 7), content(CHUNK + 1));
    let (d1, d2) = (acme.put_bytes(&one).unwrap(), acme.put_bytes(&two).unwrap());
    let path = sealed_file(&local, "acme", &d1);
    let original = fs::read(&path).unwrap();
    let write = |bytes: &[u8]| {
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, bytes).unwrap();
    };
    // One bit of ciphertext in the last chunk, one of a tag, one of the trailer's salt.
    for at in [
        original.len() - TRAILER - 4 * TAG - 1,
        original.len() - TRAILER - 1,
        original.len() - 40,
    ] {
        let mut bad = original.clone();
        bad[at] ^= 1;
        write(&bad);
        let err = acme.get_bytes(&d1).unwrap_err();
        assert!(
            matches!(err, StoreError::Tampered(d) if d == d1),
            "{at}: {err}"
        );
        assert!(err.to_string().contains(&d1.to_string()));
        let dest = dir.path().join("dest");
        assert!(acme.get_to_file(&d1, &dest).is_err());
        assert!(!dest.exists(), "nothing is written from a refused blob");
    }
    // A chunk dropped (the trailer kept).
    let mut short = original[..original.len() - TRAILER - 4 * TAG - CHUNK].to_vec();
    short.extend_from_slice(&original[original.len() - TRAILER - 4 * TAG..]);
    write(&short);
    assert!(matches!(acme.get_bytes(&d1), Err(StoreError::Tampered(_))));
    // Another blob of the tenant under this one's address: it opens, but is other content.
    write(&fs::read(sealed_file(&local, "acme", &d2)).unwrap());
    assert!(
        matches!(acme.get_bytes(&d1), Err(StoreError::Corrupted { expected, .. }) if expected == d1)
    );
    // A damaged blob is dropped, so the next put of its content stores it again.
    assert!(acme.discard_corrupted(&d1).unwrap());
    assert!(!acme.contains(&d1));
    assert_eq!(acme.put_bytes(&one).unwrap(), d1);
    assert_eq!(acme.get_bytes(&d1).unwrap(), one);
}

impl SealedStore {
    fn discard_all_for_test(&self, address: &Digest) {
        self.objects.drop_sealed(&self.ns, address).unwrap();
    }
}

#[test]
fn a_namespace_keeps_no_new_blob_past_its_limit_and_its_bytes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cas = dir.path().join("cas");
    let (local, acme, globex) = stores(&cas);
    let small = acme.put_bytes(&content(1000)).unwrap();
    let kept = local.sealed_bytes("acme").unwrap();
    assert_eq!(
        kept,
        fs::metadata(sealed_file(&local, "acme", &small))
            .unwrap()
            .len()
    );
    acme.set_limit(Some(kept + 2000));
    // Room for one more small blob; the same content again costs nothing.
    let second = acme.put_bytes(&content(1500)).unwrap();
    assert_eq!(acme.put_bytes(&content(1000)).unwrap(), small);
    let kept = local.sealed_bytes("acme").unwrap();
    // A file handed over that does not fit: refused, not kept, and gone from the workspace.
    let big = dir.path().join("big");
    fs::write(&big, content(5 * CHUNK)).unwrap();
    let err = acme.put_owned(&big).unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded(_)), "{err}");
    assert!(err.to_string().contains("tenant `acme` may keep"), "{err}");
    assert!(!big.exists());
    assert!(matches!(
        acme.put_bytes(&content(3000)),
        Err(StoreError::QuotaExceeded(_))
    ));
    assert_eq!(local.sealed_bytes("acme").unwrap(), kept);
    // Another namespace is not bounded by it, nor counted in it.
    globex.put_bytes(&content(3000)).unwrap();
    assert_eq!(local.sealed_bytes("acme").unwrap(), kept);
    // A dropped blob no longer counts; a store opened afresh counts what is on disk.
    acme.discard_all_for_test(&second);
    let after = local.sealed_bytes("acme").unwrap();
    assert!(after < kept);
    assert_eq!(
        LocalStore::open(&cas)
            .unwrap()
            .sealed_bytes("acme")
            .unwrap(),
        after
    );
}
