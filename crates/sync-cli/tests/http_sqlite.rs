//! Full rounds over real loopback HTTP with SQLite on both sides and filesystem blobs, in
//! both codecs: the responder on SQLite (issue 5), the requester on SQLite; with every blob a
//! file, and with small blobs packed in each side's database (decision 0014), through the
//! exchange or through `/files`.

use std::{collections::HashMap, sync::Arc};

use sync_blobs::{BlobMover, ObjectBlobs};
use sync_engine::{
    core::{
        ChannelData, ExchangeTransport, RecordStore, Responder, ResponderConfig, ResponderParts,
    },
    hlc::{Clock, ClockConfig, NodeId},
    protocol::Codec,
    Channel, Engine, RecordDraft, SystemClock,
};
use sync_http::{Auth, HttpClient, Scope, ServerConfig, SyncService};
use sync_sqlite::SqliteStore;

const TOKEN: &str = "http-sqlite-test-token-0123";

/// How a side keeps its blobs and moves them.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Small blobs packed in the side's database.
    packed: bool,
    /// Nodes carry small blobs inside the exchange (else every blob through `/files`).
    inline: bool,
}

const FILES: Layout = Layout {
    packed: false,
    inline: true,
};
const PACKED: Layout = Layout {
    packed: true,
    inline: true,
};

fn blobs_of(dir: std::path::PathBuf, store: &SqliteStore, layout: Layout) -> ObjectBlobs {
    let blobs = ObjectBlobs::filesystem(dir).unwrap();
    if layout.packed {
        blobs.with_pack(Arc::new(store.blob_pack()), sync_blobs::DEFAULT_PACK_LIMIT)
    } else {
        blobs
    }
}

async fn server(
    dir: &std::path::Path,
    layout: Layout,
) -> (
    String,
    SqliteStore,
    ObjectBlobs,
    tokio::sync::oneshot::Sender<()>,
) {
    let store = SqliteStore::open(dir.join("server.db")).await.unwrap();
    let blobs = blobs_of(dir.join("server-blobs"), &store, layout);
    let clock = Arc::new(std::sync::Mutex::new(Clock::new(
        NodeId::new("cloud-test").unwrap(),
        ClockConfig::default(),
    )));
    let responder: Arc<dyn ExchangeTransport> = Arc::new(Responder::new(ResponderParts {
        data: ChannelData::new(Channel::Drive, Some(Arc::new(store.clone())), None),
        blobs: Arc::new(blobs.clone()),
        clock,
        time: Arc::new(SystemClock),
        config: ResponderConfig::default(),
    }));
    let responders: HashMap<Channel, Arc<dyn ExchangeTransport>> =
        [(Channel::Drive, responder)].into_iter().collect();
    let service = SyncService::builder(responders, blobs.object_store().clone())
        .bearer_token(TOKEN, Scope::All)
        .config(ServerConfig::default().with_store_content_type(false))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sync_http::serve(listener, service, async {
        let _ = rx.await;
    }));
    (url, store, blobs, tx)
}

async fn node(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    codec: Codec,
    layout: Layout,
) -> (Engine, ObjectBlobs) {
    let store = SqliteStore::open(dir.join(format!("{name}.db")))
        .await
        .unwrap();
    let local = blobs_of(dir.join(format!("{name}-blobs")), &store, layout);
    let client = HttpClient::builder(url)
        .auth(Auth::bearer(TOKEN))
        .codec(codec)
        .build()
        .unwrap();
    let remote = ObjectBlobs::new(Arc::new(client.object_store(Channel::Drive)));
    let engine = Engine::builder(name, Channel::Drive)
        .unwrap()
        .records(Arc::new(store.clone()))
        .state(Arc::new(store))
        .blob_transfer(Arc::new(BlobMover::new(local.clone(), remote)))
        .transport(Arc::new(client.transport(Channel::Drive)))
        .page_limit(7)
        .inline_blob_limit(if layout.inline { 64 * 1024 } else { 0 })
        .build()
        .await
        .unwrap();
    (engine, local)
}

