//! TLS on the gateway's own sockets, with rustls' unbuffered API. A TLS
//! connection is a plain connection of either wire (binary frames or
//! WebSocket) plus one [`Tls`] in its out-of-line state. The reader hands it
//! the ciphertext just read into the shard's buffer; rustls decrypts the
//! records there, in place, and the plaintext goes through the same framing
//! code as a plain socket's bytes. Only an incomplete record is kept per
//! connection between reads, so an idle TLS connection holds no receive
//! buffer (rustls' buffered API keeps 4 KiB per connection for its whole
//! life). The flusher seals the connection's queued frames into records just
//! before it writes. The session moves with the socket when a connection is
//! handed to its owner shard.
//!
//! Resumption is by stateless tickets (one ticket key shared by every shard),
//! so a client that reconnects resumes whichever shard accepts it, and no
//! session cache is shared between shards.

use crate::routing::ConnKey;
use crate::shard::state::ShardState;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    NoServerSessionStorage, ServerConfig, ServerConnectionData, UnbufferedServerConnection,
};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
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

/// Most TLS steps one call takes before it gives up (a bound on every loop
/// over rustls' states; each step consumes input or produces output).
const STEPS_MAX: usize = 10_000;

/// One connection's TLS session, on rustls' unbuffered API: rustls decrypts
/// in place in the buffer the bytes were read into (the shard's), so an
/// idle TLS connection holds no receive buffer; only an incomplete record is
/// carried between reads, as on a plain connection.
pub struct Tls {
    session: UnbufferedServerConnection,
    /// Ciphertext of an incomplete record, kept for the next read.
    carry: Vec<u8>,
    /// Frames queued before the handshake finished, sealed once it has.
    early: Vec<u8>,
    /// Records sealed and not yet written to the socket.
    pub out: Vec<u8>,
    /// A fatal error or our close_notify: nothing more is read or sealed.
    done: bool,
}

/// What one pass over the available input ended with.
enum Pass {
    /// Waiting for more bytes (the handshake, or an incomplete record).
    Blocked,
    /// Handshake done, everything available handled: frames may be sealed.
    Writable,
    /// Both sides sent close_notify.
    Closed,
}

impl Tls {
    pub fn new(config: &Arc<ServerConfig>) -> Result<Box<Tls>, rustls::Error> {
        Ok(Box::new(Tls {
            session: UnbufferedServerConnection::new(config.clone())?,
            carry: Vec::new(),
            early: Vec::new(),
            out: Vec::new(),
            done: false,
        }))
    }

    /// Feeds ciphertext read from the socket (decrypted in place); appends
    /// the plaintext it carried to `plain`. Handshake answers are queued in
    /// `out`.
    pub fn read(&mut self, cipher: &mut [u8], plain: &mut Vec<u8>) -> Result<(), TlsFailure> {
        if self.done {
            return Ok(());
        }
        let mut carried = std::mem::take(&mut self.carry);
        let result = if carried.is_empty() {
            let r = self.pass(cipher, plain);
            if let Ok((used, _)) = &r {
                let rest = &cipher[*used..];
                if !rest.is_empty() {
                    carried.extend_from_slice(rest);
                }
            }
            r
        } else {
            carried.extend_from_slice(cipher);
            let r = self.pass(&mut carried, plain);
            if let Ok((used, _)) = &r {
                carried.drain(..*used);
            }
            r
        };
        match result {
            Ok((_, pass)) => {
                if carried.is_empty() {
                    carried = Vec::new();
                }
                self.carry = carried;
                if matches!(pass, Pass::Writable) && !self.early.is_empty() {
                    let mut early = std::mem::take(&mut self.early);
                    self.seal(&mut early);
                }
                Ok(())
            }
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// Runs rustls over `buf` until it needs more input; returns how many
    /// bytes of `buf` are consumed.
    fn pass(&mut self, buf: &mut [u8], plain: &mut Vec<u8>) -> Result<(usize, Pass), TlsFailure> {
        let mut off = 0;
        for _ in 0..STEPS_MAX {
            let UnbufferedStatus { mut discard, state } =
                self.session.process_tls_records(&mut buf[off..]);
            let state = state.map_err(|e| TlsFailure(e.to_string()))?;
            let end = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(|e| TlsFailure(e.to_string()))?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, &mut self.out);
                    None
                }
                // Queued in `out`, which the flusher writes in order.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::PeerClosed => None,
                ConnectionState::BlockedHandshake => Some(Pass::Blocked),
                ConnectionState::WriteTraffic(_) => Some(Pass::Writable),
                ConnectionState::Closed => Some(Pass::Closed),
                _ => return Err(TlsFailure("early data is not accepted".into())),
            };
            off += discard;
            if let Some(pass) = end {
                return Ok((off, pass));
            }
        }
        Err(TlsFailure("TLS state machine did not settle".into()))
    }

    /// Seals `plain` (emptied) into records in `out`; before the handshake
    /// finished it waits in `early`.
    pub fn seal(&mut self, plain: &mut Vec<u8>) {
        if plain.is_empty() {
            return;
        }
        if self.done {
            plain.clear();
            return;
        }
        for _ in 0..STEPS_MAX {
            let status = self.session.process_tls_records(&mut self.carry);
            debug_assert_eq!(status.discard, 0, "the carry holds no complete record");
            match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    encrypt(&mut w, plain, &mut self.out);
                    plain.clear();
                    return;
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.out),
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                Ok(ConnectionState::PeerClosed) => {}
                Ok(ConnectionState::BlockedHandshake) => {
                    self.early.append(plain);
                    return;
                }
                _ => break,
            }
        }
        plain.clear();
    }

    /// Queues close_notify once; true if it was queued now.
    pub fn close_notify(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        for _ in 0..STEPS_MAX {
            let status = self.session.process_tls_records(&mut self.carry);
            match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let start = self.out.len();
                    if let Err(EncryptError::InsufficientSize(s)) = w.queue_close_notify(&mut []) {
                        self.out.resize(start + s.required_size, 0);
                        let n = w
                            .queue_close_notify(&mut self.out[start..])
                            .expect("sized by rustls");
                        self.out.truncate(start + n);
                    }
                    return true;
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.out),
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                Ok(ConnectionState::PeerClosed) => {}
                _ => return false,
            }
        }
        false
    }

    /// After a failure: queue the alert rustls prepared, if any.
    fn fail(&mut self) {
        self.done = true;
        self.carry = Vec::new();
        for _ in 0..4 {
            let status = self.session.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.out),
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                _ => return,
            }
        }
    }

    /// The handshake finished.
    pub fn established(&self) -> bool {
        !self.session.is_handshaking()
    }
}

