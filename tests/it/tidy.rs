//! Source-level invariants that are easiest to state as "this text does not appear".

use std::path::Path;

fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    out
}

/// Architecture invariant: no code path deletes an archived object, overwrites one, or
/// shortens or bypasses a retention. The S3 operations that could are never called.
#[test]
fn no_code_path_deletes_or_unlocks_archived_objects() {
    let forbidden = [
        ".delete_object(",
        ".delete_objects(",
        ".put_object_retention(",
        ".put_object_legal_hold(",
        ".put_bucket_lifecycle",
        ".put_object_lock_configuration(",
        ".bypass_governance_retention(",
        ".create_multipart_upload(",
        ".copy_object(",
    ];
    for (path, text) in sources() {
        // The bucket check's delete probe: only a canary key, only the version it just wrote.
        if path.ends_with("src/store/canary.rs") {
            assert!(text.contains("layout.is_canary(&canary.key)"));
            assert_eq!(text.matches(".delete_object(").count(), 1);
            for f in forbidden
                .iter()
                .filter(|f| !matches!(**f, ".delete_object(" | ".bypass_governance_retention("))
            {
                assert!(!text.contains(f), "{path} calls {f}");
            }
            continue;
        }
        for f in forbidden {
            assert!(!text.contains(f), "{path} calls {f}");
        }
    }
}

/// The store trait offers no way to remove or replace anything.
#[test]
fn the_store_trait_has_no_delete() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/mod.rs"))
            .unwrap();
    let start = text.find("pub trait WormStore").unwrap();
    let end = start + text[start..].find("\n}\n").unwrap();
    let trait_body = &text[start..end];
    for word in ["delete", "remove", "overwrite", "replace", "retention("] {
        assert!(
            !trait_body.contains(&format!("fn {word}")),
            "WormStore has fn {word}"
        );
    }
    assert_eq!(
        trait_body.matches("async fn ").count(),
        11,
        "put_sealed, head, get, get_range, digest, list, list_dirs, versions, versions_of, bucket_lock, probe_canary"
    );
    // The probe takes a canary, which only the canary module builds from a canary key.
    assert!(trait_body.contains("canary: &canary::Canary"));
}

/// Object keys are built in exactly one module.
#[test]
fn object_keys_are_built_only_in_layout() {
    for (path, text) in sources() {
        if path.ends_with("layout.rs") {
            continue;
        }
        for pattern in ["\"segments/", "\"manifests/", "dt={"] {
            assert!(
                !text.contains(pattern),
                "{path} builds keys ({pattern}); use layout.rs"
            );
        }
    }
}
