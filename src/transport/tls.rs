//! TLS on the gateway's own sockets, with rustls. A TLS connection is a
//! plain connection of either wire (binary frames or WebSocket) plus one
//! [`Tls`] in its out-of-line state: the reader hands it the ciphertext read
//! into the shard's buffer and gets the plaintext back, which goes through
//! the same framing code as a plain socket's bytes; the flusher seals the
//! connection's queued plaintext into records just before it writes. The
//! session moves with the socket when a connection is handed to its owner
//! shard.
//!
//! Resumption is by stateless tickets (one ticket key shared by every shard),
//! so a client that reconnects resumes whichever shard accepts it, and no
//! session cache is shared between shards.

use crate::routing::ConnKey;
use crate::shard::state::ShardState;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Why a server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read certificate chain {path}: {source}")]
    Certs {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read private key {path}: {source}")]
    Key {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of TLS, built once at start from PEM files and shared by
/// every shard.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Certs {
            path: cert_path.display().to_string(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsSetupError::Key {
        path: key_path.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    // One ticket per full handshake is enough for a device that reconnects.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

impl ShardState {
    /// Bytes read from connection `key`'s socket: on TLS, decrypted first
    /// (into the shard's plaintext buffer), then handled like a plain
    /// socket's bytes.
    pub fn on_socket_input(&mut self, key: ConnKey, data: &mut [u8]) {
        if self.traffic.data_since.is_none() {
            self.traffic.data_since = Some(std::time::Instant::now());
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.accepts_input() {
            // Closing or draining: input is read and dropped.
            return;
        }
        let Some(tls) = conn.tls_mut() else {
            return self.on_input(key, data);
        };
        let mut plain = std::mem::take(&mut self.tls_plain);
        plain.clear();
        let read = tls.read(data, &mut plain);
        let answer = !tls.out.is_empty();
        if answer {
            self.mark_dirty(key);
        }
        match read {
            Ok(()) if !plain.is_empty() => self.on_input(key, &mut plain),
            Ok(()) => {}
            Err(TlsFailure(reason)) => {
                self.stats.tls_failed += 1;
                tracing::debug!(shard = self.id, %reason, "TLS failed; closing");
                self.begin_close(key);
            }
        }
        self.tls_plain = plain;
    }
}

/// A TLS failure: the peer sent something TLS refuses. The alert, if any,
/// is queued in [`Tls::out`]; the connection is to be closed.
#[derive(Debug)]
pub struct TlsFailure(pub String);

/// One connection's TLS session and the records waiting to be written.
pub struct Tls {
    session: ServerConnection,
    /// Records sealed and not yet written to the socket.
    pub out: Vec<u8>,
    /// A fatal error or our close_notify: nothing more is sealed.
    done: bool,
}

impl Tls {
    pub fn new(config: &Arc<ServerConfig>) -> Result<Box<Tls>, rustls::Error> {
        let mut session = ServerConnection::new(config.clone())?;
        // The gateway bounds what it queues per connection itself (the
        // outbound queue limit), so rustls need not refuse writes.
        session.set_buffer_limit(None);
        Ok(Box::new(Tls {
            session,
            out: Vec::new(),
            done: false,
        }))
    }

    /// Feeds ciphertext read from the socket; appends the plaintext it
    /// carried to `plain`. Handshake answers are queued in `out`.
    pub fn read(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsFailure> {
        while !cipher.is_empty() {
            if let Err(e) = self.session.read_tls(&mut cipher) {
                self.done = true;
                return Err(TlsFailure(e.to_string()));
            }
            let state = match self.session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // rustls queued an alert for the peer.
                    self.records();
                    self.done = true;
                    return Err(TlsFailure(e.to_string()));
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                self.session
                    .reader()
                    .read_exact(&mut plain[start..])
                    .expect("rustls said this much plaintext is ready");
            }
        }
        self.records();
        Ok(())
    }

    /// Seals `plain` (emptied) and every pending handshake message into
    /// records in `out`.
    pub fn seal(&mut self, plain: &mut Vec<u8>) {
        if !plain.is_empty() {
            if !self.done {
                self.session
                    .writer()
                    .write_all(plain)
                    .expect("unlimited rustls buffer accepts everything");
            }
            plain.clear();
        }
        self.records();
    }

    /// Queues close_notify once; true if it was queued now.
    pub fn close_notify(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        self.session.send_close_notify();
        self.records();
        true
    }

    fn records(&mut self) {
        while self.session.wants_write() {
            if self.session.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// The handshake finished.
    pub fn established(&self) -> bool {
        !self.session.is_handshaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;

    /// A self-signed certificate for `localhost` in two temporary PEM files.
    fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = cert.cert.pem();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.cert.der().to_vec())
    }

    fn client(ca_der: &[u8]) -> ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// Moves the client's pending records to the server and back until
    /// neither has more; returns the plaintext the server received.
    fn pump(c: &mut ClientConnection, s: &mut Tls) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read(&wire, &mut plain).unwrap();
            s.seal(&mut Vec::new());
            let back = std::mem::take(&mut s.out);
            if wire.is_empty() && back.is_empty() {
                break;
            }
            c.read_tls(&mut back.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        plain
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn handshake_then_plaintext_both_ways() {
        let dir = temp_dir("roundtrip");
        let (cert, key, ca) = self_signed(&dir);
        let config = server_config(&cert, &key).unwrap();
        let mut s = Tls::new(&config).unwrap();
        let mut c = client(&ca);
        pump(&mut c, &mut s);
        assert!(s.established());
        c.writer().write_all(b"hello gateway").unwrap();
        assert_eq!(pump(&mut c, &mut s), b"hello gateway");
        let mut reply = b"hello client".to_vec();
        s.seal(&mut reply);
        assert!(reply.is_empty(), "seal takes the plaintext");
        let records = std::mem::take(&mut s.out);
        c.read_tls(&mut records.as_slice()).unwrap();
        let state = c.process_new_packets().unwrap();
        let mut got = vec![0; state.plaintext_bytes_to_read()];
        c.reader().read_exact(&mut got).unwrap();
        assert_eq!(got, b"hello client");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_is_a_failure_with_an_alert() {
        let dir = temp_dir("garbage");
        let (cert, key, _) = self_signed(&dir);
        let config = server_config(&cert, &key).unwrap();
        let mut s = Tls::new(&config).unwrap();
        let mut plain = Vec::new();
        assert!(s.read(b"GET / HTTP/1.1\r\n\r\n", &mut plain).is_err());
        assert!(plain.is_empty());
        assert!(!s.out.is_empty(), "an alert for the peer");
        // Nothing more is sealed after a failure.
        let before = s.out.len();
        s.seal(&mut b"frame".to_vec());
        assert_eq!(s.out.len(), before);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_or_bad_files_are_reported() {
        let dir = temp_dir("bad");
        let (cert, key, _) = self_signed(&dir);
        let err = server_config(&dir.join("nope.pem"), &key).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = server_config(&cert, &cert).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
