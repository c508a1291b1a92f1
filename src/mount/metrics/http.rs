//! The `/metrics` endpoint: a listener bound before anything is mounted (so that a bad or
//! busy address fails the command with nothing left behind), served from one thread.

use std::net::{SocketAddr, TcpListener};

use tracing::warn;

/// Bind `addr`; the error names the option and the address.
pub fn bind(option: &str, addr: SocketAddr) -> Result<TcpListener, crate::mount::Error> {
    TcpListener::bind(addr).map_err(|e| crate::mount::Error::BadOption {
        option: format!("{option}={addr}"),
        reason: e.to_string(),
    })
}

/// Answer `GET /metrics` on `listener` with `body()` until the process ends; anything else
/// is a 404.
pub fn serve(listener: TcpListener, body: impl Fn() -> String + Send + 'static) {
    let server = match tiny_http::Server::from_listener(listener, None) {
        Ok(s) => s,
        Err(e) => {
            warn!("metrics endpoint: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let content_type = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            )
            .expect("a valid header");
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let resp = if path == "/metrics" {
                    tiny_http::Response::from_string(body()).with_header(content_type.clone())
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        });
    if let Err(e) = spawned {
        warn!("metrics endpoint: {e}");
    }
}
