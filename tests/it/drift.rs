//! `cargo xtask drift` end to end (issue 9): real ELF files of this machine
//! (found with ldd, their packages with dpkg) are put into files-only fixture
//! images, and the lane checks them without consulting the host.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{
    self, DockerImage, Fixture, TempDir, column, entry, report, report_image, run, run_ok, show,
    stderr, stdout, stdout_of, strings, unique,
};

const MULTIARCH: &str = "/lib/x86_64-linux-gnu";

/// Shared libraries `ldd` resolves for a host binary: (name, host path).
fn ldd(binary: &str) -> Vec<(String, String)> {
    stdout_of(Command::new("ldd").arg(binary))
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            let path = rest.split_whitespace().next()?;
            Some((name.to_string(), path.to_string()))
        })
        .collect()
}

/// The Debian package that ships a host file (`dpkg -S`), under its /lib or
/// /usr/lib name (merged /usr: dpkg knows one of the two).
fn package_of(host_path: &str) -> String {
    let other = match host_path.strip_prefix("/usr") {
        Some(rest) => rest.to_string(),
        None => format!("/usr{host_path}"),
    };
    for path in [host_path, other.as_str()] {
        let out = run(Command::new("dpkg").args(["-S", path]));
        if out.status.success() {
            let text = String::from_utf8(out.stdout).unwrap();
            return text.split(':').next().unwrap().to_string();
        }
    }
    panic!("dpkg -S knows neither {host_path} nor {other}")
}

/// An image `name` of a files-only fixture, assembled from host files.
struct Image<'a> {
    f: &'a Fixture,
    name: String,
    entrypoint: Option<String>,
}

impl<'a> Image<'a> {
    fn new(f: &'a Fixture, name: &str) -> Image<'a> {
        Image {
            f,
            name: name.into(),
            entrypoint: None,
        }
    }

    fn rootfs(&self, image_path: &str) -> std::path::PathBuf {
        self.f.path(&format!(
            "images/{}/rootfs{}",
            self.name,
            match image_path.strip_prefix("/lib/") {
                Some(rest) => format!("/usr/lib/{rest}"),
                None => image_path.to_string(),
            }
        ))
    }

    /// Copies a host file (symlinks followed) to the same path in the
    /// image; `/lib/...` lands in `/usr/lib/...` (the image has /lib ->
    /// usr/lib, like a merged-/usr Debian).
    fn copy(&self, host: &str, image_path: &str) {
        let to = self.rootfs(image_path);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(host, &to).unwrap_or_else(|e| panic!("copying {host}: {e}"));
    }

    fn write(&self, image_path: &str, bytes: &[u8]) {
        let to = self.rootfs(image_path);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::write(to, bytes).unwrap();
    }

    /// A host binary, its libraries (as ldd finds them) and its interpreter.
    fn binary_with_libraries(&self, binary: &str, leave_out: &[&str]) {
        self.copy(binary, binary);
        for (name, path) in ldd(binary) {
            if !leave_out.contains(&name.as_str()) {
                self.copy(&path, &format!("{MULTIARCH}/{name}"));
            }
        }
        self.copy(
            "/lib64/ld-linux-x86-64.so.2",
            &format!("{MULTIARCH}/ld-linux-x86-64.so.2"),
        );
    }

    /// Declares a curated package the way base images do: its dpkg stanza
    /// in /var/lib/dpkg/status.d/PKG and its file list in PKG.list, both
    /// taken from this machine's dpkg database.
    fn curate(&self, package: &str) {
        let version = stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]));
        let list = stdout_of(Command::new("dpkg").args(["-L", package]));
        self.write(
            &format!("/var/lib/dpkg/status.d/{package}"),
            format!("Package: {package}\nVersion: {version}\nArchitecture: amd64\n").as_bytes(),
        );
        self.write(
            &format!("/var/lib/dpkg/status.d/{package}.list"),
            list.as_bytes(),
        );
    }

    /// Writes image.toml: one layer with every top folder of rootfs/.
    fn finish(&self) {
        let root = self.f.path(&format!("images/{}/rootfs", self.name));
        let mut files = Vec::new();
        for e in fs::read_dir(&root).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            files.push(format!(
                "  {{ src = \"rootfs/{name}\", dest = \"/{name}\" }},"
            ));
        }
        files.sort();
        let entrypoint = match &self.entrypoint {
            Some(e) => format!("[config]\nentrypoint = [\"{e}\"]\n"),
            None => String::new(),
        };
        self.f.write(
            &format!("images/{}/image.toml", self.name),
            &format!(
                "name = \"{n}\"\nrepository = \"test/{n}\"\ntags = [\"v1\"]\n\n[[layer]]\nname = \"system\"\nfiles = [\n{}\n]\nsymlinks = [\n  {{ dest = \"/lib\", target = \"usr/lib\" }},\n  {{ dest = \"/bin\", target = \"usr/bin\" }},\n  {{ dest = \"/lib64/ld-linux-x86-64.so.2\", target = \"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\" }},\n]\n\n{entrypoint}",
                files.join("\n"),
                n = self.name
            ),
        );
    }
}