async fn rounds_in(codec: Codec, layout: Layout) {
    let dir = tempfile::tempdir().unwrap();
    let (url, server_store, server_blobs, stop) = server(dir.path(), layout).await;
    let (a, a_blobs) = node(dir.path(), "node-a", &url, codec, layout).await;
    let (b, b_blobs) = node(dir.path(), "node-b", &url, codec, layout).await;
    // 20 files on A, a few MiB in all, across several pages of 7.
    let mut written = Vec::new();
    for i in 0..20u32 {
        let bytes: Vec<u8> = (0..(i as usize * 20_000 + 1))
            .map(|j| (j as u32 * 31 + i) as u8)
            .collect();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let key = format!("shared/application/{}/{hash}", &hash[..2]);
        let path = sync_blobs::object_store::path::Path::parse(&key).unwrap();
        sync_blobs::object_store::ObjectStoreExt::put(
            a_blobs.object_store().as_ref(),
            &path,
            bytes.clone().into(),
        )
        .await
        .unwrap();
        let r = a
            .put_record(RecordDraft::file(
                format!("r{i:02}"),
                key,
                hash,
                bytes.len() as u64,
            ))
            .await
            .unwrap();
        written.push((r, bytes));
    }
    let up = a.sync_until_idle().await.unwrap();
    assert!(up.complete && up.shipped == 20 && up.rounds >= 3, "{up:?}");
    let down = b.sync_until_idle().await.unwrap();
    assert!(down.complete && down.applied == 20, "{down:?}");
    for (r, bytes) in &written {
        let on_server = server_store.get(&r.id).await.unwrap().unwrap();
        assert_eq!(on_server, *r);
        for blobs in [&server_blobs, &b_blobs] {
            let path = sync_blobs::object_store::path::Path::parse(&r.object_storage_key).unwrap();
            let got =
                sync_blobs::object_store::ObjectStoreExt::get(blobs.object_store().as_ref(), &path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            assert_eq!(&got[..], &bytes[..]);
        }
        // Packed sides hold the small blobs in their databases, not as files.
        let small = bytes.len() as u64 <= sync_blobs::DEFAULT_PACK_LIMIT;
        for side in ["server-blobs", "node-b-blobs"] {
            let file = dir.path().join(side).join(&r.object_storage_key);
            assert_eq!(
                file.exists(),
                !(layout.packed && small),
                "{side}: {} ({} bytes) as a file",
                r.object_storage_key,
                bytes.len()
            );
        }
    }
    // A delete on B flows back to A.
    b.delete_record("r05").await.unwrap();
    b.sync_until_idle().await.unwrap();
    a.sync_until_idle().await.unwrap();
    assert!(a.record("r05").await.unwrap().unwrap().deleted_at.is_some());
    let _ = stop.send(());
}

#[tokio::test]
async fn rounds_over_http_on_sqlite_in_messagepack() {
    rounds_in(Codec::MessagePack, FILES).await;
}

#[tokio::test]
async fn rounds_over_http_on_sqlite_in_json() {
    rounds_in(Codec::Json, FILES).await;
}

#[tokio::test]
async fn rounds_with_packed_blobs_in_messagepack() {
    rounds_in(Codec::MessagePack, PACKED).await;
}

#[tokio::test]
async fn rounds_with_packed_blobs_in_json() {
    rounds_in(Codec::Json, PACKED).await;
}

/// A node that carries no blob inside the exchange (as a TypeScript peer) PUTs and GETs
/// the small ones through `/files`, into and out of the server's pack.
#[tokio::test]
async fn packed_blobs_through_files_routes() {
    rounds_in(
        Codec::Json,
        Layout {
            packed: true,
            inline: false,
        },
    )
    .await;
}
