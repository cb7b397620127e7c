//! (d) The artifact store against what a user would run on the same bytes: `b3sum` for the
//! paths that only hash (a put of an action's output, a verified get into a read-only input),
//! `cp` then `b3sum` for the paths that must copy (the caller keeps its file; a writable input
//! of an action with host programs).
//!
//! Each baseline hashes or copies a file in the same state as the path it is compared with —
//! a file just written for a put, the stored blob for a get — and every round measures each
//! path next to its baseline (which goes first alternates), so load that comes and goes (other
//! processes, page-cache eviction) meets both alike; dirty pages are written back before each
//! measure. The best of [`ROUNDS`] is kept for each.
use sluice_engine::artifacts::{
    BlobStore, Digest, LocalStore, SealedObjects, SealedStore, TenantKey,
};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

/// Time `f` after writing back what earlier measures left dirty: each round writes several
/// GiB, and the kernel throttles whichever writer comes next once too much waits for the disk.
fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    rustix::fs::sync();
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// (path, baseline), measured in the order the round says.
fn both(
    baseline_first: bool,
    baseline: impl FnOnce() -> anyhow::Result<()>,
    path: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    Ok(if baseline_first {
        let b = timed(baseline)?;
        (timed(path)?, b)
    } else {
        let p = timed(path)?;
        (p, timed(baseline)?)
    })
}

fn b3sum(file: &Path) -> anyhow::Result<()> {
    let out = Command::new("b3sum").arg(file).output().map_err(|e| {
        anyhow::anyhow!("b3sum: {e} (install it: apt-get install b3sum, or cargo install b3sum)")
    })?;
    anyhow::ensure!(out.status.success(), "b3sum failed");
    Ok(())
}

fn cp(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp").arg(from).arg(to).status()?;
    anyhow::ensure!(status.success(), "cp failed");
    Ok(())
}

/// `mib` MiB of pseudo-random bytes (nothing compresses or deduplicates them).
fn write_random(file: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        f.write_all(&chunk)?;
    }
    Ok(())
}

/// Best times of one path and its baseline.
#[derive(Clone, Copy)]
struct Pair {
    path: Duration,
    baseline: Duration,
}

impl Pair {
    fn new() -> Self {
        Pair {
            path: Duration::MAX,
            baseline: Duration::MAX,
        }
    }
    fn keep(&mut self, path: Duration, baseline: Duration) {
        self.path = self.path.min(path);
        self.baseline = self.baseline.min(baseline);
    }
    fn ratio(&self) -> f64 {
        self.baseline.as_secs_f64() / self.path.as_secs_f64()
    }
}

pub fn artifacts(dir: &Path, mib: u64) -> anyhow::Result<bool> {
    let file = dir.join("big.bin");
    write_random(&file, mib)?;
    let gets = LocalStore::open(dir.join("get-store"))?;
    let digest: Digest = gets.put_file(&file)?;
    let blob = gets.blob_path(&digest);
    let dest = dir.join("restored.bin");
    let (mut put_move, mut get_link, mut put_copy, mut get_copy) =
        (Pair::new(), Pair::new(), Pair::new(), Pair::new());
    for round in 0..ROUNDS {
        let first = round % 2 == 0;
        // put of a file the engine owns (an action's output): hashed in place and moved in.
        // Its baseline hashes another copy written the same way, just before.
        let dir = tempfile::tempdir_in(dir)?;
        let store = LocalStore::open(dir.path().join("store"))?;
        let (staged, twin) = (dir.path().join("staged.bin"), dir.path().join("twin.bin"));
        std::fs::copy(&file, &twin)?;
        std::fs::copy(&file, &staged)?;
        let (p, b) = both(
            first,
            || b3sum(&twin),
            || {
                anyhow::ensure!(store.put_owned(&staged)? == digest, "digests differ");
                Ok(())
            },
        )?;
        put_move.keep(p, b);

        // Verified get into a read-only input: re-hash the blob, hard-link it.
        let _ = std::fs::remove_file(&dest);
        let (p, b) = both(
            first,
            || b3sum(&blob),
            || Ok(gets.link_to_file(&digest, &dest)?),
        )?;
        get_link.keep(p, b);

        // put, copy semantics (the source stays the caller's), into a store without it.
        let fresh = LocalStore::open(dir.path().join("copy-store"))?;
        let copied = dir.path().join("cp.bin");
        let (p, b) = both(
            first,
            || {
                cp(&file, &copied)?;
                b3sum(&copied)
            },
            || {
                anyhow::ensure!(fresh.put_file(&file)? == digest, "digests differ");
                Ok(())
            },
        )?;
        put_copy.keep(p, b);

        // Verified get, copy: a writable input of an action with host programs.
        let _ = std::fs::remove_file(&dest);
        let copied = dir.path().join("cp2.bin");
        let (p, b) = both(
            first,
            || {
                cp(&blob, &copied)?;
                b3sum(&copied)
            },
            || Ok(gets.get_to_file(&digest, &dest)?),
        )?;
        get_copy.keep(p, b);
    }
    let bytes = (mib << 20) as f64;
    let gibs = |d: Duration| bytes / d.as_secs_f64() / (1u64 << 30) as f64;
    let row = |what: &str, baseline: &str, p: &Pair, target: &str| {
        println!(
            "| {what} | {:.0} ms | {:.2} GiB/s | {baseline}: {:.0} ms | {:.2}×{target} |",
            p.path.as_secs_f64() * 1e3,
            gibs(p.path),
            p.baseline.as_secs_f64() * 1e3,
            p.ratio()
        );
    };
    println!("\n## Artifact store ({mib} MiB file, best of {ROUNDS} interleaved rounds)\n");
    println!("| measure | time | throughput | baseline on the same bytes | vs baseline |");
    println!("|---|---|---|---|---|");
    row(
        "put, engine path (action output: hash in place, move in)",
        "`b3sum` of a file written the same way",
        &put_move,
        " — target ≥ 0.7×",
    );
    row(
        "verified get, engine path (read-only input: verify, hard link)",
        "`b3sum` of the blob",
        &get_link,
        " — target ≥ 0.7×",
    );
    row(
        "put, copy (the caller keeps its file)",
        "`cp` + `b3sum` of the copy",
        &put_copy,
        "",
    );
    row(
        "verified get, copy (writable input of a process-granted action)",
        "`cp` + `b3sum` of the copy",
        &get_copy,
        "",
    );
    let plain = put_move.ratio() >= 0.7 && get_link.ratio() >= 0.7;
    let sealed = sealed(dir, &file, mib)?;
    Ok(plain && sealed)
}

