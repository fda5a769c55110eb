//! Deterministic layer encoding: tar, then gzip, both digests in one pass.
//!
//! This module does no I/O of its own. It takes a list of [`Entry`] values and
//! a [`Contents`] implementation that opens file contents, and writes the
//! compressed layer to any `Write`. The rules that make the bytes a function of
//! the entries alone:
//!
//! - entries sorted bytewise by path; a prefix sorts first, so parents come
//!   before children; every parent directory is an explicit entry;
//! - mtime = SOURCE_DATE_EPOCH, uid/gid as declared, uname/gname empty,
//!   modes as declared (masked to 0o7777), no atime/ctime/xattrs;
//! - one header format (GNU, with GNU long names), one writer (the `tar` crate);
//! - gzip from `flate2` with its zlib-rs backend (pure Rust) at [`GZIP_LEVEL`], mtime 0,
//!   no file name, OS byte "unknown": one deflate stream for a layer whose
//!   files hold less than [`BLOCKS_FROM`] bytes, else [`crate::blockgz`]'s
//!   blocks (compressed on many cores, the same bytes for any number).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::id::Digest;
use crate::spec::{ImagePath, Owner};

/// The compression level every layer uses. Part of every cache key.
pub const GZIP_LEVEL: u32 = 6;

/// From this many bytes of file content a layer is compressed in blocks
/// ([`crate::blockgz`]) on every core; smaller layers are one stream (their
/// bytes are those of format 1).
pub const BLOCKS_FROM: u64 = 64 << 20;

/// Names the encoder in cache keys and provenance; bump `format` when the
/// byte layout of a layer changes for the same entries.
pub fn encoder_id() -> String {
    format!(
        "lane-layer/format=2 tar=0.4 flate2=1/zlib-rs gzip-level={GZIP_LEVEL} header=gnu blocks={}KiB-from={}MiB",
        crate::blockgz::BLOCK >> 10,
        BLOCKS_FROM >> 20
    )
}

/// Whether [`encode`] compresses `entries` in blocks.
pub fn in_blocks(entries: &[Entry]) -> bool {
    let content: u64 = entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    content >= BLOCKS_FROM
}

/// The gzip writer of one layer: one stream, or blocks.
enum Gz<W: Write> {
    Stream(flate2::write::GzEncoder<W>),
    Blocks(crate::blockgz::BlockGz<W>),
}

impl<W: Write> Write for Gz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Gz::Stream(w) => w.write(buf),
            Gz::Blocks(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Gz::Stream(w) => w.flush(),
            Gz::Blocks(w) => w.flush(),
        }
    }
}

impl<W: Write> Gz<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Gz::Stream(w) => w.finish(),
            Gz::Blocks(w) => w.finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file; `source` is an opaque handle the [`Contents`] opens.
    File {
        source: String,
        size: u64,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: ImagePath,
    pub kind: EntryKind,
    pub mode: u32,
    pub owner: Owner,
}

/// Opens file contents by the handle stored in [`EntryKind::File`].
pub trait Contents {
    fn open(&mut self, source: &str) -> io::Result<Box<dyn Read + '_>>;
}

/// What encoding one layer produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigests {
    /// `sha256:` of the gzip blob (the layer digest).
    pub digest: Digest,
    /// `sha256:` of the uncompressed tar (the diff_id).
    pub diff_id: Digest,
    /// Size of the gzip blob in bytes.
    pub size: u64,
    /// Size of the tar stream in bytes.
    pub tar_size: u64,
}

/// Sorts the entries, adds every missing parent directory (0755, root-owned),
/// and refuses two entries for one path unless both are identical
/// directories. Returns the final entry list in tar order.
pub fn normalise(entries: Vec<Entry>) -> Result<Vec<Entry>> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        let key = e.path.as_str().to_string();
        if let Some(prev) = by_path.get(&key) {
            if !(prev.kind == EntryKind::Dir && e.kind == EntryKind::Dir) {
                bail!(
                    "two entries of one layer write {}; give each destination once per layer",
                    e.path
                );
            }
            if prev != &e {
                bail!(
                    "directory {} is declared twice with different mode or owner; declare it once",
                    e.path
                );
            }
        }
        by_path.insert(key, e);
    }
    let mut parents = Vec::new();
    for e in by_path.values() {
        for a in e.path.ancestors() {
            match by_path.get(a.as_str()) {
                Some(p) if p.kind != EntryKind::Dir => {
                    bail!(
                        "{} is a {}, but {} needs it to be a directory",
                        a,
                        kind_name(&p.kind),
                        e.path
                    )
                }
                Some(_) => {}
                None => parents.push(Entry {
                    path: a,
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    owner: Owner::ROOT,
                }),
            }
        }
    }
    for p in parents {
        by_path.entry(p.path.as_str().to_string()).or_insert(p);
    }
    // BTreeMap<String> iterates bytewise: parents before children.
    Ok(by_path.into_values().collect())
}