/// lockfiles/library-index.toml naming the package of each library of
/// `binary`, as this machine's dpkg database knows it.
fn write_index(f: &Fixture, binary: &str) {
    let mut text = String::from("[libraries]\n");
    for (name, path) in ldd(binary) {
        text.push_str(&format!("\"{name}\" = [\"{}\"]\n", package_of(&path)));
    }
    f.write("lockfiles/library-index.toml", &text);
}

/// `drift --json ARGS`: success, the report, stderr.
fn drift_json(f: &Fixture, args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["drift", "--json"];
    all.extend_from_slice(args);
    let out = f.xtask(&all);
    let stderr = stderr(&out);
    assert!(!stderr.contains("panicked"), "drift panicked:\n{stderr}");
    (out.status.success(), report(&out), stderr)
}

/// The ELF object at `path` in an image's drift report.
fn object<'a>(image: &'a Value, path: &str) -> &'a Value {
    entry(&image["objects"], "path", path)
}

/// What `object` needs of the library `name`.
fn needed<'a>(object: &'a Value, name: &str) -> &'a Value {
    entry(&object["needed"], "name", name)
}

/// The OCI layout's image `tag` loaded into the real Docker Engine (with
/// skopeo), removed on drop.
fn load(layout: &Path, tag: &str) -> DockerImage {
    let name = format!("lane-drift-test:{}", unique());
    run_ok(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker-daemon:{name}"),
    ]));
    DockerImage(name)
}

