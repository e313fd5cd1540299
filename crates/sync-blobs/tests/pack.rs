//! Small blobs packed in a database (decision 0014): what `ObjectBlobs::with_pack` and
//! `PackedStore` do that a plain store does not, on a real directory with the in-memory
//! pack. (The SQL packs run the pack conformance suite of sync-testkit; the blob
//! conformance suite runs over packed stores in `conformance.rs`.)

use std::sync::Arc;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sync_blobs::{
    object_store::{
        path::Path, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
        PutPayload,
    },
    MemoryPack, ObjectBlobs, PackedStore,
};
use sync_core::{BlobDigest, BlobError, BlobManifest, BlobPack, BlobStore, Transferred};

const LIMIT: u64 = 1024;

struct Rig {
    dir: tempfile::TempDir,
    pack: MemoryPack,
    blobs: ObjectBlobs,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pack = MemoryPack::new();
    let blobs = ObjectBlobs::filesystem(dir.path())
        .unwrap()
        .with_pack(Arc::new(pack.clone()), LIMIT);
    Rig { dir, pack, blobs }
}

impl Rig {
    fn file(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join(key)
    }

    async fn packed(&self, key: &str) -> Option<Vec<u8>> {
        self.pack
            .get(&[key.to_string()])
            .await
            .unwrap()
            .pop()
            .flatten()
            .map(|b| b.bytes)
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        self.blobs.object_store()
    }
}

