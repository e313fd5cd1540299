//! Reading a local file as a stream of chunks, for the body of a `GET`: big reads on the
//! blocking pool, a bounded read-ahead so the disk (or page cache) copy overlaps sending
//! the previous chunk, and buffers reused once the connection wrote and dropped them, so a
//! download does not fault fresh pages in for every chunk. (sync-blobs reads a local source
//! the same way; adapters do not depend on each other.)

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    ops::Range,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use futures::{
    stream::{self, BoxStream},
    StreamExt,
};

/// Bytes per read. object_store reads files 8 KiB at a time, each read a blocking-pool task
/// of its own, which caps a large download at about 200 MB/s; figures for this size in
/// `docs/benchmarks.md` (scenario 5).
const FILE_CHUNK: usize = 1024 * 1024;

/// Reads in flight or finished ahead of the chunk the consumer holds. Bounds the extra
/// memory to `READ_AHEAD * FILE_CHUNK`.
const READ_AHEAD: usize = 2;

/// Buffers one body keeps for reuse: the read-ahead plus what the connection holds while
/// writing. A buffer is reused only when nothing refers to it any more; beyond this many,
/// chunks get buffers of their own.
const POOL: usize = 8;

/// The bytes of `range` of `file` as chunks of at most [`FILE_CHUNK`] bytes, in order.
/// Each read is a short blocking-pool task (no thread waits on a slow consumer); at most
/// [`READ_AHEAD`] reads run ahead of the consumer.
pub(crate) fn file_chunks(
    file: File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let slab = usize::try_from(range.end - range.start)
        .unwrap_or(usize::MAX)
        .min(FILE_CHUNK);
    let reader = Arc::new(Reader {
        file: Mutex::new(file),
        path,
        pool: Mutex::new(Pool {
            slabs: Vec::new(),
            slab,
        }),
    });
    let end = range.end;
    stream::iter((range.start..end).step_by(FILE_CHUNK))
        .map(move |offset| {
            let reader = Arc::clone(&reader);
            let len = (end - offset).min(FILE_CHUNK as u64) as usize;
            async move {
                let path = reader.path.clone();
                tokio::task::spawn_blocking(move || reader.read(offset, len))
                    .await
                    .map_err(|e| read_error(&path, std::io::Error::other(e)))?
            }
        })
        .buffered(READ_AHEAD + 1)
        .boxed()
}

struct Reader {
    // Reads may run on several blocking threads at once: each seeks and reads under the
    // lock, so their order does not matter.
    file: Mutex<File>,
    path: PathBuf,
    pool: Mutex<Pool>,
}

impl Reader {
    fn read(&self, offset: u64, len: usize) -> object_store::Result<Bytes> {
        let mut buffer = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(len);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buffer))
            .map_err(|e| read_error(&self.path, e))?;
        Ok(buffer.freeze())
    }
}

fn read_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("cannot read {}: {e}", path.display()).into(),
    }
}

/// Read buffers of one stream, each handed out again once every chunk cut from it was
/// dropped (`BytesMut::try_reclaim`), so its pages stay mapped.
struct Pool {
    slabs: Vec<BytesMut>,
    slab: usize,
}

impl Pool {
    /// A zeroed buffer of `len` bytes (at most one slab).
    fn take(&mut self, len: usize) -> BytesMut {
        let slab = self.slab;
        let index = match self.slabs.iter_mut().position(|s| s.try_reclaim(slab)) {
            Some(i) => i,
            None if self.slabs.len() < POOL => {
                self.slabs.push(BytesMut::with_capacity(slab));
                self.slabs.len() - 1
            }
            None => return BytesMut::zeroed(len),
        };
        let s = &mut self.slabs[index];
        s.clear();
        s.resize(len, 0);
        s.split()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, File, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file, path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_cover_the_range_in_order() {
        let bytes: Vec<u8> = (0..3 * FILE_CHUNK + 12_345).map(|i| i as u8).collect();
        for range in [
            0..bytes.len() as u64,
            7..bytes.len() as u64 - 3,
            FILE_CHUNK as u64..2 * FILE_CHUNK as u64,
            5..5,
        ] {
            let (_dir, file, path) = file_of(&bytes);
            let chunks: Vec<Bytes> = file_chunks(file, path, range.clone())
                .map(|c| c.unwrap())
                .collect()
                .await;
            assert!(chunks
                .iter()
                .all(|c| c.len() <= FILE_CHUNK && !c.is_empty()));
            assert_eq!(
                chunks.concat(),
                bytes[range.start as usize..range.end as usize]
            );
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_range_fails() {
        let (_dir, file, path) = file_of(&[1u8; 100]);
        let results: Vec<_> = file_chunks(file, path, 0..200).collect().await;
        assert!(results.last().unwrap().is_err());
    }

    #[test]
    fn buffers_are_reused_only_once_dropped() {
        let mut pool = Pool {
            slabs: Vec::new(),
            slab: 16,
        };
        let a = pool.take(16).freeze();
        let b = pool.take(16).freeze();
        assert_eq!(pool.slabs.len(), 2);
        let a_ptr = a.as_ptr();
        drop(a);
        // The first slab is free again and reused, not a new allocation.
        let c = pool.take(16);
        assert_eq!(pool.slabs.len(), 2);
        assert_eq!(c.as_ptr(), a_ptr);
        assert!(c.iter().all(|&x| x == 0));
        drop(b);
        // Beyond the cap, chunks get buffers of their own.
        let held: Vec<Bytes> = (0..POOL + 2).map(|_| pool.take(16).freeze()).collect();
        assert_eq!(pool.slabs.len(), POOL);
        assert_eq!(held.len(), POOL + 2);
    }
}