/// Acceptance 1: the sample service image has no drift.
#[test]
fn sample_service_has_no_drift() {
    let f = Fixture::copy_of_repo("drift-hello");
    let (ok, report, stderr) = drift_json(&f, &["hello"]);
    assert!(ok, "drift of hello failed:\n{stderr}\n{report:#}");
    let hello = report_image(&report, "hello");
    assert_eq!(hello["ok"], true);
    assert_eq!(hello["missing_libraries"], serde_json::json!([]));
    assert_eq!(hello["missing_interpreters"], serde_json::json!([]));
    assert_eq!(hello["malformed"], serde_json::json!([]));
    // The service is dynamically linked on base-cc: its interpreter and
    // libraries resolve inside the image, to the packages that ship them.
    let bin = object(hello, "/usr/local/bin/hello");
    assert_eq!(bin["kind"], "executable");
    assert_eq!(bin["interpreter"]["found"], true, "{bin}");
    assert_eq!(bin["interpreter"]["package"], "libc6", "{bin}");
    assert_eq!(
        bin["depends_on"],
        serde_json::json!(["libc6", "libgcc-s1"]),
        "{bin}"
    );
    let needed = column(&bin["needed"], "name");
    assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
    let used: Vec<&str> = hello["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["used_by"].as_array().is_some_and(|u| !u.is_empty()))
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert!(
        used.contains(&"libc6") && used.contains(&"libgcc-s1"),
        "{used:?}"
    );
    // Data-only packages of the base (time zones, CA certificates) load no
    // code: they are reported as unused, which fails only by policy.
    let unused = strings(&hello["unused_packages"]);
    assert!(
        unused.iter().any(|p| p == "tzdata") && !unused.iter().any(|p| p == "libc6"),
        "{unused:?}"
    );
}

/// Acceptance 2: a binary needs libz.so.1 and zlib1g is not curated: drift
/// fails naming the binary, the library and the package, and the binary
/// indeed does not start in the real engine; curating zlib1g fixes both.
#[test]
fn leaving_out_a_needed_package_fails_and_names_it() {
    let binary = "/usr/bin/git";
    let direct: BTreeSet<String> = ldd(binary).into_iter().map(|(n, _)| n).collect();
    assert!(
        direct.contains("libz.so.1"),
        "{binary} must need libz.so.1: {direct:?}"
    );
    let zlib = package_of(&format!("{MULTIARCH}/libz.so.1"));
    assert_eq!(zlib, "zlib1g");
    let pcre = package_of(&format!("{MULTIARCH}/libpcre2-8.so.0"));

    let f = Fixture::with_files("drift-zlib", &[]);
    let mut img = Image::new(&f, "tool");
    img.entrypoint = Some(binary.into());
    img.binary_with_libraries(binary, &["libz.so.1"]);
    for p in ["git", "libc6", pcre.as_str()] {
        img.curate(p);
    }
    img.finish();
    write_index(&f, binary);
    f.commit("git without zlib1g");

    let (ok, report, stderr) = drift_json(&f, &["tool"]);
    assert!(!ok, "drift must fail without zlib1g:\n{report:#}");
    assert!(
        stderr.contains("/usr/bin/git needs libz.so.1") && stderr.contains("zlib1g"),
        "the error names binary, library and package:\n{stderr}"
    );
    let tool = report_image(&report, "tool");
    assert_eq!(tool["ok"], false);
    let missing = tool["missing_libraries"].as_array().unwrap();
    let m = missing
        .iter()
        .find(|m| m["binary"] == binary)
        .unwrap_or_else(|| panic!("{binary} not among missing: {missing:?}"));
    assert_eq!(m["library"], "libz.so.1");
    assert_eq!(m["needed_by"], binary);
    assert_eq!(strings(&m["providers"]), ["zlib1g"]);
    // Nothing else is missing: the other libraries resolve.
    assert!(
        missing.iter().all(|m| m["library"] == "libz.so.1"),
        "{missing:?}"
    );
    let git = object(tool, binary);
    assert_eq!(git["interpreter"]["found"], true);
    assert_eq!(
        git["interpreter"]["resolved"],
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    );
    assert_eq!(needed(git, "libz.so.1")["resolved"], Value::Null);
    // The human-readable form says the same.
    let text = f.xtask(&["drift", "tool"]);
    assert!(!text.status.success());
    let stdout = stdout(&text);
    assert!(
        stdout.contains("missing library: /usr/bin/git needs libz.so.1")
            && stdout.contains("zlib1g"),
        "{stdout}"
    );

    // The real engine agrees: the binary does not start (drift said so
    // before anything was published).
    let engine = load(&f.path("target/images/tool"), "v1");
    let started = engine.run(binary, &["--version"]);
    let err = support::stderr(&started);
    assert!(!started.status.success(), "{binary} started without libz");
    assert!(
        err.contains("error while loading shared libraries: libz.so.1"),
        "{err}"
    );
    drop(engine);

    // Curating zlib1g (its file and its stanza) removes the drift.
    img.copy(
        &format!("{MULTIARCH}/libz.so.1"),
        &format!("{MULTIARCH}/libz.so.1"),
    );
    img.curate("zlib1g");
    f.commit("add zlib1g");
    let (ok, report, stderr) = drift_json(&f, &["--fail-on-unused", "tool"]);
    assert!(ok, "drift must pass with zlib1g:\n{stderr}\n{report:#}");
    let tool = report_image(&report, "tool");
    let git = object(tool, binary);
    let z = needed(git, "libz.so.1");
    assert_eq!(z["resolved"], "/lib/x86_64-linux-gnu/libz.so.1");
    assert_eq!(z["via"], "default");
    assert_eq!(z["package"], "zlib1g");
    let mut want = vec!["libc6".to_string(), pcre.clone(), "zlib1g".to_string()];
    want.sort();
    assert_eq!(strings(&git["depends_on"]), want);
    assert_eq!(tool["unused_packages"], serde_json::json!([]));
    // ... and the engine starts the binary.
    let engine = load(&f.path("target/images/tool"), "v1");
    let started = engine.run(binary, &["--version"]);
    assert!(started.status.success(), "{}", show(&started));
    assert!(support::stdout(&started).starts_with("git version"));
}

/// Acceptance 4: a curated package nothing needs is reported as unused; the
/// policy decides whether that fails.
#[test]
fn a_curated_package_nothing_needs_is_unused() {
    let binary = "/usr/bin/gzip";
    let f = Fixture::with_files("drift-unused", &[]);
    let mut img = Image::new(&f, "gz");
    img.entrypoint = Some(binary.into());
    img.binary_with_libraries(binary, &[]);
    img.curate("gzip");
    img.curate("libc6");
    // libbz2.so.1.0: a real library no file of this image needs.
    let bz2 = package_of(&format!("{MULTIARCH}/libbz2.so.1.0"));
    img.copy(
        &format!("{MULTIARCH}/libbz2.so.1.0"),
        &format!("{MULTIARCH}/libbz2.so.1.0"),
    );
    img.curate(&bz2);
    // A static-pie binary of libc-bin needs nothing, not even libc6.
    img.copy("/sbin/ldconfig", "/usr/sbin/ldconfig");
    img.finish();
    f.commit("gzip with an extra package");

    let (ok, report, stderr) = drift_json(&f, &["gz"]);
    assert!(ok, "unused packages do not fail by default:\n{stderr}");
    let gz = report_image(&report, "gz");
    assert_eq!(strings(&gz["unused_packages"]), vec![bz2.clone()]);
    let pkgs = gz["packages"].as_array().unwrap();
    let used = |name: &str| {
        pkgs.iter().find(|p| p["name"] == name).unwrap()["used_by"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(used("libc6").contains(&Value::from(binary)));
    assert_eq!(used("gzip"), [Value::from("<entrypoint>")]);
    assert!(used(&bz2).is_empty());
    let ldconfig = object(gz, "/usr/sbin/ldconfig");
    assert_eq!(ldconfig["kind"], "static_executable");
    assert_eq!(ldconfig["depends_on"], serde_json::json!([]));
    assert!(!used("libc6").contains(&Value::from("/usr/sbin/ldconfig")));

    let (ok, _, stderr) = drift_json(&f, &["--fail-on-unused", "gz"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "curated package {bz2} is not needed by any binary"
        )),
        "{stderr}"
    );
    let (ok, _, stderr) = drift_json(&f, &["--fail-on-unused", "--allow-unused", &bz2, "gz"]);
    assert!(ok, "{stderr}");
}

fn cc(dir: &Path, args: &[&str]) {
    run_ok(Command::new("cc").current_dir(dir).args(args));
}

fn dynamic_section(path: &Path) -> String {
    stdout_of(Command::new("readelf").arg("-d").arg(path))
}

/// Acceptance 3: DT_RUNPATH inside the image resolves there; a library only
/// reachable through a host path is missing (it exists on the host).
#[test]
fn runpath_resolves_inside_the_image_and_host_paths_do_not_count() {
    let tmp = TempDir::new("drift-cc");
    let d = tmp.path();
    fs::write(d.join("greet.c"), "int greet(void) { return 42; }\n").unwrap();
    fs::write(
        d.join("main.c"),
        "int greet(void);\nint main(void) { return greet() == 42 ? 0 : 1; }\n",
    )
    .unwrap();
    let host_lib = d.join("hostlib");
    fs::create_dir_all(&host_lib).unwrap();
    cc(d, &["-shared", "-fPIC", "-o", "libgreet.so", "greet.c"]);
    cc(
        d,
        &[
            "-shared",
            "-fPIC",
            "-o",
            "hostlib/libhostonly.so",
            "greet.c",
        ],
    );
    // RUNPATH into the image.
    cc(
        d,
        &[
            "-o",
            "greet",
            "main.c",
            "-L.",
            "-lgreet",
            "-Wl,--enable-new-dtags,-rpath,/opt/app/lib",
        ],
    );
    // RPATH with $ORIGIN (no RUNPATH).
    cc(
        d,
        &[
            "-o",
            "greet-origin",
            "main.c",
            "-L.",
            "-lgreet",
            "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib",
        ],
    );
    // RUNPATH to a host folder that is not in the image.
    let rpath = format!("-Wl,--enable-new-dtags,-rpath,{}", host_lib.display());
    cc(
        d,
        &[
            "-o",
            "hostonly",
            "main.c",
            "-Lhostlib",
            "-lhostonly",
            &rpath,
        ],
    );
    assert!(dynamic_section(&d.join("greet")).contains("(RUNPATH)"));
    assert!(!dynamic_section(&d.join("greet-origin")).contains("(RUNPATH)"));
    assert!(dynamic_section(&d.join("greet-origin")).contains("(RPATH)"));
    assert!(dynamic_section(&d.join("hostonly")).contains("(RUNPATH)"));
    // The runtime itself works on the host: the loader finds the host lib.
    assert!(run(&mut Command::new(d.join("hostonly"))).status.success());

    let f = Fixture::with_files("drift-runpath", &[]);
    let img = Image::new(&f, "app");
    img.binary_with_libraries("/usr/bin/gzip", &[]); // brings libc6 and ld.so
    img.curate("libc6");
    let s = |p: &str| d.join(p).display().to_string();
    img.copy(&s("libgreet.so"), "/opt/app/lib/libgreet.so");
    img.copy(&s("greet"), "/opt/app/bin/greet");
    img.copy(&s("greet-origin"), "/opt/app/bin/greet-origin");
    img.copy(&s("hostonly"), "/opt/app/bin/hostonly");
    img.finish();
    f.commit("runpath binaries");

    let (ok, report, stderr) = drift_json(&f, &["app"]);
    assert!(
        !ok,
        "the host-only library must make drift fail:\n{report:#}"
    );
    let app = report_image(&report, "app");
    let greet = needed(object(app, "/opt/app/bin/greet"), "libgreet.so");
    assert_eq!(greet["resolved"], "/opt/app/lib/libgreet.so");
    assert_eq!(greet["via"], "runpath");
    let origin = needed(object(app, "/opt/app/bin/greet-origin"), "libgreet.so");
    assert_eq!(origin["resolved"], "/opt/app/lib/libgreet.so");
    assert_eq!(origin["via"], "rpath");
    let missing = app["missing_libraries"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["binary"], "/opt/app/bin/hostonly");
    assert_eq!(missing[0]["library"], "libhostonly.so");
    assert_eq!(missing[0]["reason"], "not found");
    assert_eq!(
        missing[0]["searched"][0],
        Value::from(host_lib.display().to_string())
    );
    assert!(
        stderr.contains("/opt/app/bin/hostonly needs libhostonly.so"),
        "{stderr}"
    );
    // The engine's loader agrees with each verdict.
    let engine = load(&f.path("target/images/app"), "v1");
    for ok in ["/opt/app/bin/greet", "/opt/app/bin/greet-origin"] {
        let out = engine.run(ok, &[]);
        assert!(out.status.success(), "{ok}: {}", show(&out));
    }
    let out = engine.run("/opt/app/bin/hostonly", &[]);
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("libhostonly.so"),
        "{}",
        show(&out)
    );
}

/// Acceptance 5: malformed and truncated ELF files are reported by path,
/// without a panic; a binary that needs one fails with the reason.
#[test]
fn malformed_elf_files_are_reported_by_path() {
    let f = Fixture::with_files("drift-malformed", &[]);
    let img = Image::new(&f, "broken");
    img.binary_with_libraries("/usr/bin/gzip", &[]);
    img.curate("libc6");
    let real = fs::read(format!("{MULTIARCH}/libz.so.1")).unwrap();
    img.write(
        "/usr/lib/x86_64-linux-gnu/libtrunc.so.1",
        &real[..real.len() / 3],
    );
    img.write(
        "/usr/bin/garbage",
        b"\x7fELF\x02\x01\x01\0garbage garbage garbage",
    );
    img.write("/usr/bin/short", b"\x7fELF");
    img.finish();
    f.commit("malformed files");

    let (ok, report, stderr) = drift_json(&f, &["broken"]);
    assert!(
        ok,
        "malformed files nothing loads are reported, not failed:\n{stderr}"
    );
    let broken = report_image(&report, "broken");
    let malformed: BTreeSet<String> = broken["malformed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(!m["error"].as_str().unwrap().is_empty());
            m["path"].as_str().unwrap().to_string()
        })
        .collect();
    let want: BTreeSet<String> = [
        "/usr/bin/garbage",
        "/usr/bin/short",
        "/usr/lib/x86_64-linux-gnu/libtrunc.so.1",
    ]
    .map(String::from)
    .into();
    assert_eq!(malformed, want);
    let text = stdout(&f.xtask(&["drift", "broken"]));
    assert!(
        text.contains("malformed ELF: /usr/lib/x86_64-linux-gnu/libtrunc.so.1"),
        "{text}"
    );

    // A truncated library that a binary needs cannot be loaded: a failure.
    img.write(
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        &real[..real.len() / 3],
    );
    img.copy("/usr/bin/git", "/usr/bin/git");
    let pcre = ldd("/usr/bin/git")
        .into_iter()
        .find(|(n, _)| n.starts_with("libpcre2"))
        .unwrap();
    img.copy(&pcre.1, &format!("{MULTIARCH}/{}", pcre.0));
    f.commit("git needs a truncated libz");
    let (ok, report, stderr) = drift_json(&f, &["broken"]);
    assert!(!ok, "{report:#}");
    let m = &report_image(&report, "broken")["missing_libraries"][0];
    assert_eq!(m["binary"], "/usr/bin/git");
    assert_eq!(m["library"], "libz.so.1");
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("/lib/x86_64-linux-gnu/libz.so.1 cannot be loaded"),
        "{m}"
    );
    assert!(stderr.contains("/usr/bin/git needs libz.so.1"), "{stderr}");
}

