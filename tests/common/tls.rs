//! TLS for the test clients: a certificate made at test time (rcgen), the
//! gateway config that serves it, and a client stream that is either plain
//! TCP or rustls over TCP, so the frame and WebSocket clients run unchanged
//! over both.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::mariadb::TempDir;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the TLS handshake to finish.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A self-signed certificate for `localhost` and 127.0.0.1, in PEM files of
/// a temporary directory.
pub struct TestCert {
    _dir: TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = TempDir::new("tls-cert");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, made.cert.pem()).expect("write cert.pem");
        std::fs::write(&key_path, made.signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            _dir: dir,
            cert_path,
            key_path,
            der: made.cert.der().to_vec(),
        }
    }

    /// Config lines for a TLS and a WSS listener on ports of 0, plus `extra`
    /// keys of the `[listen]` section (e.g. nothing).
    pub fn gateway_config(&self) -> String {
        format!(
            "[listen]\ntls = [\"127.0.0.1:0\"]\nwss = [\"127.0.0.1:0\"]\n\
             [tls]\ncert_path = {:?}\nkey_path = {:?}\n",
            self.cert_path.display().to_string(),
            self.key_path.display().to_string()
        )
    }

    /// A client configuration that trusts this certificate only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.der.clone()))
            .expect("add the test root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// A client's byte stream: plain TCP, or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (timeouts, shutdown, addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Connects to `addr` and completes a TLS handshake for `localhost`.
    pub fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Stream> {
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
