//! Plain HTTP pages on the WebSocket ports, besides the upgrade on `/ws`:
//! `/metrics` (Prometheus text) and `/healthz` (JSON) for operations, and the
//! web console (`/`, `/app.js`, `/style.css`; `docs/console.md`), a static
//! page embedded in the binary. Each request gets one answer and the
//! connection is closed; the request head is bounded like an upgrade's
//! (`max_http_request_bytes`), and the same handshake timeout applies.

use crate::routing::ConnKey;
use crate::shard::state::ShardState;
use std::net::IpAddr;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::Request;

/// A page the WebSocket port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// Operations pages, only for sources in `[http] ops_allow`.
    Metrics,
    Health,
    /// A file of the web console, for everyone.
    Console(ConsoleFile),
}

/// The files of the web console (`src/console/`), embedded in the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleFile {
    Html,
    Script,
    Style,
}

/// What the console's files may do in a browser: load scripts, styles and
/// images from the gateway itself and open WebSockets, nothing else (no
/// inline script or style, no other origin, no framing, no form posts).
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

impl ConsoleFile {
    /// The file's content type and bytes.
    pub fn content(self) -> (&'static str, &'static str) {
        match self {
            ConsoleFile::Html => (
                "text/html; charset=utf-8",
                include_str!("../console/index.html"),
            ),
            ConsoleFile::Script => (
                "text/javascript; charset=utf-8",
                include_str!("../console/app.js"),
            ),
            ConsoleFile::Style => (
                "text/css; charset=utf-8",
                include_str!("../console/style.css"),
            ),
        }
    }

    /// The complete answer: 200 with the console's security headers.
    pub fn response(self) -> Vec<u8> {
        let (content_type, body) = self.content();
        let headers = format!(
            "Content-Security-Policy: {CONSOLE_CSP}\r\nX-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n"
        );
        response_with("200 OK", content_type, &headers, body.as_bytes())
    }
}

/// The page a complete GET request head at the front of `buf` asks for. A
/// WebSocket upgrade is never a page request: on any path but `/ws` it is
/// answered 404 like before, not with a page a WebSocket client cannot use.
pub fn page_for(buf: &[u8]) -> Option<Page> {
    let (_, request) = Request::try_parse(buf).ok()??;
    if request.headers().contains_key("Upgrade") {
        return None;
    }
    match request.uri().path() {
        "/metrics" => Some(Page::Metrics),
        "/healthz" => Some(Page::Health),
        "/" | "/index.html" => Some(Page::Console(ConsoleFile::Html)),
        "/app.js" => Some(Page::Console(ConsoleFile::Script)),
        "/style.css" => Some(Page::Console(ConsoleFile::Style)),
        _ => None,
    }
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, content_type, "", body)
}

/// Like [`response`], with `extra_headers` (each line ending in CRLF).
fn response_with(status: &str, content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

impl ShardState {
    /// Answers a page request and closes. The console is public; only
    /// sources in `[http] ops_allow` may read the operations pages.
    pub fn serve_page(&mut self, key: ConnKey, page: Page, peer: Option<IpAddr>) {
        let allowed = peer.is_some_and(|ip| {
            let ip = ip.to_canonical();
            self.cfg.http.ops_allow.iter().any(|net| net.contains(&ip))
        });
        let metrics = &self.shared.metrics;
        let answer = match page {
            Page::Console(file) => file.response(),
            Page::Metrics | Page::Health if !allowed => FORBIDDEN.to_vec(),
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
    fn console_paths_are_console_files() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        let html = Some(Page::Console(ConsoleFile::Html));
        assert_eq!(page_for(&get("/")), html);
        assert_eq!(page_for(&get("/index.html")), html);
        assert_eq!(page_for(&get("/?code=x")), html);
        assert_eq!(
            page_for(&get("/app.js")),
            Some(Page::Console(ConsoleFile::Script))
        );
        assert_eq!(
            page_for(&get("/style.css")),
            Some(Page::Console(ConsoleFile::Style))
        );
        assert_eq!(page_for(&get("/app.js/")), None);
        assert_eq!(page_for(&get("/console")), None);
    }

    #[test]
    fn a_websocket_upgrade_is_not_a_page_request() {
        for path in ["/", "/metrics", "/app.js"] {
            let upgrade = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            assert_eq!(page_for(upgrade.as_bytes()), None, "{path}");
        }
    }

    /// The head of a response as text, and its body.
    fn split(answer: &[u8]) -> (String, &[u8]) {
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = String::from_utf8(answer[..end].to_vec()).expect("ASCII head");
        (head, &answer[end + 4..])
    }

    #[test]
    fn console_files_have_their_type_length_and_a_strict_policy() {
        for (file, content_type) in [
            (ConsoleFile::Html, "text/html; charset=utf-8"),
            (ConsoleFile::Script, "text/javascript; charset=utf-8"),
            (ConsoleFile::Style, "text/css; charset=utf-8"),
        ] {
            let answer = file.response();
            let (head, body) = split(&answer);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains(&format!("\r\nContent-Type: {content_type}\r\n")));
            assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
            assert!(head.contains(&format!("\r\nContent-Security-Policy: {CONSOLE_CSP}\r\n")));
            assert!(head.contains("\r\nX-Content-Type-Options: nosniff\r\n"));
            assert!(head.ends_with("\r\nConnection: close"), "{head}");
            assert_eq!(body, file.content().1.as_bytes());
            assert!(!body.is_empty());
        }
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
        ] {
            assert!(CONSOLE_CSP.contains(directive), "{directive}");
        }
        assert!(!CONSOLE_CSP.contains("unsafe"), "no unsafe-inline or eval");
    }

    #[test]
    fn the_console_page_loads_only_its_own_files() {
        let html = ConsoleFile::Html.content().1;
        assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/style.css">"#));
        assert!(!html.contains("<script>"), "no inline script");
        assert!(!html.contains("style="), "no inline style");
        assert!(!html.contains("http://") && !html.contains("https://"));
        let js = ConsoleFile::Script.content().1;
        assert!(!js.contains("http://") && !js.contains("https://"));
        assert!(
            js.contains("location.host"),
            "the ws URL comes from the page's own location"
        );
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
