//! How S3 failures map onto the port's errors, against real sockets on loopback: a server
//! that answers 503, and a port nobody listens on.

use sync_blobs::{ObjectBlobs, S3Config};
use sync_core::{BlobError, BlobStore};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

fn s3_at(port: u16) -> ObjectBlobs {
    ObjectBlobs::s3(
        S3Config::new("bucket", "key", "secret")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_max_retries(0),
    )
    .unwrap()
}

/// Answers every request on one connection with `status`, then closes it.
async fn answer_once(listener: TcpListener, status: &'static str) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    socket.write_all(response.as_bytes()).await.unwrap();
    socket.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_errors_are_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(answer_once(listener, "503 Service Unavailable"));
    let err = s3_at(port).contains("shared/a").await.unwrap_err();
    assert!(matches!(err, BlobError::Transient { .. }), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn forbidden_is_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(answer_once(listener, "403 Forbidden"));
    let err = s3_at(port).contains("shared/a").await.unwrap_err();
    assert!(matches!(err, BlobError::Fatal { .. }), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn refused_connections_are_transient() {
    // A port that was free a moment ago and that nobody listens on.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let err = s3_at(port).contains("shared/a").await.unwrap_err();
    assert!(matches!(err, BlobError::Transient { .. }), "{err:?}");
}
