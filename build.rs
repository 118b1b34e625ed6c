//! Build-time settings for the two binaries, `vantage` and `vantage-agent`.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    relr();
    build_id();
}

/// Link the binaries with packed relative relocations (DT_RELR) on Linux/glibc.
///
/// Why: a position-independent binary carries one 24-byte relocation per
/// pointer in its read-only data, and the dynamic loader reads all of them at
/// start. For `vantage` that was 1 MB of `.rela.dyn` read at every start and
/// kept resident for the agent's life; packed, it is 16 kB. Needs GNU ld >=
/// 2.38 or lld at build time, and glibc >= 2.36 at run time (the .deb says
/// so in `depends`: dpkg-shlibdeps does not derive it from the binary).
fn relr() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// `VANTAGE_BUILD_ID`: a hash of the sources, so that `vantage run` hands over
/// only to a `vantage-agent` built from the same code (a `cargo build --bin
/// vantage` leaves an older agent binary beside it).
fn build_id() {
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut files = Vec::new();
    collect(Path::new("src"), &mut files);
    files.push("Cargo.toml".into());
    files.push("Cargo.lock".into());
    files.sort();
    // FNV-1a, 64 bits: stable across compiler versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for b in f.to_string_lossy().as_bytes().iter().chain(&[0]).chain(&bytes) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=VANTAGE_BUILD_ID={}-{h:016x}", std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}