fn kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::Dir => "directory",
        EntryKind::File { .. } => "file",
        EntryKind::Symlink { .. } => "symlink",
    }
}

/// A writer that hashes and counts everything passing through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what is read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The digest (`sha256:<hex>`) of a byte slice.
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// Encodes `entries` (already [`normalise`]d) as a gzip-compressed tar into
/// `out`. Returns the digests and, for every file entry, the sha256 of the
/// content it read (keyed by source handle), so callers can cache them.
pub fn encode<W: Write>(
    entries: &[Entry],
    mtime: u64,
    contents: &mut dyn Contents,
    out: W,
) -> Result<(LayerDigests, BTreeMap<String, Digest>)> {
    encode_on(entries, mtime, contents, out, 1)
}

/// [`encode`], a layer in blocks compressed on `workers` threads (the
/// bytes are the same for any `workers`).
pub fn encode_on<W: Write>(
    entries: &[Entry],
    mtime: u64,
    contents: &mut dyn Contents,
    out: W,
    workers: usize,
) -> Result<(LayerDigests, BTreeMap<String, Digest>)> {
    let compressed = HashWriter::new(out);
    let gz = if in_blocks(entries) {
        Gz::Blocks(crate::blockgz::BlockGz::new(
            compressed, GZIP_LEVEL, workers,
        )?)
    } else {
        Gz::Stream(
            flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(compressed, flate2::Compression::new(GZIP_LEVEL)),
        )
    };
    let (tar_hash, file_digests) = write_tar(entries, mtime, contents, HashWriter::new(gz))?;
    let (gz, diff_id, tar_size) = tar_hash.finish();
    let compressed = gz.finish().context("finishing the gzip stream")?;
    let (mut out, digest, size) = compressed.finish();
    out.flush()?;
    Ok((
        LayerDigests {
            digest,
            diff_id,
            size,
            tar_size,
        },
        file_digests,
    ))
}

/// The diff_id and size of the tar [`encode`] writes for `entries`,
/// without compressing: what a layer taken from a shared cache must
/// decompress to.
pub fn tar_digest(
    entries: &[Entry],
    mtime: u64,
    contents: &mut dyn Contents,
) -> Result<(Digest, u64)> {
    tar_digests(entries, mtime, contents).map(|(tar, _)| tar)
}

/// [`tar_digest`] and, from the same pass, every file's content digest
/// (keyed by source handle, as [`encode`] returns them).
pub fn tar_digests(
    entries: &[Entry],
    mtime: u64,
    contents: &mut dyn Contents,
) -> Result<((Digest, u64), BTreeMap<String, Digest>)> {
    let (hashed, files) = write_tar(entries, mtime, contents, HashWriter::new(io::sink()))?;
    let (_, diff_id, size) = hashed.finish();
    Ok(((diff_id, size), files))
}

/// The layer's tar stream into `out`, and each file's content digest.
fn write_tar<W: Write>(
    entries: &[Entry],
    mtime: u64,
    contents: &mut dyn Contents,
    out: W,
) -> Result<(W, BTreeMap<String, Digest>)> {
    let mut builder = tar::Builder::new(out);
    let mut file_digests = BTreeMap::new();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(e.owner.uid);
        header.set_gid(e.owner.gid);
        header.set_mode(e.mode & 0o7777);
        match &e.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{}/", e.path.as_str()), io::empty())
                    .with_context(|| format!("writing directory {} to the layer", e.path))?;
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, e.path.as_str(), target)
                    .with_context(|| format!("writing symlink {} to the layer", e.path))?;
            }
            EntryKind::File { source, size } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                let reader = contents
                    .open(source)
                    .with_context(|| format!("opening {source}"))?;
                let mut hashed = HashReader::new(reader);
                builder
                    .append_data(&mut header, e.path.as_str(), (&mut hashed).take(*size))
                    .with_context(|| format!("writing {} (from {source}) to the layer", e.path))?;
                let (digest, read) = hashed.finish();
                if read != *size {
                    bail!(
                        "{source} changed size while the layer was written ({size} bytes expected, {read} read); build again"
                    );
                }
                file_digests.insert(source.clone(), digest);
            }
        }
    }
    let out = builder.into_inner().context("finishing the tar stream")?;
    Ok((out, file_digests))
}