/// (d') Artifacts sealed at rest (the service's store, `sluice run --encrypt`): the same
/// engine paths through a tenant's [`SealedStore`] — an action's output sealed where it lies,
/// a verified get decrypting into a new file — against `b3sum` on the same bytes; then the
/// growth of peak RSS while a file four times as large is sealed and restored.
fn sealed(dir: &Path, file: &Path, mib: u64) -> anyhow::Result<bool> {
    let key = TenantKey::derive(&[7; 32]); // any key: the work is the same
    let objects = Arc::new(LocalStore::open(dir.join("sealed-store"))?);
    let store = SealedStore::new(objects.clone(), "bench", key.clone());
    let address = store.put_file(file)?;
    let at_rest = objects.sealed_path("bench", &address)?;
    let dest = dir.join("unsealed.bin");
    let (mut put, mut get) = (Pair::new(), Pair::new());
    for round in 0..ROUNDS {
        let first = round % 2 == 0;
        let dir = tempfile::tempdir_in(dir)?;
        let fresh = SealedStore::new(
            Arc::new(LocalStore::open(dir.path().join("store"))?),
            "bench",
            key.clone(),
        );
        let (staged, twin) = (dir.path().join("staged.bin"), dir.path().join("twin.bin"));
        std::fs::copy(file, &twin)?;
        std::fs::copy(file, &staged)?;
        let (p, b) = both(
            first,
            || b3sum(&twin),
            || {
                anyhow::ensure!(fresh.put_owned(&staged)? == address, "addresses differ");
                Ok(())
            },
        )?;
        put.keep(p, b);
        let _ = std::fs::remove_file(&dest);
        let (p, b) = both(
            first,
            || b3sum(&at_rest),
            || Ok(store.get_to_file(&address, &dest)?),
        )?;
        get.keep(p, b);
    }
    let _ = std::fs::remove_file(&dest);

    // Peak RSS while a file 4× as large goes in and comes out.
    let big = dir.join("sealed-rss.bin");
    write_random(&big, 4 * mib)?;
    let before = rss_kib()?;
    reset_peak_rss();
    let big_address = store.put_owned(&big)?;
    store.get_to_file(&big_address, &big)?;
    let growth_mib = (peak_rss_kib()?.saturating_sub(before)) as f64 / 1024.0;
    let _ = std::fs::remove_file(&big);

    let bytes = (mib << 20) as f64;
    let gibs = |d: Duration| bytes / d.as_secs_f64() / (1u64 << 30) as f64;
    println!(
        "\n## Artifacts sealed at rest ({mib} MiB file, best of {ROUNDS} interleaved rounds)\n"
    );
    println!("| measure | time | throughput | baseline on the same bytes | vs baseline |");
    println!("|---|---|---|---|---|");
    for (what, baseline, p) in [
        (
            "sealed put, engine path (action output: keyed hash, sealed in place, moved in)",
            "`b3sum` of a file written the same way",
            &put,
        ),
        (
            "verified sealed get (every tag and the address checked, decrypted into a new file)",
            "`b3sum` of the sealed blob",
            &get,
        ),
    ] {
        println!(
            "| {what} | {:.0} ms | {:.2} GiB/s | {baseline}: {:.0} ms | {:.2}× — target ≥ 0.5× |",
            p.path.as_secs_f64() * 1e3,
            gibs(p.path),
            p.baseline.as_secs_f64() * 1e3,
            p.ratio()
        );
    }
    println!(
        "\nPeak RSS growth while sealing and restoring {} MiB: {growth_mib:.1} MiB (target ≤ 64 MiB)",
        4 * mib
    );
    Ok(put.ratio() >= 0.5 && get.ratio() >= 0.5 && growth_mib <= 64.0)
}

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/self/status"))
}

fn rss_kib() -> anyhow::Result<u64> {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> anyhow::Result<u64> {
    status_kib("VmHWM:")
}

/// Start the peak (VmHWM) again from the current RSS (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
