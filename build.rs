//! Build-time settings for the binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    relr();
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
