use super::tree::{self, Entry, Tree};
use super::*;
use std::os::unix::fs::PermissionsExt;

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path().join("cas")).unwrap();
    (dir, s)
}

fn blob_files(root: &Path) -> usize {
    walk(&root.join("cas/blobs"))
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk(&p) } else { 1 })
        .sum()
}

#[test]
fn identical_content_is_stored_once_and_no_temporary_files_remain() {
    let (dir, s) = store();
    let f = dir.path().join("f");
    std::fs::write(&f, b"same bytes").unwrap();
    let a = s.put_file(&f).unwrap();
    let b = s.put_bytes(b"same bytes").unwrap();
    let c = s.put_file(&f).unwrap();
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(a, Digest::of(b"same bytes"));
    assert_eq!(blob_files(dir.path()), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("cas/tmp"))
            .unwrap()
            .count(),
        0,
        "temp files are renamed or removed"
    );
    assert_eq!(s.get_bytes(&a).unwrap(), b"same bytes");
}

#[test]
fn corrupted_blobs_are_detected_on_every_read_and_never_served() {
    let (dir, s) = store();
    let d = s.put_bytes(b"precious").unwrap();
    let path = s.blob_path(&d);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, b"tampered").unwrap();
    let bad = Digest::of(b"tampered");
    for err in [
        s.get_bytes(&d).unwrap_err(),
        s.verify(&d).unwrap_err(),
        s.get_to_file(&d, &dir.path().join("out")).unwrap_err(),
    ] {
        match err {
            StoreError::Corrupted { expected, actual } => assert_eq!((expected, actual), (d, bad)),
            other => panic!("expected corruption, got {other}"),
        }
    }
    assert!(
        !dir.path().join("out").exists(),
        "nothing is written when verification fails"
    );
    let msg = s.get_bytes(&d).unwrap_err().to_string();
    assert!(msg.contains(&d.to_string()), "{msg}");
    assert!(matches!(
        s.get_bytes(&Digest::of(b"absent")),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn trees_round_trip_with_executable_bits_and_internal_symlinks() {
    let (dir, s) = store();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("readme"), "hi").unwrap();
    std::fs::create_dir(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("bin/run", src.join("link")).unwrap();
    let (d, stats) = tree::put_tree(&s, &src).unwrap();
    assert_eq!(stats.files, 2);
    // The same content yields the same digest, wherever it lives.
    let copy = dir.path().join("copy");
    tree::materialize(&s, &d, &copy).unwrap();
    assert_eq!(tree::put_tree(&s, &copy).unwrap().0, d);
    assert_ne!(
        std::fs::metadata(copy.join("bin/run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100,
        0
    );
    assert_eq!(
        std::fs::metadata(copy.join("readme"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100,
        0
    );
    assert_eq!(
        std::fs::read_link(copy.join("link")).unwrap(),
        Path::new("bin/run")
    );
    assert!(copy.join("empty").is_dir());
    // Changing one byte changes the digest.
    std::fs::write(copy.join("readme"), "ho").unwrap();
    assert_ne!(tree::put_tree(&s, &copy).unwrap().0, d);
    assert_eq!(tree::verify(&s, &d).unwrap().files, 2);
}

#[test]
fn symlinks_leaving_the_tree_are_rejected() {
    let (dir, s) = store();
    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("up", "../outside"),
        ("deep", "sub/../../outside"),
    ] {
        let src = dir.path().join(format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::os::unix::fs::symlink(target, src.join("l")).unwrap();
        let err = tree::put_tree(&s, &src).unwrap_err().to_string();
        assert!(err.contains("leads outside the artifact"), "{name}: {err}");
    }
    // A link from a subdirectory back up to a sibling stays inside and is fine.
    let ok = dir.path().join("ok");
    std::fs::create_dir_all(ok.join("a")).unwrap();
    std::fs::write(ok.join("b"), "b").unwrap();
    std::os::unix::fs::symlink("../b", ok.join("a/l")).unwrap();
    tree::put_tree(&s, &ok).unwrap();
}

#[test]
fn crafted_trees_with_traversal_names_are_refused() {
    let (dir, s) = store();
    let blob = s.put_bytes(b"x").unwrap();
    for name in ["..", "../escape", "a/b", ""] {
        let t = Tree {
            sluice_tree: 1,
            entries: vec![Entry::File {
                name: name.into(),
                digest: blob,
                size: 1,
                executable: false,
            }],
        };
        let d = s.put_bytes(&serde_json::to_vec(&t).unwrap()).unwrap();
        let err = tree::materialize(&s, &d, &dir.path().join("dest"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsafe entry name"), "{name:?}: {err}");
    }
    assert!(!dir.path().join("escape").exists());
    let t = Tree {
        sluice_tree: 1,
        entries: vec![Entry::Symlink {
            name: "l".into(),
            target: "../../x".into(),
        }],
    };
    let d = s.put_bytes(&serde_json::to_vec(&t).unwrap()).unwrap();
    assert!(tree::materialize(&s, &d, &dir.path().join("dest2")).is_err());
}

/// Anonymous (heap) memory of this process, in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_large_file_is_stored_and_restored_with_bounded_memory() {
    const SIZE: u64 = 768 << 20;
    let (dir, s) = store();
    let big = dir.path().join("big");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for i in 0..(SIZE >> 20) {
            f.write_all(&chunk[..chunk.len() - 1]).unwrap();
            f.write_all(&[i as u8]).unwrap();
        }
    }
    let before = rss_anon();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_anon(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let d = s.put_file(&big).unwrap();
    s.get_to_file(&d, &dir.path().join("restored")).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("restored"))
            .unwrap()
            .len(),
        SIZE
    );
    assert_eq!(local::hash_file(&dir.path().join("restored")).unwrap().0, d);
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "anonymous memory grew by {} MiB for a {} MiB file",
        growth >> 20,
        SIZE >> 20
    );
}

/// An output nested deeper than the limit is refused with the path where it went too deep,
/// before any path grows long (a guest's 20,000 levels failed with ENAMETOOLONG).
#[test]
fn an_output_nested_deeper_than_the_limit_is_refused_with_its_path() {
    let (dir, s) = store();
    let root = dir.path().join("out");
    let mut deep = root.clone();
    for _ in 0..tree::MAX_DEPTH + 1 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = tree::put_tree(&s, &root).unwrap_err().to_string();
    assert!(
        err.contains("nested more than 64 directories deep"),
        "{err}"
    );
    // At the limit it is fine.
    std::fs::remove_dir(&deep).unwrap();
    tree::put_tree(&s, &root).unwrap();
}

/// Bounds on entries, bytes (a sparse file's size counts, not its blocks) and time.
#[test]
fn an_output_beyond_its_bounds_is_refused_before_it_is_read() {
    let (dir, s) = store();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(1 << 40).unwrap();
    let started = std::time::Instant::now();
    let err = tree::put_tree(&s, &root).unwrap_err().to_string();
    assert!(err.contains("the output is too large"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    std::fs::remove_file(root.join("sparse")).unwrap();
    for i in 0..5 {
        std::fs::write(root.join(format!("f{i}")), b"x").unwrap();
    }
    let few = tree::Bounds {
        entries: 4,
        ..tree::Bounds::default()
    };
    let err = tree::put_tree_bounded(&s, &root, tree::Transfer::Copy, &few)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 4 files and directories"), "{err}");
    let late = tree::Bounds {
        deadline: Some(std::time::Instant::now()),
        ..tree::Bounds::default()
    };
    let err = tree::put_tree_bounded(&s, &root, tree::Transfer::Copy, &late)
        .unwrap_err()
        .to_string();
    assert!(err.contains(tree::DEADLINE_PASSED), "{err}");
}

/// A corrupted blob is replaced by the next put of its content, whichever way it is put
/// (a re-run deduplicated onto the corrupted copy and failed again).
#[test]
fn a_corrupted_blob_is_replaced_by_the_next_put_of_its_content() {
    let (dir, s) = store();
    let corrupt = |d: &Digest| {
        let path = s.blob_path(d);
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_mode(0o644);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        assert!(s.get_bytes(d).is_err());
    };
    let d = s.put_bytes(b"precious").unwrap();
    corrupt(&d);
    s.put_bytes(b"precious").unwrap();
    assert_eq!(s.get_bytes(&d).unwrap(), b"precious");
    let f = dir.path().join("f");
    corrupt(&d);
    std::fs::write(&f, b"precious").unwrap();
    s.put_file(&f).unwrap();
    assert_eq!(s.get_bytes(&d).unwrap(), b"precious");
    corrupt(&d);
    s.put_owned(&f).unwrap();
    assert_eq!(s.get_bytes(&d).unwrap(), b"precious");
}
