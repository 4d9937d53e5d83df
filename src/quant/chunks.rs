//! Calibration activations as lists of chunks, held in memory or spilled to disk (`--max-memory`).
//!
//! Every large buffer of the quantization job is a list of `[chunk_seqs, seqlen, width]` chunks
//! (one chunk per `--batch-size` calibration sequences): the residual stream, the four captured
//! linear inputs of the current layer, and the search's full-precision block outputs. Under a
//! [`SpillPolicy`] with a directory, each list keeps its first `keep` chunks in memory and writes
//! the rest to files there (raw little-endian f32), reading one back whenever it is used. Values
//! round-trip bit for bit, so the quantized output does not depend on the cap, only the time.

use crate::engine::llama::{download, upload};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Chunks of one list read back (and processed concurrently) at a time by the calibration chain
/// and the search; `--max-memory` reserves room for this many per list.
pub const READ_BATCH: usize = 2;

/// Where chunks go: how many of each list stay in memory, and the directory for the rest.
#[derive(Debug, Clone)]
pub struct SpillPolicy {
    dir: Option<Arc<PathBuf>>,
    keep: usize,
    /// Chunks written to disk so far, by every list under this policy (for the report).
    written: Arc<AtomicUsize>,
}

impl Default for SpillPolicy {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl SpillPolicy {
    /// Everything in memory.
    pub fn in_memory() -> Self {
        SpillPolicy { dir: None, keep: usize::MAX, written: Arc::default() }
    }

    /// Keep the first `keep` chunks of every list in memory, write the others under `dir`
    /// (created if missing).
    pub fn spill_to(dir: PathBuf, keep: usize) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        Ok(SpillPolicy { dir: Some(Arc::new(dir)), keep, written: Arc::default() })
    }

    /// Chunks per list kept in memory (`usize::MAX` without a cap).
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// How many chunks have been written to disk so far.
    pub fn chunks_written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }
}

enum Slot<B: Backend> {
    Mem(Tensor<B, 3>),
    Disk { path: PathBuf, dims: [usize; 3] },
}

/// One activation buffer: a list of `[b, s, width]` chunks in sequence order.
pub struct Chunks<B: Backend> {
    slots: Vec<Slot<B>>,
    policy: SpillPolicy,
    device: B::Device,
}

/// Unique file names across all lists of the process.
static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

impl<B: Backend> Chunks<B> {
    pub fn new(policy: &SpillPolicy, device: &B::Device) -> Self {
        Chunks { slots: Vec::new(), policy: policy.clone(), device: device.clone() }
    }

    /// A list held in memory whatever the policy (tests, single-chunk views).
    pub fn resident(chunks: Vec<Tensor<B, 3>>, device: &B::Device) -> Self {
        Chunks { slots: chunks.into_iter().map(Slot::Mem).collect(), policy: SpillPolicy::in_memory(), device: device.clone() }
    }

    /// An empty list under the same policy (for buffers derived from this one).
    pub fn like(&self) -> Self {
        Chunks::new(&self.policy, &self.device)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn dims(&self, i: usize) -> [usize; 3] {
        match &self.slots[i] {
            Slot::Mem(t) => t.dims(),
            Slot::Disk { dims, .. } => *dims,
        }
    }

    /// Tokens over all chunks (`Σ b·s`).
    pub fn tokens(&self) -> usize {
        (0..self.len()).map(|i| self.dims(i)).map(|[b, s, _]| b * s).sum()
    }

    /// The last dimension (0 for an empty list).
    pub fn width(&self) -> usize {
        if self.is_empty() { 0 } else { self.dims(0)[2] }
    }

    /// Chunk `i`, read back from disk if it was spilled.
    pub fn get(&self, i: usize) -> Result<Tensor<B, 3>> {
        match &self.slots[i] {
            Slot::Mem(t) => Ok(t.clone()),
            Slot::Disk { path, dims } => {
                let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
                let n = dims.iter().product::<usize>();
                if bytes.len() != n * 4 {
                    return Err(Error::internal(format!("{}: {} bytes, expected {} (spill file changed underneath the job?)", path.display(), bytes.len(), n * 4)));
                }
                let data = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                Ok(upload(data, *dims, &self.device))
            }
        }
    }

    /// Chunks `range` (at most a few at a time: each may be read from disk).
    pub fn get_range(&self, range: std::ops::Range<usize>) -> Result<Vec<Tensor<B, 3>>> {
        range.map(|i| self.get(i)).collect()
    }

    /// Append a chunk: kept in memory while the list holds fewer than `keep` chunks, else written
    /// to the spill directory.
    pub fn push(&mut self, t: Tensor<B, 3>) -> Result<()> {
        let slot = self.place(t)?;
        self.slots.push(slot);
        Ok(())
    }

    /// Replace chunk `i` (same place: memory or its file).
    pub fn set(&mut self, i: usize, t: Tensor<B, 3>) -> Result<()> {
        match &self.slots[i] {
            Slot::Mem(_) => self.slots[i] = Slot::Mem(t),
            Slot::Disk { path, .. } => {
                let path = path.clone();
                let dims = t.dims();
                write_f32(&path, &download(t))?;
                self.slots[i] = Slot::Disk { path, dims };
            }
        }
        Ok(())
    }

    fn place(&self, t: Tensor<B, 3>) -> Result<Slot<B>> {
        match &self.policy.dir {
            Some(dir) if self.slots.len() >= self.policy.keep => {
                let path = dir.join(format!("chunk-{}.f32", NEXT_FILE.fetch_add(1, Ordering::Relaxed)));
                let dims = t.dims();
                write_f32(&path, &download(t))?;
                self.policy.written.fetch_add(1, Ordering::Relaxed);
                Ok(Slot::Disk { path, dims })
            }
            _ => Ok(Slot::Mem(t)),
        }
    }
}

impl<B: Backend> Drop for Chunks<B> {
    fn drop(&mut self) {
        for s in &self.slots {
            if let Slot::Disk { path, .. } = s {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn write_f32(path: &std::path::Path, v: &[f32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::engine::device::CpuBackend;

    #[test]
    fn spilled_chunks_round_trip_exactly_and_are_removed_on_drop() {
        let dev = Default::default();
        let dir = std::env::temp_dir().join(format!("awqc-chunks-test-{}", std::process::id()));
        let policy = SpillPolicy::spill_to(dir.clone(), 1).unwrap();
        let vals = |seed: u32, n: usize| -> Vec<f32> { (0..n).map(|i| f32::from_bits(0x3f00_0000 ^ (seed.wrapping_mul(2654435761) ^ (i as u32 * 97)) & 0x807f_ffff)).collect() };
        let mut c = Chunks::<B>::new(&policy, &dev);
        for k in 0..3u32 {
            c.push(upload(vals(k, 2 * 5 * 3), [2, 5, 3], &dev)).unwrap();
        }
        assert_eq!(policy.chunks_written(), 2, "the first chunk stays in memory, two go to disk");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        assert_eq!((c.tokens(), c.width()), (30, 3));
        for k in 0..3u32 {
            let got = download(c.get(k as usize).unwrap());
            assert!(got.iter().zip(vals(k, 30)).all(|(a, b)| a.to_bits() == b.to_bits()), "chunk {k}");
        }
        // Replacing a spilled chunk rewrites its file.
        c.set(2, upload(vals(9, 30), [2, 5, 3], &dev)).unwrap();
        assert_eq!(download(c.get(2).unwrap()), vals(9, 30));
        drop(c);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "spill files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
