//! A plain-HTTP request sent to the TLS port (`curl http://…:8443/validate`) gets a plain-HTTP
//! answer saying to use `https://`, instead of a handshake error the client shows as an empty
//! reply. TLS records start with a handshake byte (0x16); HTTP/1 requests start with a method
//! in capitals, which is how the two are told apart without consuming anything.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The first byte of every TLS record that opens a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// The request read (and thrown away) before answering, so closing does not reset the
/// connection under a client still sending; a longer request is cut off.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
const READ_TIME: Duration = Duration::from_secs(1);

const ANSWER_BODY: &str =
    "pullgate: this port speaks HTTPS (TLS): use https:// (the admin port serves plain HTTP)\n";

/// The TLS handshake of `tcp`, or, when it opens with plain HTTP, the answer above and an error.
/// Runs within the caller's handshake deadline.
pub(super) async fn accept(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1
        && first[0] != TLS_HANDSHAKE
        && first[0].is_ascii_uppercase()
    {
        answer_plain_http(tcp).await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a plain-HTTP request on the TLS port (answered: use https://)",
        ));
    }
    acceptor.accept(tcp).await
}

async fn answer_plain_http(mut tcp: TcpStream) {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(READ_TIME, async {
        while request.len() < MAX_REQUEST_BYTES && !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ANSWER_BODY}",
        ANSWER_BODY.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
