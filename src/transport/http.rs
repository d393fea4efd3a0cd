//! Plain HTTP pages on the WebSocket ports, besides the upgrade on `/ws`:
//! `/metrics` (Prometheus text) and `/healthz` (JSON). Each request gets one
//! answer and the connection is closed; the request head is bounded like
//! an upgrade's (`max_http_request_bytes`), and the same handshake timeout
//! applies.

use crate::routing::ConnKey;
use crate::shard::state::ShardState;
use std::net::IpAddr;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::Request;

/// A page the WebSocket port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Metrics,
    Health,
}

/// The page a complete GET request head at the front of `buf` asks for.
pub fn page_for(buf: &[u8]) -> Option<Page> {
    let (_, request) = Request::try_parse(buf).ok()??;
    match request.uri().path() {
        "/metrics" => Some(Page::Metrics),
        "/healthz" => Some(Page::Health),
        _ => None,
    }
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

impl ShardState {
    /// Answers a page request and closes. Only sources in
    /// `[http] ops_allow` may read the operations pages.
    pub fn serve_page(&mut self, key: ConnKey, page: Page, peer: Option<IpAddr>) {
        let allowed = peer.is_some_and(|ip| {
            let ip = ip.to_canonical();
            self.cfg.http.ops_allow.iter().any(|net| net.contains(&ip))
        });
        let answer = if !allowed {
            FORBIDDEN.to_vec()
        } else {
            let metrics = &self.shared.metrics;
            match page {
                Page::Metrics => response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render().as_bytes(),
                ),
                Page::Health => {
                    let (ok, body) = metrics.health();
                    let status = if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    response(status, "application/json", body.as_bytes())
                }
            }
        };
        self.send_raw(key, &answer);
        self.begin_close(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_are_pages_and_others_are_not() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        assert_eq!(page_for(&get("/metrics")), Some(Page::Metrics));
        assert_eq!(page_for(&get("/healthz")), Some(Page::Health));
        assert_eq!(page_for(&get("/healthz?verbose=1")), Some(Page::Health));
        assert_eq!(page_for(&get("/nope")), None);
        assert_eq!(
            page_for(b"GET /metrics HTTP/1.1\r\n"),
            None,
            "incomplete head"
        );
        assert_eq!(page_for(b"\x00\x01garbage"), None);
    }

    #[test]
    fn response_has_length_and_closes() {
        let r = response("200 OK", "text/plain", b"hello");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nhello"));
    }
}
