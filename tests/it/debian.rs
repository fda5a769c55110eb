//! Base images from pinned Debian packages (issue 5): `cargo xtask lock`,
//! the verified `.deb` cache, untrusted archives, and the dynamically linked
//! sample service on the base-cc image in the real Docker Engine.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::support::{
    DockerImage, Fixture, column, image, run_ok, sha256_hex_of_file, show, stdout,
};

/// Acceptance 1: lock then lock --check passes; editing the package list
/// makes --check fail and name the package.
#[test]
fn lock_then_check_passes_and_an_edit_is_named() {
    let f = Fixture::copy_of_repo("lock");
    let out = f.ok(&["lock", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["packages"].as_u64().unwrap() >= 6, "{report}");
    f.ok(&["lock", "--check"]);
    let lock = f.read("lockfiles/debian.lock");
    for needle in [
        "name = \"libc6\"",
        "filename = \"pool/main/",
        "sha256 = \"sha256:",
        "required_by = [",
    ] {
        assert!(lock.contains(needle), "{needle} missing in:\n{lock}");
    }
    assert!(!lock.contains("://"), "no mirror host in the lock:\n{lock}");

    // Drop tzdata from the image definition: the lock is stale now.
    let toml_path = "images/base-cc/image.toml";
    let text = f.read(toml_path);
    let edited: String = text
        .lines()
        .filter(|l| !l.contains("\"tzdata\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, edited, "the test expects tzdata in {toml_path}");
    f.write(toml_path, &edited);
    let err = f.fails(&["lock", "--check"]);
    assert!(
        err.contains("image base-cc: package tzdata is locked but no longer requested"),
        "{err}"
    );
    assert!(err.contains("package tzdata "), "{err}");
    assert!(err.contains("run cargo xtask lock"), "{err}");
    // --check wrote nothing.
    assert_eq!(f.read("lockfiles/debian.lock"), lock);
    // A build refuses the stale lock as well, naming the file and the fix.
    let err = f.fails(&["build", "base-cc"]);
    assert!(err.contains("differ from lockfiles/debian.lock"), "{err}");
    // Locking again makes --check pass.
    f.ok(&["lock"]);
    f.ok(&["lock", "--check"]);
    assert!(
        !f.read("lockfiles/debian.lock")
            .contains("name = \"tzdata\"")
    );
}

/// Acceptance 2: the base is reproducible (twice, and from another path).
#[test]
fn base_is_reproducible() {
    let f = Fixture::copy_of_repo("repro-base");
    let out = f.ok(&["repro", "--json", "base-cc"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["reproducible"], true, "{report}");
    let img = &report["images"][0];
    assert_eq!(img["name"], "base-cc");
    assert_eq!(img["first"], img["second"]);
}

/// Acceptance 3: a corrupted cached .deb stops the build before anything is
/// built, naming the package, the expected and the actual hash.
#[test]
fn corrupted_cached_deb_stops_the_build() {
    let f = Fixture::copy_of_repo("corrupt");
    f.build_json(&["base-cc"]);
    let lock = f.read("lockfiles/debian.lock");
    let expected = lock
        .split("[[package]]")
        .find(|s| s.contains("name = \"libc6\""))
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("sha256 = \"")))
        .map(|s| s.trim_end_matches('"').to_string())
        .expect("libc6 is locked");
    let cached = f.path(&format!(
        "target/lane-cache/debs/{}.deb",
        &expected["sha256:".len()..]
    ));
    let mut bytes = fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&cached, &bytes).unwrap();
    let actual = sha256_hex_of_file(&cached);
    fs::remove_dir_all(f.path("target/images")).unwrap();

    let err = f.fails(&["build", "base-cc"]);
    assert!(err.contains("package libc6 "), "{err}");
    assert!(err.contains(&format!("expected {expected}")), "{err}");
    assert!(err.contains(&format!("actual {actual}")), "{err}");
    assert!(err.contains("nothing was built"), "{err}");
    assert!(
        !f.path("target/images/base-cc").exists(),
        "no layout may be written"
    );
}

// ---------------------------------------------------------------------------
// Crafted archives

/// One tar entry of a crafted archive, with its raw name bytes.
enum Raw<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

/// One entry of a layer blob: its path, type, link target and bytes.
struct LayerEntry {
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    data: Vec<u8>,
}

/// Every entry of the gzip'd tar layer `blob`, in order.
fn read_layer(blob: &Path) -> Vec<LayerEntry> {
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(blob).unwrap()));
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(LayerEntry {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            kind: e.header().entry_type(),
            link: e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned()),
            data,
        });
    }
    out
}

