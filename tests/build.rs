//! `cargo xtask build` and `cargo xtask repro` end to end (issue 2).

mod support;

use std::fs;
use std::process::Command;

use support::{Fixture, image, run, sha256_hex_of_file};
use xtask::repro::layout_fingerprint;

/// A files-only image with three layers, used where no Rust payload is needed.
const THREE_LAYERS: &str = r#"
name = "files"
repository = "test/files"
tags = ["v1"]

[[layer]]
name = "one"
files = [{ src = "data/one.txt", dest = "/srv/one.txt" }]

[[layer]]
name = "two"
files = [{ src = "data/tree", dest = "/srv/tree", mode = "0640", owner = "10:20" }]
symlinks = [{ dest = "/srv/link", target = "tree/a.txt" }]

[[layer]]
name = "three"
files = [{ src = "data/run.sh", dest = "/usr/bin/run" }]
dirs = [{ dest = "/var/cache/app", mode = "0700", owner = "65532:65532" }]

[config]
entrypoint = ["/usr/bin/run"]
"#;

fn three_layers() -> Fixture {
    let f = Fixture::with_files(
        "files",
        &[
            ("images/files/image.toml", THREE_LAYERS),
            ("images/files/data/one.txt", "one\n"),
            ("images/files/data/tree/a.txt", "a\n"),
            ("images/files/data/tree/sub/b.txt", "b\n"),
            ("images/files/data/run.sh", "#!/bin/sh\necho run\n"),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        f.path("images/files/data/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.commit("exec bit");
    f
}

fn layer_digests(report: &serde_json::Value, name: &str) -> Vec<String> {
    image(report, name)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn same_commit_twice_gives_byte_identical_layouts() {
    let f = Fixture::copy_of_repo("twice");
    let first = f.build_json(&["hello"]);
    let layout = f.path("target/images/hello");
    let a = layout_fingerprint(&layout).unwrap();
    // A clean second build: no cache, no previous layout.
    fs::remove_dir_all(f.path("target")).unwrap();
    let second = f.build_json(&["hello"]);
    let b = layout_fingerprint(&layout).unwrap();
    assert_eq!(
        a, b,
        "every blob, index.json and oci-layout must be identical"
    );
    assert!(a.contains_key("index.json") && a.contains_key("oci-layout"));
    assert_eq!(
        image(&first, "hello")["manifest_digest"],
        image(&second, "hello")["manifest_digest"]
    );
    // The reported digests are the digests of the files (checked with sha256sum).
    let m = image(&first, "hello")["manifest_digest"].as_str().unwrap();
    assert_eq!(
        sha256_hex_of_file(&layout.join("blobs/sha256").join(&m[7..])),
        m
    );
    for l in image(&first, "hello")["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(
            sha256_hex_of_file(&layout.join("blobs/sha256").join(&d[7..])),
            d
        );
    }
}

#[test]
fn one_changed_byte_changes_only_its_layer() {
    let f = three_layers();
    let before = f.build_json(&[]);
    f.write("images/files/data/tree/sub/b.txt", "c\n");
    let after = f.build_json(&[]);
    let (b, a) = (
        layer_digests(&before, "files"),
        layer_digests(&after, "files"),
    );
    assert_eq!(b[0], a[0], "layer one is untouched");
    assert_ne!(b[1], a[1], "layer two holds the changed file");
    assert_eq!(b[2], a[2], "layer three is untouched");
    assert_ne!(
        image(&before, "files")["manifest_digest"],
        image(&after, "files")["manifest_digest"]
    );
    // Only the changed layer was encoded again.
    assert_eq!(image(&after, "files")["cache"]["hits"], 2);
    assert_eq!(image(&after, "files")["cache"]["misses"], 1);
}

#[test]
fn warm_rebuild_reads_and_compresses_nothing() {
    let f = three_layers();
    let cold = f.build_json(&[]);
    assert_eq!(image(&cold, "files")["cache"]["misses"], 3);
    assert!(
        image(&cold, "files")["cache"]["bytes_read"]
            .as_u64()
            .unwrap()
            > 0
    );
    let warm = f.build_json(&[]);
    let c = &image(&warm, "files")["cache"];
    assert_eq!(c["hits"], 3, "{warm}");
    assert_eq!(c["misses"], 0, "{warm}");
    assert_eq!(c["bytes_read"], 0, "no packaged file is read again: {warm}");
    assert_eq!(c["bytes_compressed"], 0, "nothing is recompressed: {warm}");
    assert_eq!(
        image(&cold, "files")["manifest_digest"],
        image(&warm, "files")["manifest_digest"]
    );
}

#[test]
fn skopeo_and_umoci_accept_the_layout() {
    let f = three_layers();
    let report = f.build_json(&[]);
    let img = image(&report, "files");
    let layout = f.path("target/images/files");
    let oci = format!("oci:{}", layout.display());

    let out = run(Command::new("skopeo").args(["inspect", "--raw", &oci]));
    assert!(
        out.status.success(),
        "skopeo inspect --raw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw_path = f.path("manifest.raw");
    fs::write(&raw_path, &out.stdout).unwrap();
    assert_eq!(
        sha256_hex_of_file(&raw_path),
        img["manifest_digest"].as_str().unwrap()
    );

    let out = run(Command::new("skopeo").args(["inspect", &oci]));
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["Digest"], img["manifest_digest"]);
    let layers: Vec<&str> = inspected["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, layer_digests(&report, "files"));

    let bundle = f.path("bundle");
    let out = run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    let mut found = Vec::new();
    for e in walkdir::WalkDir::new(&rootfs)
        .min_depth(1)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(e.path()).unwrap();
        let kind = if m.is_dir() {
            "d"
        } else if m.file_type().is_symlink() {
            "l"
        } else {
            "f"
        };
        found.push(format!(
            "{kind} {:o} /{}",
            m.mode() & 0o7777,
            e.path().strip_prefix(&rootfs).unwrap().display()
        ));
    }
    // Exactly the declared files, with the declared (or defaulted) modes.
    // (umoci --rootless maps owners to the caller, so owners are checked in
    // the tar headers by the unit tests; modes survive.)
    assert_eq!(
        found,
        [
            "d 755 /srv",
            "l 777 /srv/link",
            "f 644 /srv/one.txt",
            "d 755 /srv/tree",
            "f 640 /srv/tree/a.txt",
            "d 755 /srv/tree/sub",
            "f 640 /srv/tree/sub/b.txt",
            "d 755 /usr",
            "d 755 /usr/bin",
            "f 755 /usr/bin/run",
            "d 755 /var",
            "d 755 /var/cache",
            "d 700 /var/cache/app",
        ]
    );
    assert_eq!(
        fs::read_link(rootfs.join("srv/link")).unwrap().to_str(),
        Some("tree/a.txt")
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/tree/sub/b.txt")).unwrap(),
        "b\n"
    );
}