fn manifest(key: &str, bytes: &[u8]) -> BlobManifest {
    BlobManifest {
        key: key.into(),
        content_hash: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        size_bytes: bytes.len() as u64,
        mime_type: Some("text/plain".into()),
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn a_batch_packs_small_blobs_and_files_large_ones_each_verified() {
    let rig = rig();
    let small = bytes(256, 1);
    let at_limit = bytes(LIMIT as usize, 2);
    let large = bytes(LIMIT as usize + 1, 3);
    let mut wrong = manifest("shared/w/wrong", b"the announced bytes");
    wrong.size_bytes = 5;
    let out = rig
        .blobs
        .write_inline_batch(vec![
            (manifest("shared/s/small", &small), small.clone()),
            (manifest("shared/s/limit", &at_limit), at_limit.clone()),
            (manifest("shared/l/large", &large), large.clone()),
            (wrong, b"other bytes".to_vec()),
            (manifest("shared/../x", b"x"), b"x".to_vec()),
            (manifest("shared/s/small", &small), small.clone()),
        ])
        .await;
    assert!(
        matches!(out[0], Ok(Transferred::Copied { bytes: 256 })),
        "{out:?}"
    );
    assert!(
        matches!(out[1], Ok(Transferred::Copied { bytes: LIMIT })),
        "{out:?}"
    );
    assert!(matches!(out[2], Ok(Transferred::Copied { .. })), "{out:?}");
    assert!(
        matches!(out[3], Err(BlobError::HashMismatch { .. })),
        "{out:?}"
    );
    assert!(
        matches!(out[4], Err(BlobError::InvalidKey { .. })),
        "{out:?}"
    );
    assert!(matches!(out[5], Ok(Transferred::AlreadyPresent)), "{out:?}");

    // Small ones in the pack and not on disk; the large one a file and not in the pack;
    // nothing of the refused one anywhere.
    assert_eq!(rig.packed("shared/s/small").await, Some(small.clone()));
    assert_eq!(rig.packed("shared/s/limit").await, Some(at_limit.clone()));
    assert!(!rig.file("shared/s").exists(), "no file for a packed blob");
    assert_eq!(std::fs::read(rig.file("shared/l/large")).unwrap(), large);
    assert_eq!(rig.packed("shared/l/large").await, None);
    assert_eq!(rig.packed("shared/w/wrong").await, None);
    assert!(!rig.file("shared/w").exists());

    // Read back in one batch: from the pack, from the file, bounded by the limit asked.
    let keys: Vec<String> = [
        "shared/s/small",
        "shared/l/large",
        "shared/none",
        "shared/s/limit",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let read = rig.blobs.read_inline_batch(&keys, 64 * 1024).await;
    let read: Vec<Option<Vec<u8>>> = read.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        read,
        vec![Some(small.clone()), Some(large), None, Some(at_limit)]
    );
    let bounded = rig.blobs.read_inline_batch(&keys[..1], 255).await;
    assert_eq!(
        bounded[0].as_ref().unwrap(),
        &None,
        "larger than asked: not read"
    );
    let refused = rig
        .blobs
        .read_inline_batch(&["a/../b".to_string()], 10)
        .await;
    assert!(matches!(refused[0], Err(BlobError::InvalidKey { .. })));

    // The port sees one store: presence and verified digests from either place.
    assert!(rig.blobs.contains("shared/s/small").await.unwrap());
    assert!(rig.blobs.contains("shared/l/large").await.unwrap());
    assert!(!rig.blobs.contains("shared/w/wrong").await.unwrap());
    match rig.blobs.digest("shared/s/small").await.unwrap() {
        BlobDigest::Sha256 { hex, stamp } => {
            assert_eq!(hex, hex::encode(Sha256::digest(&small)));
            assert_eq!(stamp.size, 256);
            assert_eq!(
                stamp.e_tag,
                Some(format!("\"{hex}\"")),
                "the packed blob's ETag"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_store_routes_writes_by_size_and_a_file_replaces_a_packed_blob() {
    let rig = rig();
    let store = rig.store();
    let key = Path::from("shared/r/1");
    let small = bytes(100, 4);
    let put = store
        .put(&key, PutPayload::from(small.clone()))
        .await
        .unwrap();
    assert_eq!(
        put.e_tag,
        Some(format!("\"{}\"", hex::encode(Sha256::digest(&small))))
    );
    assert_eq!(rig.packed("shared/r/1").await, Some(small.clone()));
    assert!(!rig.file("shared/r/1").exists());
    let got = store.get(&key).await.unwrap();
    assert_eq!(got.meta.size, 100);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &small[..]);

    // A larger version at the same key becomes a file, and the packed one is gone, so it
    // cannot shadow the new bytes.
    let large = bytes(LIMIT as usize * 3, 5);
    store
        .put(&key, PutPayload::from(large.clone()))
        .await
        .unwrap();
    assert_eq!(rig.packed("shared/r/1").await, None);
    assert_eq!(
        store
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &large[..]
    );

    // So does a multipart upload, whatever its size.
    store
        .put(&key, PutPayload::from(small.clone()))
        .await
        .unwrap();
    assert_eq!(rig.packed("shared/r/1").await, Some(small.clone()));
    let mut upload = store.put_multipart(&key).await.unwrap();
    upload
        .put_part(PutPayload::from(b"multi".to_vec()))
        .await
        .unwrap();
    upload.complete().await.unwrap();
    assert_eq!(rig.packed("shared/r/1").await, None);
    assert_eq!(std::fs::read(rig.file("shared/r/1")).unwrap(), b"multi");

    // Create refuses a key held in either place.
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let refused = store
        .put_opts(&key, PutPayload::from(b"x".to_vec()), create.clone())
        .await;
    assert!(
        matches!(
            refused,
            Err(sync_blobs::object_store::Error::AlreadyExists { .. })
        ),
        "{refused:?}"
    );
    let fresh = Path::from("shared/r/2");
    store
        .put_opts(&fresh, PutPayload::from(b"x".to_vec()), create.clone())
        .await
        .unwrap();
    let again = store
        .put_opts(&fresh, PutPayload::from(b"y".to_vec()), create)
        .await;
    assert!(
        matches!(
            again,
            Err(sync_blobs::object_store::Error::AlreadyExists { .. })
        ),
        "{again:?}"
    );
    assert_eq!(rig.packed("shared/r/2").await, Some(b"x".to_vec()));
}

#[tokio::test]
async fn packed_reads_honour_ranges_and_conditions() {
    let rig = rig();
    let store = rig.store();
    let key = Path::from("shared/g/1");
    let data = bytes(200, 6);
    let put = store
        .put(&key, PutPayload::from(data.clone()))
        .await
        .unwrap();
    let ranged = store
        .get_opts(
            &key,
            GetOptions {
                range: Some(GetRange::Bounded(10..20)),
                ..GetOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ranged.range, 10..20);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &data[10..20]);
    let suffix = store
        .get_opts(
            &key,
            GetOptions {
                range: Some(GetRange::Suffix(5)),
                ..GetOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(suffix.bytes().await.unwrap().as_ref(), &data[195..]);
    let beyond = store
        .get_opts(
            &key,
            GetOptions {
                range: Some(GetRange::Offset(500)),
                ..GetOptions::default()
            },
        )
        .await;
    assert!(beyond.is_err(), "a range past the end is refused");
    let unchanged = store
        .get_opts(
            &key,
            GetOptions {
                if_none_match: put.e_tag.clone(),
                ..GetOptions::default()
            },
        )
        .await;
    assert!(
        matches!(
            unchanged,
            Err(sync_blobs::object_store::Error::NotModified { .. })
        ),
        "{unchanged:?}"
    );
    let other = store
        .get_opts(
            &key,
            GetOptions {
                if_match: Some("\"something-else\"".into()),
                ..GetOptions::default()
            },
        )
        .await;
    assert!(
        matches!(
            other,
            Err(sync_blobs::object_store::Error::Precondition { .. })
        ),
        "{other:?}"
    );
    let head = store.head(&key).await.unwrap();
    assert_eq!((head.size, head.e_tag), (200, put.e_tag));
}

#[tokio::test]
async fn listings_merge_the_pack_and_the_files_once_and_deletes_reach_both() {
    let rig = rig();
    let files: Arc<dyn ObjectStore> = {
        // The directory as a plain store: a file "left over" at a key the pack also holds.
        let plain = ObjectBlobs::filesystem(rig.dir.path()).unwrap();
        Arc::clone(plain.object_store())
    };
    files
        .put(
            &Path::from("shared/m/both"),
            PutPayload::from(b"old file".to_vec()),
        )
        .await
        .unwrap();
    files
        .put(
            &Path::from("shared/m/d/file-only"),
            PutPayload::from(b"f".to_vec()),
        )
        .await
        .unwrap();
    let store = rig.store();
    for key in [
        "shared/m/both",
        "shared/m/packed",
        "shared/m/d/packed",
        "shared/mx",
    ] {
        store
            .put(&Path::from(key), PutPayload::from(key.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    // The packed blob shadows the file at the same key.
    assert_eq!(
        store
            .get(&Path::from("shared/m/both"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"shared/m/both"
    );
    let mut listed: Vec<String> = store
        .list(Some(&Path::from("shared/m")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            "shared/m/both",
            "shared/m/d/file-only",
            "shared/m/d/packed",
            "shared/m/packed"
        ],
        "each key once, the prefix's keys only"
    );
    let top = store
        .list_with_delimiter(Some(&Path::from("shared/m")))
        .await
        .unwrap();
    let mut objects: Vec<String> = top.objects.iter().map(|m| m.location.to_string()).collect();
    objects.sort();
    assert_eq!(objects, vec!["shared/m/both", "shared/m/packed"]);
    let prefixes: Vec<String> = top
        .common_prefixes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(prefixes, vec!["shared/m/d"]);

    // A delete removes the packed blob and the shadowed file: nothing is left to reappear.
    store.delete(&Path::from("shared/m/both")).await.unwrap();
    assert!(matches!(
        store.head(&Path::from("shared/m/both")).await,
        Err(sync_blobs::object_store::Error::NotFound { .. })
    ));
    assert!(!rig.file("shared/m/both").exists());
    // A packed-only and a file-only key delete too; a missing key is NotFound as before.
    store.delete(&Path::from("shared/m/packed")).await.unwrap();
    store
        .delete(&Path::from("shared/m/d/file-only"))
        .await
        .unwrap();
    assert!(store.delete(&Path::from("shared/m/nothing")).await.is_err());
}

#[tokio::test]
async fn copies_keep_packed_blobs_packed() {
    let rig = rig();
    let store = rig.store();
    store
        .put(
            &Path::from("shared/c/from"),
            PutPayload::from(b"copy me".to_vec()),
        )
        .await
        .unwrap();
    store
        .copy(&Path::from("shared/c/from"), &Path::from("shared/c/to"))
        .await
        .unwrap();
    assert_eq!(rig.packed("shared/c/to").await, Some(b"copy me".to_vec()));
    store
        .rename(&Path::from("shared/c/to"), &Path::from("shared/c/moved"))
        .await
        .unwrap();
    assert_eq!(rig.packed("shared/c/to").await, None);
    assert_eq!(
        rig.packed("shared/c/moved").await,
        Some(b"copy me".to_vec())
    );
}

#[tokio::test]
async fn a_store_without_the_pack_still_reads_files_written_before_it() {
    // Files a node stored before it packed stay readable through the packed store.
    let dir = tempfile::tempdir().unwrap();
    let plain = ObjectBlobs::filesystem(dir.path()).unwrap();
    let old = bytes(300, 8);
    plain
        .write_inline_batch(vec![(manifest("shared/o/old", &old), old.clone())])
        .await
        .into_iter()
        .for_each(|r| assert!(r.is_ok(), "{r:?}"));
    let packed = ObjectBlobs::filesystem(dir.path())
        .unwrap()
        .with_pack(Arc::new(MemoryPack::new()), LIMIT);
    let read = packed
        .read_inline_batch(&["shared/o/old".into()], 1024)
        .await;
    assert_eq!(read[0].as_ref().unwrap(), &Some(old.clone()));
    assert!(packed.contains("shared/o/old").await.unwrap());
    let got = packed
        .object_store()
        .get(&Path::from("shared/o/old"))
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &old[..]);
}

#[tokio::test]
async fn a_failing_pack_is_a_transient_failure_never_absence() {
    /// A pack whose database is locked.
    struct Busy;
    #[async_trait::async_trait]
    impl BlobPack for Busy {
        async fn get(
            &self,
            _: &[String],
        ) -> Result<Vec<Option<sync_core::PackedBlob>>, sync_core::StoreError> {
            Err(sync_core::StoreError::transient("database is locked"))
        }
        async fn head(
            &self,
            _: &str,
        ) -> Result<Option<sync_core::PackedMeta>, sync_core::StoreError> {
            Err(sync_core::StoreError::transient("database is locked"))
        }
        async fn put(
            &self,
            _: &[sync_core::PackedBlob],
            _: bool,
        ) -> Result<Vec<bool>, sync_core::StoreError> {
            Err(sync_core::StoreError::transient("database is locked"))
        }
        async fn remove(&self, _: &str) -> Result<bool, sync_core::StoreError> {
            Err(sync_core::StoreError::transient("database is locked"))
        }
        async fn list(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<sync_core::PackListing, sync_core::StoreError> {
            Err(sync_core::StoreError::transient("database is locked"))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let blobs = ObjectBlobs::filesystem(dir.path())
        .unwrap()
        .with_pack(Arc::new(Busy), LIMIT);
    let large = bytes(LIMIT as usize + 10, 7);
    let out = blobs
        .write_inline_batch(vec![
            (manifest("shared/f/small", b"small"), b"small".to_vec()),
            (manifest("shared/f/large", &large), large.clone()),
        ])
        .await;
    assert!(
        matches!(out[0], Err(BlobError::Transient { .. })),
        "{out:?}"
    );
    // The large one cannot be stored either: its key might be packed already.
    assert!(
        matches!(out[1], Err(BlobError::Transient { .. })),
        "{out:?}"
    );
    assert!(!dir.path().join("shared/f").exists());
    // Through the object store too: a busy pack is a transient failure, never "absent".
    let contains = blobs.contains("shared/f/small").await;
    assert!(
        matches!(contains, Err(BlobError::Transient { .. })),
        "{contains:?}"
    );
    let read = blobs
        .read_inline_batch(&["shared/f/small".into()], 100)
        .await;
    assert!(
        matches!(read[0], Err(BlobError::Transient { .. })),
        "{read:?}"
    );
}

#[tokio::test]
async fn a_blob_already_packed_is_kept_whatever_its_new_size() {
    // With a limit below the inline limit, an inline blob can be larger than the pack takes:
    // its key already packed (a smaller version) is present, so nothing is written.
    let rig = rig();
    let small = bytes(10, 1);
    rig.blobs
        .write_inline_batch(vec![(manifest("shared/k/1", &small), small.clone())])
        .await;
    let large = bytes(LIMIT as usize * 2, 2);
    let out = rig
        .blobs
        .write_inline_batch(vec![(manifest("shared/k/1", &large), large)])
        .await;
    assert!(matches!(out[0], Ok(Transferred::AlreadyPresent)), "{out:?}");
    assert!(!rig.file("shared/k/1").exists());
    assert_eq!(rig.packed("shared/k/1").await, Some(small));
}

#[tokio::test]
async fn the_packed_store_names_its_parts() {
    let rig = rig();
    let store = PackedStore::new(
        Arc::new(rig.pack.clone()),
        Arc::clone(rig.blobs.object_store()),
        LIMIT,
    );
    assert_eq!(store.limit(), LIMIT);
    assert!(
        store.to_string().contains("pack of blobs up to 1024 bytes"),
        "{store}"
    );
}
