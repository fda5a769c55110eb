//! `cargo xtask build` and `cargo xtask repro` end to end (issue 2).

use std::fs;
use std::process::Command;

use xtask::lane::repro::layout_fingerprint;

use crate::support::{
    self, Fixture, column, embed_build_path, image, run_ok, sha256_hex_of_file, strings,
};

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
    column(&image(report, name)["layers"], "digest")
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
fn files_git_wrote_again_are_hashed_not_compressed_again() {
    // A branch switch, a new clone into the same target/, a CI cache
    // restored into a fresh checkout: the files are the same, their
    // fingerprints (inode, mtime, ctime) are not.
    let f = three_layers();
    let cold = f.build_json(&[]);
    fs::remove_dir_all(f.path("images/files/data")).unwrap();
    run_ok(Command::new("git").arg("-C").arg(f.path("")).args([
        "checkout",
        "--",
        "images/files/data",
    ]));
    let again = f.build_json(&[]);
    let c = &image(&again, "files")["cache"];
    assert_eq!(c["hits"], 3, "{again}");
    assert_eq!(c["misses"], 0, "{again}");
    assert_eq!(c["bytes_compressed"], 0, "nothing is recompressed: {again}");
    assert!(
        c["bytes_read"].as_u64().unwrap() > 0,
        "the files were hashed: {again}"
    );
    assert_eq!(
        image(&cold, "files")["manifest_digest"],
        image(&again, "files")["manifest_digest"]
    );
    // A file whose content changed is still built again, alone.
    fs::write(f.path("images/files/data/one.txt"), "changed\n").unwrap();
    let changed = f.build_json(&[]);
    let c = &image(&changed, "files")["cache"];
    assert_eq!(
        (c["hits"].as_u64(), c["misses"].as_u64()),
        (Some(2), Some(1)),
        "{changed}"
    );
}

#[test]
fn skopeo_and_umoci_accept_the_layout() {
    let f = three_layers();
    let report = f.build_json(&[]);
    let img = image(&report, "files");
    let layout = f.path("target/images/files");
    let oci = format!("oci:{}", layout.display());

    let out = run_ok(Command::new("skopeo").args(["inspect", "--raw", &oci]));
    let raw_path = f.path("manifest.raw");
    fs::write(&raw_path, &out.stdout).unwrap();
    assert_eq!(
        sha256_hex_of_file(&raw_path),
        img["manifest_digest"].as_str().unwrap()
    );

    let out = run_ok(Command::new("skopeo").args(["inspect", &oci]));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["Digest"], img["manifest_digest"]);
    assert_eq!(
        strings(&inspected["Layers"]),
        layer_digests(&report, "files")
    );

    let bundle = f.path("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
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

/// A layer of 64 MiB and more is compressed in blocks on every core: GNU
/// gzip reads it back to the tar of its diff_id, umoci unpacks the file,
/// and a rebuild from nothing (`--jobs 1`) gives the same layer. (That the
/// bytes do not depend on the number of threads is a unit test of
/// lane_core::layer.)
#[test]
fn a_large_layer_in_blocks_is_read_by_gzip_and_umoci() {
    let f = Fixture::with_files(
        "big-layer",
        &[(
            "images/big/image.toml",
            "name = \"big\"\nrepository = \"test/big\"\ntags = [\"v1\"]\n\n[[layer]]\nname = \"data\"\nfiles = [{ src = \"data\", dest = \"/data\" }]\n",
        )],
    );
    let size = lane_core::layer::BLOCKS_FROM as usize + 4321;
    let mut text = Vec::with_capacity(size);
    let mut i = 0u64;
    while text.len() < size {
        text.extend_from_slice(
            format!("line {i} of a large layer {}\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    text.truncate(size);
    fs::create_dir_all(f.path("images/big/data")).unwrap();
    fs::write(f.path("images/big/data/big.txt"), &text).unwrap();
    f.commit("a large layer");
    let report = f.build_json(&[]);
    let layer = &image(&report, "big")["layers"][0];
    let blob = f.path(&format!(
        "target/images/big/blobs/sha256/{}",
        layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    ));
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc < {} | sha256sum", blob.display())),
    );
    let tar_sha = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        format!("sha256:{}", tar_sha.split_whitespace().next().unwrap()),
        layer["diff_id"].as_str().unwrap()
    );
    let bundle = f.path("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:v1", f.path("target/images/big").display()))
            .arg(&bundle),
    );
    assert!(fs::read(bundle.join("rootfs/data/big.txt")).unwrap() == text);

    let _ = fs::remove_dir_all(f.path("target"));
    let one: serde_json::Value =
        serde_json::from_str(&f.ok(&["build", "--json", "--jobs", "1"])).unwrap();
    assert_eq!(image(&one, "big")["layers"][0], *layer);
}

