//! Loads the shipped example configs and the fixtures under `tests/fixtures/config/`, so the
//! examples cannot rot and every rule has a file showing the message a user would see.

use std::path::PathBuf;

use crate::config::load;

/// The `*.toml` files in `dir` (relative to the crate root), sorted; fails if there are none,
/// so a moved directory cannot make the tests pass vacuously.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no *.toml files", dir.display());
    files
}

#[test]
fn valid_files_load() {
    let mut files = toml_files("config");
    files.extend(toml_files("tests/fixtures/config/valid"));
    for file in files {
        if let Err(e) = load(&file) {
            panic!("{} should load:\n{e}", file.display());
        }
    }
}

/// Each invalid file starts with one or more `# expect: SUBSTRING` lines; the error's
/// Display must start with the file's path, have one line per `# expect:` line and contain
/// every substring.
#[test]
fn invalid_files_fail_with_expected_message() {
    // Every mismatch is collected so one run shows them all.
    let mut failures = Vec::new();
    for file in toml_files("tests/fixtures/config/invalid") {
        let text = std::fs::read_to_string(&file).expect("readable fixture");
        let expects: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty() && expects.iter().all(|e| !e.trim().is_empty()),
            "{}: first line must be `# expect: <substring>`",
            file.display()
        );
        let message = match load(&file) {
            Ok(_) => {
                failures.push(format!("{} should fail to load", file.display()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        if !message.starts_with(&file.display().to_string()) {
            failures.push(format!("message does not start with the path:\n{message}"));
        }
        // One mistake, one message: extra lines would mean a cascade or a sloppy fixture.
        if message.lines().count() != expects.len() {
            failures.push(format!(
                "expected {} line(s) of errors, got:\n{message}",
                expects.len()
            ));
        }
        for expect in expects {
            if !message.contains(expect) {
                failures.push(format!("message lacks {expect:?}:\n{message}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
