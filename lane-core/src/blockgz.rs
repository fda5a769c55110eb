//! Parallel gzip with output that does not depend on the number of threads.
//!
//! pigz's format: the input is cut into blocks of [`BLOCK`] bytes at fixed
//! offsets; each block is deflated on its own, with the 32 KiB of input
//! before it as the preset dictionary, and ends with a sync flush (an empty
//! stored block, so the next block starts on a byte boundary); after the
//! last block comes an empty final block. The concatenation is one deflate
//! stream in one gzip member, readable by any gunzip. Each block's bytes are
//! a function of the block and the 32 KiB before it, so `workers` only
//! changes how many blocks are compressed at once, never the output.
//!
//! Memory: `workers` blocks of input and their compressed output.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress};

/// Input bytes per independently compressed block.
pub const BLOCK: usize = 1 << 20;
/// The preset dictionary: the input just before a block (deflate's window).
const DICTIONARY: usize = 32 << 10;

/// A gzip writer compressing [`BLOCK`]-sized blocks on `workers` threads.
/// Call [`BlockGz::finish`] to write the last block and the trailer.
pub struct BlockGz<W: Write> {
    out: W,
    level: u32,
    workers: usize,
    /// Full blocks waiting to be compressed, at most `workers`.
    pending: Vec<Vec<u8>>,
    /// The block being filled.
    current: Vec<u8>,
    /// The last [`DICTIONARY`] bytes of input before `pending[0]`.
    dictionary: Vec<u8>,
    crc: Crc,
}

impl<W: Write> BlockGz<W> {
    /// Writes the gzip header (mtime 0, no name, OS "unknown": the same
    /// header as the lane's single-stream encoder) and returns the writer.
    pub fn new(mut out: W, level: u32, workers: usize) -> io::Result<BlockGz<W>> {
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl(level), 255])?;
        Ok(BlockGz {
            out,
            level,
            workers: workers.max(1),
            pending: Vec::new(),
            current: Vec::with_capacity(BLOCK),
            dictionary: Vec::new(),
            crc: Crc::new(),
        })
    }

    /// Compresses the pending blocks (in parallel) and writes them in order.
    fn compress_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let level = self.level;
        let dictionaries: Vec<&[u8]> = std::iter::once(self.dictionary.as_slice())
            .chain(self.pending.iter().map(|b| tail(b)))
            .collect();
        let outputs: Vec<io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pending
                .iter()
                .zip(&dictionaries)
                .skip(1)
                .map(|(block, dict)| s.spawn(move || deflate_block(level, dict, block)))
                .collect();
            // The first block on this thread, the others on their own.
            let mut out = vec![deflate_block(level, dictionaries[0], &self.pending[0])];
            out.extend(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked")))
            }));
            out
        });
        for o in outputs {
            self.out.write_all(&o?)?;
        }
        let last = self.pending.pop().unwrap_or_default();
        self.dictionary = tail(&last).to_vec();
        self.pending.clear();
        Ok(())
    }

    /// The last block, the final empty block and the trailer (CRC-32 and
    /// size modulo 2^32); returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() {
            let block = std::mem::take(&mut self.current);
            self.pending.push(block);
        }
        self.compress_pending()?;
        let mut last = Compress::new(Compression::new(self.level), false);
        let mut end = Vec::with_capacity(16);
        last.compress_vec(&[], &mut end, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        self.out.write_all(&end)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for BlockGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.current.len() == BLOCK {
            if self.pending.len() == self.workers {
                self.compress_pending()?;
            }
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(BLOCK));
            self.pending.push(full);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are cut at fixed offsets: nothing is written early.
        Ok(())
    }
}

/// The gzip header's XFL byte as flate2 writes it for `level`.
fn xfl(level: u32) -> u8 {
    match level {
        9.. => 2,
        0 | 1 => 4,
        _ => 0,
    }
}

fn tail(block: &[u8]) -> &[u8] {
    &block[block.len().saturating_sub(DICTIONARY)..]
}

/// One block as raw deflate with `dictionary` preset, ending in a sync
/// flush.
fn deflate_block(level: u32, dictionary: &[u8], input: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(1024));
        }
        let done = c.total_in() as usize;
        c.compress_vec(&input[done..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        // The flush is complete when all input is in and output room is left.
        if c.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn text(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(20) {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(format!("word{} ", x % 300).as_bytes());
            }
        }
        out.truncate(n);
        out
    }

    fn compress(input: &[u8], workers: usize, chunk: usize) -> Vec<u8> {
        let mut gz = BlockGz::new(Vec::new(), 6, workers).unwrap();
        for c in input.chunks(chunk) {
            gz.write_all(c).unwrap();
        }
        gz.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_output_is_the_same_for_any_number_of_workers_and_writes() {
        for size in [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            3 * BLOCK + 777,
        ] {
            let input = text(size);
            let one = compress(&input, 1, 4096);
            for (workers, chunk) in [(2, 1 << 20), (3, 1000), (8, 65536)] {
                assert_eq!(compress(&input, workers, chunk), one, "size {size}");
            }
            assert_eq!(gunzip(&one), input, "size {size}");
        }
    }

    #[test]
    fn blocks_see_the_previous_block_as_dictionary() {
        // Data repeated across a block boundary: the second copy is found
        // through the dictionary and costs almost nothing.
        let unit = text(64 << 10);
        let mut input = text(BLOCK - (64 << 10));
        input.extend_from_slice(&unit);
        let one_block = compress(&input, 1, 1 << 16).len();
        // The second block: the 16 KiB that end the first (within the
        // distance deflate can reach back).
        input.extend_from_slice(&unit[48 << 10..]);
        let two_blocks = compress(&input, 2, 1 << 16).len();
        assert!(two_blocks < one_block + 1024, "{one_block} -> {two_blocks}");
    }
}