/// Issue 15: in a repository with no hand-kept provider index, a binary
/// that needs libraries nothing curated provides makes drift name each
/// library and the Debian package that ships it, from Debian's Contents
/// index as this machine's apt keeps it (apt-file's data); the hand-kept
/// index still overrides; without the Contents index the error says how to
/// get it.
#[test]
fn missing_libraries_are_named_from_debians_contents_index() {
    let binary = "/usr/bin/git";
    let left_out = ["libz.so.1", "libpcre2-8.so.0"];
    let libraries = ldd(binary);
    // The answer, from this machine's dpkg database (not the Contents index).
    let expected: Vec<(String, String)> = left_out
        .iter()
        .map(|name| {
            let (_, path) = libraries
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{binary} must need {name}: {libraries:?}"));
            (name.to_string(), package_of(path))
        })
        .collect();

    let f = Fixture::with_files("drift-contents", &[]);
    let mut img = Image::new(&f, "tool");
    img.entrypoint = Some(binary.into());
    img.binary_with_libraries(binary, &left_out);
    img.curate("git");
    img.curate("libc6");
    img.finish();
    f.commit("git without zlib1g and libpcre2");
    assert!(!f.path("lockfiles/library-index.toml").exists());

    let (ok, report, stderr) = drift_json(&f, &["tool"]);
    assert!(!ok, "drift must fail:\n{report:#}");
    let tool = report_image(&report, "tool");
    assert_eq!(tool["contents_index"], "consulted", "{tool}");
    let missing = tool["missing_libraries"].as_array().unwrap();
    for (library, package) in &expected {
        let m = missing
            .iter()
            .find(|m| m["binary"] == binary && m["library"] == library.as_str())
            .unwrap_or_else(|| panic!("{library} not among missing: {missing:?}"));
        assert_eq!(strings(&m["providers"]), [package.as_str()], "{m}");
        assert!(
            stderr.contains(&format!(
                "{binary} needs {library}: not found; it is provided by package {package}: add it to the image's curated package list"
            )),
            "the error names binary, library and package:\n{stderr}"
        );
    }

    // The hand-kept index overrides the Contents index for what it names.
    let (library, _) = &expected[0];
    f.write(
        "lockfiles/library-index.toml",
        &format!("[libraries]\n\"{library}\" = [\"our-own-build\"]\n"),
    );
    f.commit("hand-kept provider");
    let (ok, report, _) = drift_json(&f, &["tool"]);
    assert!(!ok);
    let missing = report_image(&report, "tool")["missing_libraries"]
        .as_array()
        .unwrap()
        .clone();
    let providers =
        |name: &str| strings(&missing.iter().find(|m| m["library"] == name).unwrap()["providers"]);
    assert_eq!(providers(library), ["our-own-build"]);
    assert_eq!(providers(&expected[1].0), [expected[1].1.clone()]);

    // A machine whose apt keeps no Contents index (its lists folder is
    // empty): the error says how to get one.
    let lists = TempDir::new("apt-lists");
    let conf = lists.path().join("apt.conf");
    fs::write(
        &conf,
        format!("Dir::State::Lists \"{}\";\n", lists.path().display()),
    )
    .unwrap();
    let out = run(f
        .command(&["drift", "--json", "tool"])
        .env("APT_CONFIG", conf.to_str().unwrap()));
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tool = report_image(&report, "tool");
    assert_eq!(tool["contents_index"], "absent", "{tool}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "needs {}: not found; the package that ships it cannot be named: Debian's Contents index is not on this machine (get it with `apt-get install apt-file && apt-get update`",
            expected[1].0
        )),
        "{stderr}"
    );
}