/// A gzip'd tar whose names are written raw (the tar crate's safe setters
/// refuse `..`, which is exactly what this test needs).
fn raw_tar_gz(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, link, ty, data): (&str, &str, tar::EntryType, &[u8]) = match e {
            Raw::Dir(n) => (n, "", tar::EntryType::Directory, b""),
            Raw::File(n, d) => (n, "", tar::EntryType::Regular, d),
            Raw::Symlink(n, t) => (n, t, tar::EntryType::Symlink, b""),
            Raw::HardLink(n, t) => (n, t, tar::EntryType::Link, b""),
            Raw::CharDevice(n) => (n, "", tar::EntryType::Char, b""),
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(if ty == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        if ty == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

fn crafted_deb(package: &str, data: &[Raw]) -> Vec<u8> {
    let control = format!(
        "Package: {package}\nVersion: 1\nArchitecture: all\nMaintainer: lane test <t@example.com>\nDescription: crafted by tests/it/debian.rs\n"
    );
    let control_tar = raw_tar_gz(&[
        Raw::Dir("./"),
        Raw::File("./control", control.as_bytes()),
        Raw::File(
            "./postinst",
            b"#!/bin/sh\ntouch /tmp/postinst-ran-lane-test\n",
        ),
    ]);
    let data_tar = raw_tar_gz(data);
    let mut ar = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar.gz", &control_tar[..]),
        ("data.tar.gz", &data_tar[..]),
    ] {
        ar.append(
            &ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64),
            bytes,
        )
        .unwrap();
    }
    ar.into_inner().unwrap()
}

