//! Graceful shutdown: a request in flight when shutdown starts still gets its answer.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use object_store::{memory::InMemory, ObjectStore};
use sync_core::{Channel, ExchangeError, ExchangeTransport};
use sync_http::{serve, Auth, HttpClient, Scope, SyncService};
use sync_protocol::{ExchangeRequest, ExchangeResponse, Watermarks};
use tokio::sync::oneshot;

/// A responder that reports when a request arrived and answers only when released.
struct Gate {
    entered: Mutex<Option<oneshot::Sender<()>>>,
    release: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait]
impl ExchangeTransport for Gate {
    async fn exchange(&self, _: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        if let Some(tx) = self.entered.lock().unwrap().take() {
            let _ = tx.send(());
        }
        if let Some(rx) = self.release.lock().await.take() {
            let _ = rx.await;
        }
        Ok(ExchangeResponse {
            responder_watermarks: Watermarks::new(),
            has_more: true,
            ..ExchangeResponse::default()
        })
    }
}

#[tokio::test]
async fn in_flight_request_completes_after_shutdown_is_triggered() {
    let (entered_tx, entered) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(Some(entered_tx)),
        release: tokio::sync::Mutex::new(Some(release_rx)),
    });
    let provider = move |c: &Channel| -> Option<Arc<dyn ExchangeTransport>> {
        (*c == Channel::Drive).then(|| gate.clone() as Arc<dyn ExchangeTransport>)
    };
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let service = SyncService::builder(provider, store)
        .bearer_token("t", Scope::All)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, service, async {
        let _ = stopped.await;
    }));

    let client = HttpClient::new(format!("http://{addr}"), Auth::bearer("t")).unwrap();
    let in_flight = tokio::spawn(async move {
        client
            .transport(Channel::Drive)
            .exchange(ExchangeRequest::default())
            .await
    });
    entered.await.unwrap();

    // Shutdown starts while the request is inside the responder.
    stop.send(()).unwrap();
    // The server keeps waiting for it: serve() has not returned.
    tokio::task::yield_now().await;
    assert!(!server.is_finished());
    release.send(()).unwrap();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert!(response.has_more);
    server.await.unwrap().unwrap();
    // And nothing is accepted any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

async fn health_server(
    config: sync_http::ServeConfig,
) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let provider = |_: &Channel| -> Option<Arc<dyn ExchangeTransport>> { None };
    let service = SyncService::builder(provider, store).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sync_http::serve_with(listener, service, config, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = sync_http::ServeConfig::default()
        .with_header_read_timeout(std::time::Duration::from_millis(200));
    let (addr, _stop) = health_server(config).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server gives up on the unfinished head and closes (possibly after a 408).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("the server closed the slow connection");
    assert!(read.is_ok() || answer.is_empty());
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let config = sync_http::ServeConfig::default().with_max_connections(1);
    let (addr, _stop) = health_server(config).await;
    let base = format!("http://{addr}");
    // One connection holds the only slot without sending anything.
    let holder = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A second client is not served while the slot is taken...
    let mut waiting = tokio::spawn(async move {
        crate::common::raw(&base, http::Method::GET, "/health", &[], "").await
    });
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting).await;
    assert!(early.is_err(), "served beyond the connection cap");
    // ...and is served once it frees.
    drop(holder);
    let r = waiting.await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK);
}