/// The action-cache key of a layer: a digest over the encoder identity, the
/// mtime and every entry's metadata and content digest. Equal keys mean equal
/// layer bytes, so a cached blob can be reused without reading any file.
pub fn cache_key(
    entries: &[Entry],
    mtime: u64,
    content_digest: &dyn Fn(&str) -> Option<String>,
) -> Option<Digest> {
    let mut h = Sha256::new();
    h.update(encoder_id().as_bytes());
    h.update(format!("\nmtime={mtime}\n").as_bytes());
    for e in entries {
        let kind = match &e.kind {
            EntryKind::Dir => "dir".to_string(),
            EntryKind::Symlink { target } => format!("symlink {target:?}"),
            EntryKind::File { source, size } => format!("file {size} {}", content_digest(source)?),
        };
        h.update(
            format!(
                "{:?} {:o} {}:{} {kind}\n",
                e.path.as_str(),
                e.mode,
                e.owner.uid,
                e.owner.gid
            )
            .as_bytes(),
        );
    }
    Some(Digest::from_sha256(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(BTreeMap<String, Vec<u8>>);
    impl Contents for Mem {
        fn open(&mut self, source: &str) -> io::Result<Box<dyn Read + '_>> {
            Ok(Box::new(io::Cursor::new(self.0[source].clone())))
        }
    }

    fn file(path: &str, source: &str, size: u64) -> Entry {
        Entry {
            path: ImagePath::parse(path).unwrap(),
            kind: EntryKind::File {
                source: source.into(),
                size,
            },
            mode: 0o644,
            owner: Owner::ROOT,
        }
    }

    fn encode_mem(entries: Vec<Entry>, mem: BTreeMap<String, Vec<u8>>) -> (LayerDigests, Vec<u8>) {
        let entries = normalise(entries).unwrap();
        let mut out = Vec::new();
        let (d, _) = encode(&entries, 1_700_000_000, &mut Mem(mem), &mut out).unwrap();
        (d, out)
    }

    #[test]
    fn parents_are_explicit_and_first() {
        let e = normalise(vec![
            file("/b/c/d", "x", 1),
            file("/a-b", "y", 1),
            file("/b/a", "z", 1),
        ])
        .unwrap();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a-b", "b", "b/a", "b/c", "b/c/d"]);
        assert_eq!(e[1].kind, EntryKind::Dir);
    }

    #[test]
    fn duplicate_file_is_refused() {
        let err = normalise(vec![file("/a", "x", 1), file("/a", "y", 1)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("two entries of one layer write /a"),
            "{err}"
        );
    }

    #[test]
    fn file_under_file_is_refused() {
        let err = normalise(vec![file("/a", "x", 1), file("/a/b", "y", 1)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("/a is a file, but /a/b needs it to be a directory"),
            "{err}"
        );
    }

    #[test]
    fn encoding_is_a_function_of_the_entries() {
        let mem = BTreeMap::from([("x".to_string(), b"hello".to_vec())]);
        let (d1, b1) = encode_mem(vec![file("/etc/x", "x", 5)], mem.clone());
        // Same entries given in another order: same bytes.
        let (d2, b2) = encode_mem(vec![file("/etc/x", "x", 5)], mem);
        assert_eq!(b1, b2);
        assert_eq!(d1, d2);
        assert_eq!(d1.digest, sha256(&b1));
        assert_eq!(d1.size, b1.len() as u64);
        // gzip header: magic, deflate, no flags (no name), mtime 0, OS 255.
        assert_eq!(&b1[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        // diff_id is the digest of the decompressed tar.
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&b1[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(d1.diff_id, sha256(&tar));
        assert_eq!(d1.tar_size, tar.len() as u64);
    }

    /// A golden digest: if the tar writer, the gzip backend or its level
    /// change, every layer digest changes, and this test says so first.
    #[test]
    fn encoder_output_is_pinned() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} of the golden layer\n").into_bytes())
            .collect();
        let n = text.len() as u64;
        let (d, _) = encode_mem(
            vec![file("/golden.txt", "g", n)],
            BTreeMap::from([("g".into(), text)]),
        );
        assert_eq!(
            (d.digest.as_str(), d.diff_id.as_str()),
            (
                "sha256:737249fb57ee6a05f9cf80efdc9af54bc0d29f3aeb9b93a3ec490791784f061e",
                "sha256:ae73c205dc854fa524d206c76e4a5d18b5ca96eee791a63db4660628d60430ec"
            ),
            "the layer encoder changed; bump encoder_id's format and update this digest on purpose"
        );
    }

    /// A layer of BLOCKS_FROM bytes and more is compressed in blocks: the
    /// same bytes on one thread or four, one gzip member that decompresses
    /// to the tar of the diff_id, pinned like the single stream.
    #[test]
    fn a_large_layer_is_compressed_in_blocks_the_same_on_any_number_of_threads() {
        let n = BLOCKS_FROM as usize + 12345;
        let mut x: u64 = 1;
        let big: Vec<u8> = (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 64 < 8 {
                    (x >> 56) as u8
                } else {
                    b"lane layer "[i % 11]
                }
            })
            .collect();
        let entries = normalise(vec![file("/big.bin", "b", n as u64)]).unwrap();
        assert!(in_blocks(&entries));
        let run = |workers| {
            let mut out = Vec::new();
            let (d, _) = encode_on(
                &entries,
                1_700_000_000,
                &mut Mem(BTreeMap::from([("b".into(), big.clone())])),
                &mut out,
                workers,
            )
            .unwrap();
            (d, out)
        };
        let (one, bytes) = run(1);
        let (four, bytes4) = run(4);
        assert_eq!(one, four);
        assert!(bytes == bytes4);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(one.diff_id, sha256(&tar));
        assert_eq!(
            one.digest.as_str(),
            "sha256:4af3a26fc104dc32c8c4f44f6b2949285f077c39806489119d3452dec3f16c33",
            "the block encoder changed; bump encoder_id's format and update this digest on purpose"
        );
    }

    #[test]
    fn one_byte_changes_the_digest() {
        let (a, _) = encode_mem(
            vec![file("/x", "x", 5)],
            BTreeMap::from([("x".into(), b"hello".to_vec())]),
        );
        let (b, _) = encode_mem(
            vec![file("/x", "x", 5)],
            BTreeMap::from([("x".into(), b"hellp".to_vec())]),
        );
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.diff_id, b.diff_id);
    }

    #[test]
    fn headers_are_normalised() {
        let mem = BTreeMap::from([("x".to_string(), b"hi".to_vec())]);
        let mut entries = vec![file("/opt/app/x", "x", 2)];
        entries[0].mode = 0o100755; // file-type bits are masked off
        entries[0].owner = Owner { uid: 10, gid: 20 };
        let (_, gz) = encode_mem(entries, mem);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            assert!(h.as_gnu().is_some());
            assert_eq!(h.username().unwrap(), Some(""));
            seen.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("opt/".to_string(), 0o755, 0, 0),
                ("opt/app/".to_string(), 0o755, 0, 0),
                ("opt/app/x".to_string(), 0o755, 10, 20)
            ]
        );
    }

    #[test]
    fn long_paths_round_trip() {
        let long = format!("/{}/file", "d".repeat(150));
        let (_, gz) = encode_mem(
            vec![file(&long, "x", 1)],
            BTreeMap::from([("x".into(), b"a".to_vec())]),
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.last().unwrap(), &long[1..]);
    }

    #[test]
    fn cache_key_tracks_content_and_metadata() {
        let e = normalise(vec![file("/x", "x", 5)]).unwrap();
        let k1 = cache_key(&e, 1, &|_| Some("sha256:aa".into())).unwrap();
        assert_eq!(k1, cache_key(&e, 1, &|_| Some("sha256:aa".into())).unwrap());
        assert_ne!(k1, cache_key(&e, 1, &|_| Some("sha256:ab".into())).unwrap());
        assert_ne!(k1, cache_key(&e, 2, &|_| Some("sha256:aa".into())).unwrap());
        assert!(cache_key(&e, 1, &|_| None).is_none());
    }
}