/// Acceptance 4: `..` paths, a symlink escaping the root (absolute and
/// relative) and a device node are refused, every one named; nothing is
/// written outside the layer. Absolute paths, hard links, absolute links
/// inside the root and repeated directories are normalised as documented.
#[test]
fn crafted_debs_are_handled_as_documented() {
    let evil = crafted_deb(
        "evil",
        &[
            Raw::Dir("./"),
            Raw::Dir("./etc/"),
            Raw::File("./etc/../../../escaped-by-lane-test", b"pwned\n"),
            Raw::Symlink("./etc/abs-escape", "/../../../tmp/escaped-link"),
            Raw::Symlink("./etc/rel-escape", "../../../../etc/shadow"),
            Raw::CharDevice("./dev/evil-null"),
        ],
    );
    let fine = crafted_deb(
        "fine",
        &[
            Raw::Dir("./"),
            Raw::Dir("./etc/"),
            Raw::Dir("./etc/"),
            Raw::File("/etc/abs.conf", b"absolute\n"),
            Raw::Dir("./usr/"),
            Raw::Dir("./usr/lib/"),
            Raw::File("./usr/lib/real.so", b"ELF-ish\n"),
            Raw::HardLink("./usr/lib/hard.so", "./usr/lib/real.so"),
            Raw::Symlink("./usr/lib/abs-link.so", "/usr/lib/real.so"),
        ],
    );
    let pkg = |name: &str, bytes: &[u8]| {
        let digest = lane_core::layer::sha256(bytes);
        format!(
            "[[package]]\nname = \"{name}\"\nversion = \"1\"\narchitecture = \"all\"\nfilename = \"pool/main/t/{name}/{name}_1_all.deb\"\nsize = {}\nsha256 = \"{digest}\"\nrequired_by = [\"{name}\"]\n\n",
            bytes.len()
        )
    };
    let lock = format!(
        "version = 1\narchitecture = \"amd64\"\nsuite = \"bookworm\"\n\n[[image]]\nname = \"evil\"\npackages = [\"evil\"]\n\n[[image]]\nname = \"fine\"\npackages = [\"fine\"]\n\n{}{}",
        pkg("evil", &evil),
        pkg("fine", &fine)
    );
    let f = Fixture::with_files(
        "crafted",
        &[
            (
                "images/evil/image.toml",
                "name = \"evil\"\nrepository = \"test/evil\"\n[debian]\npackages = [\"evil\"]\n",
            ),
            (
                "images/fine/image.toml",
                "name = \"fine\"\nrepository = \"test/fine\"\n[debian]\npackages = [\"fine\"]\n",
            ),
            ("lockfiles/debian.lock", &lock),
        ],
    );
    // Seed the content-addressed cache: no apt download for these.
    let debs = f.path("target/lane-cache/debs");
    fs::create_dir_all(&debs).unwrap();
    for bytes in [&evil, &fine] {
        let hex = lane_core::layer::sha256(bytes).hex().to_string();
        fs::write(debs.join(format!("{hex}.deb")), bytes).unwrap();
    }

    let err = f.fails(&["build", "evil"]);
    for needle in [
        "package evil: the archive is refused",
        "path \"./etc/../../../escaped-by-lane-test\" contains \"..\"",
        "symlink /etc/abs-escape -> /../../../tmp/escaped-link leads outside the root",
        "symlink /etc/rel-escape -> ../../../../etc/shadow leads outside the root",
        "/dev/evil-null is a character device",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
    assert!(!f.path("target/images/evil").exists());
    // Nothing escaped: not next to the workspace, not anywhere in its
    // temporary folder, not in /tmp; the maintainer script never ran.
    let tmp_root = f.root.parent().unwrap();
    for e in walkdir::WalkDir::new(tmp_root) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy();
        assert!(
            !name.contains("escaped-by-lane-test") && !name.contains("escaped-link"),
            "{} was written",
            e.path().display()
        );
    }
    assert!(!Path::new("/tmp/escaped-link").exists());
    assert!(!Path::new("/tmp/postinst-ran-lane-test").exists());

    // The well-formed-but-odd archive builds, normalised.
    let report = f.build_json(&["fine"]);
    let img = image(&report, "fine");
    let layer = img["layers"][0]["digest"].as_str().unwrap();
    let blob = f.path(&format!(
        "target/images/fine/blobs/sha256/{}",
        &layer["sha256:".len()..]
    ));
    let mut seen = Vec::new();
    for e in read_layer(&blob) {
        let kind = match e.kind {
            tar::EntryType::Directory => "dir".to_string(),
            tar::EntryType::Symlink => format!("link {}", e.link.unwrap()),
            tar::EntryType::Regular => format!("file {:?}", String::from_utf8(e.data).unwrap()),
            other => format!("{other:?}"),
        };
        seen.push(format!("{} {kind}", e.path));
    }
    let status = "file \"Package: fine\\nVersion: 1\\nArchitecture: all\\nMaintainer: lane test <t@example.com>\\nDescription: crafted by tests/it/debian.rs\\n\"";
    assert_eq!(
        seen,
        [
            "etc/ dir".to_string(),
            "etc/abs.conf file \"absolute\\n\"".into(),
            "usr/ dir".into(),
            "usr/lib/ dir".into(),
            "usr/lib/abs-link.so link /usr/lib/real.so".into(),
            "usr/lib/hard.so file \"ELF-ish\\n\"".into(),
            "usr/lib/real.so file \"ELF-ish\\n\"".into(),
            "var/ dir".into(),
            "var/lib/ dir".into(),
            "var/lib/dpkg/ dir".into(),
            "var/lib/dpkg/status.d/ dir".into(),
            format!("var/lib/dpkg/status.d/fine {status}"),
            "var/lib/dpkg/status.d/fine.list file \"/etc\\n/etc/abs.conf\\n/usr\\n/usr/lib\\n/usr/lib/abs-link.so\\n/usr/lib/hard.so\\n/usr/lib/real.so\\n\"".into(),
        ]
    );
}

// ---------------------------------------------------------------------------
// Docker

/// Writes a docker-archive (the `docker load` format Docker 20.10 accepts)
/// for the OCI layout at `layout`.
fn docker_archive(layout: &Path, tag: &str, out: &Path) {
    let read_json =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
    let blob = |d: &str| layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = manifest["config"]["digest"].as_str().unwrap();
    let layers = column(&manifest["layers"], "digest");
    let name = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
    let docker_manifest = serde_json::json!([{
        "Config": name(config),
        "RepoTags": [tag],
        "Layers": layers.iter().map(|d| name(d)).collect::<Vec<_>>(),
    }]);
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let bytes = serde_json::to_vec(&docker_manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "manifest.json", &bytes[..]).unwrap();
    for d in std::iter::once(config).chain(layers.iter().map(String::as_str)) {
        b.append_path_with_name(blob(d), name(d)).unwrap();
    }
    b.finish().unwrap();
}