/// Sets every file's mtime under `dir` to a different value.
fn touch_all(dir: &std::path::Path) {
    for (i, e) in walkdir::WalkDir::new(dir).into_iter().enumerate() {
        let e = e.unwrap();
        if e.file_type().is_file() && !e.path().components().any(|c| c.as_os_str() == ".git") {
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_500_000_000 + i as u64 * 7919);
            fs::File::options()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
}

#[test]
fn another_path_umask_and_mtimes_give_the_same_digest() {
    let a = Fixture::copy_of_repo("path-a");
    let first = a.build_json(&["hello"]);
    // A second checkout at another path, created under another umask, with
    // every mtime changed.
    let old = unsafe { libc::umask(0o077) };
    let b = Fixture::copy_of_repo("path-b-other-place");
    unsafe { libc::umask(old) };
    touch_all(&b.root);
    assert_ne!(a.root, b.root);
    let second = b.build_json(&["hello"]);
    assert_eq!(
        image(&first, "hello")["manifest_digest"],
        image(&second, "hello")["manifest_digest"]
    );
    assert_eq!(
        image(&first, "hello")["layers"],
        image(&second, "hello")["layers"]
    );
}

#[test]
fn repro_passes_on_the_workspace() {
    let f = Fixture::copy_of_repo("repro-ok");
    let out = f.ok(&["repro", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["reproducible"], true, "{report}");
    let hello = image(&report, "hello");
    assert_eq!(hello["first"], hello["second"]);
}

#[test]
fn repro_names_the_file_when_a_build_embeds_its_path() {
    let f = Fixture::copy_of_repo("repro-leak");
    embed_build_path(&f);
    let stderr = f.fails(&["repro", "hello"]);
    assert!(stderr.contains("not reproducible"), "{stderr}");
    assert!(
        stderr.contains("image hello: layer 2 of 3 differs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("first differing file /usr/local/bin/hello: size="),
        "{stderr}"
    );
}

/// Runs a build expected to fail and checks the error and that no layout,
/// complete or partial, was written.
fn bad_input(f: &Fixture, expect: &[&str]) {
    let stderr = f.fails(&["build"]);
    for e in expect {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches("error:").count(), 1, "one error:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let images = f.path("target/images");
    let left: Vec<_> = fs::read_dir(&images)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing may be left in target/images: {left:?}"
    );
}

/// Edits `rel` (`from` becomes `to`), checks the build is refused as in
/// [`bad_input`], then puts the file back.
fn refused_edit(f: &Fixture, rel: &str, from: &str, to: &str, expect: &[&str]) {
    let original = f.read(rel);
    f.edit(rel, from, to);
    bad_input(f, expect);
    f.write(rel, &original);
}

const FILES_TOML: &str = "images/files/image.toml";

#[test]
fn malformed_image_toml_is_refused_with_its_line() {
    let f = three_layers();
    refused_edit(
        &f,
        FILES_TOML,
        "tags = [\"v1\"]",
        "tags = [\"v1\"",
        &[
            "images/files/image.toml:6:1: invalid array",
            "see images/hello/image.toml",
        ],
    );
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let f = three_layers();
    refused_edit(
        &f,
        FILES_TOML,
        "[config]\n",
        "[config]\nentry_point = []\n",
        &[
            "images/files/image.toml:21:1: unknown field `entry_point`",
            "expected one of",
        ],
    );
}

#[test]
fn missing_source_file_is_refused() {
    let f = three_layers();
    fs::remove_file(f.path("images/files/data/one.txt")).unwrap();
    bad_input(
        &f,
        &[
            "images/files/image.toml:8:10: source data/one.txt of layer \"one\" cannot be read",
            "create it or fix src",
        ],
    );
}

#[test]
fn unknown_cargo_package_or_binary_is_refused() {
    let f = Fixture::copy_of_repo("unknown-bin");
    let toml = "images/hello/image.toml";
    refused_edit(
        &f,
        toml,
        "package = \"hello\", bin = \"hello\"",
        "package = \"nosuch\", bin = \"hello\"",
        &[
            "images/hello/image.toml: package \"nosuch\" is not a member of the cargo workspace",
            "members: hello, lane-core, xtask",
        ],
    );
    refused_edit(
        &f,
        toml,
        "bin = \"hello\"",
        "bin = \"helo\"",
        &["package \"hello\" has no binary \"helo\" (it has: hello)"],
    );
}

#[test]
fn destination_outside_the_image_root_is_refused() {
    let f = three_layers();
    refused_edit(
        &f,
        FILES_TOML,
        "dest = \"/srv/one.txt\"",
        "dest = \"../etc/one.txt\"",
        &["images/files/image.toml:8:41: destination \"../etc/one.txt\" leaves the image root"],
    );
    refused_edit(
        &f,
        FILES_TOML,
        "dest = \"/srv/one.txt\"",
        "dest = \"/srv/../../one.txt\"",
        &["leaves the image root through \"..\""],
    );
}

#[test]
fn symlink_escaping_the_workspace_is_refused() {
    let f = three_layers();
    let outside = support::TempDir::new("outside");
    fs::write(outside.path().join("secret"), "x").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        f.path("images/files/data/tree/escape"),
    )
    .unwrap();
    bad_input(
        &f,
        &[
            "images/files/image.toml:12:10:",
            "is a symlink that leads outside the workspace",
        ],
    );
}

#[test]
fn tag_only_base_is_refused() {
    let f = three_layers();
    refused_edit(
        &f,
        FILES_TOML,
        "tags = [\"v1\"]",
        "tags = [\"v1\"]\nbase = \"debian:bookworm\"",
        &[
            "images/files/image.toml:5:8: base image \"debian:bookworm\" is pinned by tag only",
            "pin it by digest",
        ],
    );
}

#[test]
fn dry_run_prints_the_plan_and_builds_nothing() {
    let f = three_layers();
    let plan: serde_json::Value = serde_json::from_str(&f.ok(&["build", "--dry-run"])).unwrap();
    let layers = plan["images"][0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    let paths: Vec<&str> = layers[1]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/srv",
            "/srv/link",
            "/srv/tree",
            "/srv/tree/a.txt",
            "/srv/tree/sub",
            "/srv/tree/sub/b.txt"
        ]
    );
    assert!(!f.path("target/images").exists());
}

/// Issue 12, acceptance 1: the restructure into lane-core changed no byte
/// the lane writes. At the same SOURCE_DATE_EPOCH, base-cc's Debian layer
/// and hello's configuration layer (each digest and diff_id) are those the
/// lane built before it (commit 215b50e, measured with that commit's
/// binary). hello's binary layer depends on the Rust toolchain and is not
/// pinned here; the reproducibility tests cover it.
#[test]
fn layer_digests_are_those_of_the_lane_before_the_restructure() {
    const DEBIAN: (&str, &str) = (
        "sha256:bd3b04a7e147227012f7cb7a7113f57e70dcbe9543dd4d500536dc4e474bf047",
        "sha256:f19faa423c00076f01debf6d7af0af3953a748a1ab083c65321797413d09421c",
    );
    const HELLO_CONFIG: (&str, &str) = (
        "sha256:c9a4903e7e9291be9221db0acd92da06ed77ef8f59643d9fd2b23c3e5f6bc5dd",
        "sha256:f57d6e5fa77255a47978c16cbac0b212fa2bb6561031d76e718b406f56c6299f",
    );
    let f = Fixture::copy_of_repo("golden");
    let out = run_ok(
        f.command(&["build", "base-cc", "hello", "--json"])
            .env("SOURCE_DATE_EPOCH", "1795875938"),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = |name: &str| -> Vec<(String, String)> {
        image(&report, name)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_string(),
                    l["diff_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pair = |p: (&str, &str)| (p.0.to_string(), p.1.to_string());
    assert_eq!(layers("base-cc"), [pair(DEBIAN)]);
    let hello = layers("hello");
    assert_eq!(hello.len(), 3, "{hello:?}");
    assert_eq!(hello[0], pair(DEBIAN));
    assert_eq!(hello[2], pair(HELLO_CONFIG));
}

/// Issue 27, finding 3: a source that is a link into `.git/` (a CI
/// checkout's token header lives in .git/config) or into `target/` (where
/// keygen writes the private key) is refused, the link and its target
/// named; nothing is built or cached.
#[test]
fn links_into_git_or_target_are_refused_and_nothing_is_built() {
    for (label, target) in [
        ("link-git", "../../../.git/config"),
        ("link-target", "../../../target/keys/release-signing.key"),
    ] {
        let f = crate::support::Fixture::with_files(
            label,
            &[
                (
                    "images/files/image.toml",
                    "name = \"files\"\nrepository = \"test/files\"\n\n[[layer]]\nname = \"data\"\nfiles = [{ src = \"data\", dest = \"/srv\" }]\n",
                ),
                ("images/files/data/one.txt", "one\n"),
                ("Cargo.lock", "version = 4\n"),
            ],
        );
        std::fs::create_dir_all(f.path("target/keys")).unwrap();
        std::fs::write(f.path("target/keys/release-signing.key"), "PRIVATE\n").unwrap();
        std::os::unix::fs::symlink(target, f.path("images/files/data/leak")).unwrap();
        let err = f.fails(&["build"]);
        assert!(
            err.contains("images/files/data/leak") && err.contains("never packaged"),
            "{label}: {err}"
        );
        assert!(
            !f.path("target/images/files").exists(),
            "{label}: a layout was written"
        );
        assert!(
            !f.path("target/lane-cache/blobs").exists()
                || std::fs::read_dir(f.path("target/lane-cache/blobs"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{label}: a blob was cached"
        );
    }
}

/// Issue 27, finding 12: a whiteout name (`.wh.*`) in a source folder or a
/// destination is refused, naming it: a layer holding it would delete or
/// hide a lower layer's files. Nothing is built.
#[test]
fn whiteout_names_are_refused_in_sources_and_destinations() {
    let image = "name = \"files\"\nrepository = \"test/files\"\n\n[[layer]]\nname = \"data\"\nfiles = [{ src = \"data\", dest = \"/srv\" }]\n";
    let f = crate::support::Fixture::with_files(
        "whiteout-src",
        &[
            ("images/files/image.toml", image),
            ("images/files/data/one.txt", "one\n"),
            ("images/files/data/.wh.passwd", "\n"),
            ("Cargo.lock", "version = 4\n"),
        ],
    );
    let err = f.fails(&["build"]);
    assert!(
        err.contains(".wh.passwd") && err.contains("whiteout"),
        "{err}"
    );
    assert!(!f.path("target/images/files").exists());
    let opaque = image.replace("dest = \"/srv\"", "dest = \"/etc/.wh..wh..opq\"");
    let f = crate::support::Fixture::with_files(
        "whiteout-dest",
        &[
            ("images/files/image.toml", opaque.as_str()),
            ("images/files/data/one.txt", "one\n"),
            ("Cargo.lock", "version = 4\n"),
        ],
    );
    let err = f.fails(&["build"]);
    assert!(
        err.contains(".wh..wh..opq") && err.contains("whiteout"),
        "{err}"
    );
}

/// Issue 27, finding 3 (the rest): a source that resolves outside the
/// image's own folder, even inside the repository, is refused naming the
/// link and where it leads, unless the image's image.toml allows that
/// workspace path on purpose (`[sources] allow`).
#[test]
fn a_source_outside_the_images_folder_needs_an_explicit_allowance() {
    let image = "name = \"files\"\nrepository = \"test/files\"\n\n[[layer]]\nname = \"data\"\nfiles = [{ src = \"data\", dest = \"/srv\" }]\n";
    let f = crate::support::Fixture::with_files(
        "sources-allow",
        &[
            ("images/files/image.toml", image),
            ("images/files/data/one.txt", "one\n"),
            ("shared/ca.pem", "a shared file\n"),
            ("Cargo.lock", "version = 4\n"),
        ],
    );
    std::os::unix::fs::symlink("../../../shared/ca.pem", f.path("images/files/data/ca.pem"))
        .unwrap();
    f.commit("a link to a shared file");
    let err = f.fails(&["build"]);
    assert!(
        err.contains("images/files/data/ca.pem")
            && err.contains("outside the image's folder images/files/")
            && err.contains("[sources] allow = [\"shared/ca.pem\"]"),
        "{err}"
    );
    assert!(!f.path("target/images/files").exists());
    f.write(
        "images/files/image.toml",
        &format!("{image}\n[sources]\nallow = [\"shared\"]\n"),
    );
    f.commit("the shared folder is allowed");
    f.ok(&["build"]);
    f.write(
        "images/files/image.toml",
        &format!("{image}\n[sources]\nallow = [\".git\"]\n"),
    );
    let err = f.fails(&["build"]);
    assert!(err.contains("not in .git/ or target/"), "{err}");
}
