//! Compiles the web UI's built files (`ui/dist`, made by
//! `scripts/build-ui.sh`) into the binary: `$OUT_DIR/ui_assets.rs` lists
//! each file with `include_bytes!`, and its `.gz` copy when there is one.
//! Without `ui/dist`, a page saying how to build the UI stands in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sheaf</title></head>\
<body><h1>Sheaf</h1><p>This binary was built without its web UI. Build it with <code>scripts/build-ui.sh</code> \
and build Sheaf again (<code>scripts/setup.sh</code> does both). The API and the CLI work without it.</p></body></html>";

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_none_or(|e| e != "gz") {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../../ui/dist");
    let dist = dist.canonicalize().unwrap_or(dist);
    println!("cargo:rerun-if-changed={}", dist.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut found = Vec::new();
    if dist.join("index.html").is_file() {
        files(&dist, &mut found);
    }
    let mut code = String::from("static ASSETS: &[Asset] = &[\n");
    if found.is_empty() {
        println!("cargo:warning=ui/dist not found: the web UI is left out (run scripts/build-ui.sh, then build again)");
        let page = out_dir.join("placeholder.html");
        std::fs::write(&page, PLACEHOLDER).expect("write placeholder");
        let _ = writeln!(code, "    Asset {{ path: \"/index.html\", body: include_bytes!({:?}), gzip: None }},", page);
    }
    for f in &found {
        let rel = f.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        let gz = PathBuf::from(format!("{}.gz", f.display()));
        let gzip = if gz.is_file() { format!("Some(include_bytes!({gz:?}))") } else { "None".into() };
        let _ =
            writeln!(code, "    Asset {{ path: {:?}, body: include_bytes!({f:?}), gzip: {gzip} }},", format!("/{rel}"));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("ui_assets.rs"), code).expect("write ui_assets.rs");
}