/// Acceptance 5: the dynamically linked sample service starts on base-cc in
/// the real Docker Engine, and its image names the base by digest.
#[test]
fn dynamic_hello_runs_on_base_cc_in_docker() {
    let f = Fixture::copy_of_repo("docker");
    let report = f.build_json(&["hello"]);
    let base = image(&report, "base-cc");
    let hello = image(&report, "hello");

    // The manifest names the base by digest; the base's layers come first.
    let layout = f.path("target/images/hello");
    let m = hello["manifest_digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&m["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"], base["manifest_digest"],
        "{manifest}"
    );
    assert_eq!(manifest["layers"][0]["digest"], base["layers"][0]["digest"]);

    // The payload really is dynamically linked (it has an ELF interpreter).
    let bins: Vec<_> = walkdir::WalkDir::new(f.path("target/lane-cargo/dynamic"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "hello" && e.path().parent().unwrap().ends_with("release"))
        .collect();
    assert_eq!(bins.len(), 1, "one dynamic hello binary");
    let elf = fs::read(bins[0].path()).unwrap();
    assert!(
        elf.windows(12).any(|w| w == b"/lib64/ld-li"),
        "hello has no ELF interpreter: not dynamically linked"
    );

    let tag = format!("lane-debian-test:{}", std::process::id());
    let archive = f.path("hello.docker.tar");
    docker_archive(&layout, &tag, &archive);
    run_ok(Command::new("docker").arg("load").arg("-i").arg(&archive));
    let engine = DockerImage(tag);

    for (args, expect) in [
        (&["--self-check"][..], "self-check ok"),
        (&["--version"][..], "hello 0.1.0"),
    ] {
        let out = engine.run("/usr/local/bin/hello", args);
        assert!(
            out.status.success() && stdout(&out).contains(expect),
            "hello {args:?} in Docker: {}",
            show(&out)
        );
    }
    // Scanners see the packages: /var/lib/dpkg/status.d/<package>.
    let base_layer = base["layers"][0]["digest"].as_str().unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(&base_layer["sha256:".len()..]);
    let mut status = Vec::new();
    for e in read_layer(&blob) {
        let path = &e.path;
        if let Some(pkg) = path.strip_prefix("var/lib/dpkg/status.d/") {
            if pkg.is_empty() {
                continue;
            }
            let text = String::from_utf8(e.data).unwrap();
            if let Some(listed) = pkg.strip_suffix(".list") {
                // The file list drift reads: absolute paths, one per line.
                assert!(text.lines().all(|l| l.starts_with('/')), "{path}: {text}");
                assert!(
                    status.contains(&listed.to_string()),
                    "{path} follows its status file"
                );
                continue;
            }
            assert!(
                text.starts_with(&format!("Package: {pkg}\n")),
                "{path}: {text}"
            );
            status.push(pkg.to_string());
        }
    }
    for pkg in [
        "base-files",
        "ca-certificates",
        "libc6",
        "libgcc-s1",
        "netbase",
        "tzdata",
    ] {
        assert!(
            status.iter().any(|s| s == pkg),
            "no status file for {pkg}: {status:?}"
        );
    }
}

/// The release's pinned-inputs check (`lock --check`) is judged from the
/// lock and the verified .debs alone, and remembered while nothing it reads
/// changes: the second check is answered from the cache; an edited
/// `[debian]` table is checked again, names the package and the fix, and a
/// failing answer is never remembered.
#[test]
fn the_release_lock_check_is_remembered_until_its_inputs_change() {
    use xtask::adapters::apt::check;
    let f = Fixture::copy_of_repo("lock-cache");
    let images = xtask::adapters::workspace::Workspace {
        root: f.root.clone(),
    }
    .load_images()
    .unwrap();
    let cache = f.path("target/lane-cache");
    let first = check(&f.root, &images, &cache).unwrap();
    assert!(first.changes.is_empty(), "{:?}", first.changes);
    assert!(first.packages >= 6, "{first:?}");
    let remembered = fs::read_dir(cache.join("lock-check")).unwrap().count();
    assert_eq!(remembered, 1);
    // Answered from the cache: no .deb is read again (the cache is gone).
    fs::remove_dir_all(cache.join("debs")).unwrap();
    let second = check(&f.root, &images, &cache).unwrap();
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert!(
        !cache.join("debs").exists(),
        "the second check fetched nothing"
    );

    f.edit(
        "images/base-cc/image.toml",
        "  \"tzdata\",",
        "  \"tzdata\",\n  \"libzstd1\",",
    );
    let images = xtask::adapters::workspace::Workspace {
        root: f.root.clone(),
    }
    .load_images()
    .unwrap();
    let stale = check(&f.root, &images, &cache).unwrap();
    let said = stale.changes.join("\n");
    assert!(said.contains("libzstd1"), "{said}");
    assert!(said.contains("run cargo xtask lock"), "{said}");
    assert_eq!(
        fs::read_dir(cache.join("lock-check")).unwrap().count(),
        1,
        "a failing answer is not remembered"
    );
}