/// Appends a handshake record (or alert) rustls prepared to `out`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let start = out.len();
    match data.encode(&mut []) {
        Ok(_) => {}
        Err(EncodeError::InsufficientSize(s)) => {
            out.resize(start + s.required_size, 0);
            let n = data.encode(&mut out[start..]).expect("sized by rustls");
            out.truncate(start + n);
        }
        Err(EncodeError::AlreadyEncoded) => {}
    }
}

/// Appends `plain` sealed into application-data records to `out`.
fn encrypt(w: &mut WriteTraffic<'_, ServerConnectionData>, plain: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    match w.encrypt(plain, &mut []) {
        Ok(_) => {}
        Err(EncryptError::InsufficientSize(s)) => {
            out.resize(start + s.required_size, 0);
            let n = w
                .encrypt(plain, &mut out[start..])
                .expect("sized by rustls");
            out.truncate(start + n);
        }
        Err(e) => tracing::warn!(error = %e, "cannot seal frames; dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;
    use std::io::{Read, Write};

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
            s.read(&mut wire, &mut plain).unwrap();
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

    /// The handshake and 100 KB of data fed in pieces of every size, down
    /// to one byte: incomplete records are carried, complete ones decrypted
    /// in place, nothing is lost or repeated.
    #[test]
    fn records_split_anywhere_arrive_whole() {
        let dir = temp_dir("split");
        let (cert, key, ca) = self_signed(&dir);
        let config = server_config(&cert, &key).unwrap();
        for piece in [1usize, 7, 100, 5000, 70_000] {
            let mut s = Tls::new(&config).unwrap();
            let mut c = client(&ca);
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
            c.set_buffer_limit(None);
            c.writer().write_all(&data).unwrap();
            let mut got = Vec::new();
            for _ in 0..20 {
                let mut wire = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut wire).unwrap();
                }
                for chunk in wire.chunks_mut(piece) {
                    s.read(chunk, &mut got).unwrap();
                }
                s.seal(&mut Vec::new());
                let back = std::mem::take(&mut s.out);
                if wire.is_empty() && back.is_empty() {
                    break;
                }
                c.read_tls(&mut back.as_slice()).unwrap();
                c.process_new_packets().unwrap();
            }
            assert_eq!(got.len(), data.len(), "piece {piece}");
            assert!(got == data, "piece {piece}: bytes differ");
            assert!(s.carry.capacity() == 0, "nothing carried once all arrived");
            // And back: a large reply in several records.
            let mut reply = data.clone();
            s.seal(&mut reply);
            let records = std::mem::take(&mut s.out);
            let mut echoed = Vec::new();
            let mut rd = records.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let st = c.process_new_packets().unwrap();
                let mut part = vec![0; st.plaintext_bytes_to_read()];
                c.reader().read_exact(&mut part).unwrap();
                echoed.extend(part);
            }
            assert!(echoed == data, "piece {piece}: reply differs");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Frames queued while the handshake is still running are sealed as
    /// soon as it finishes.
    #[test]
    fn frames_queued_during_the_handshake_are_sent_after_it() {
        let dir = temp_dir("early");
        let (cert, key, ca) = self_signed(&dir);
        let config = server_config(&cert, &key).unwrap();
        let mut s = Tls::new(&config).unwrap();
        let mut c = client(&ca);
        s.seal(&mut b"queued early".to_vec());
        assert!(
            s.out.is_empty(),
            "nothing can be sealed before the handshake"
        );
        pump(&mut c, &mut s);
        let mut buf = [0u8; 64];
        let n = c.reader().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"queued early");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_is_a_failure_with_an_alert() {
        let dir = temp_dir("garbage");
        let (cert, key, _) = self_signed(&dir);
        let config = server_config(&cert, &key).unwrap();
        let mut s = Tls::new(&config).unwrap();
        let mut plain = Vec::new();
        assert!(s
            .read(&mut b"GET / HTTP/1.1\r\n\r\n".to_vec(), &mut plain)
            .is_err());
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
