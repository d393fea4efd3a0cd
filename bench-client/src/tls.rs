//! TLS for `churn`, `hold` and `soak` (`--tls`): with `--tcp` the gateway's
//! TLS port (the binary frame protocol inside TLS), with `--ws` its WSS port
//! (the WebSocket upgrade and frames inside TLS). After the handshake the
//! bytes are exactly those of the plain ports, so `conn.rs` only swaps the
//! stream underneath.
//!
//! rustls 0.23 with ring, TLS 1.2 and 1.3, through futures-rustls over
//! glommio's TcpStream. What one client TLS connection costs: rustls'
//! `ClientConnection` (keys, record layer, the server's certificate chain,
//! which it keeps) and its receive buffer, which rustls holds at 4 KiB for
//! the connection's whole life; about 6 KiB in all, measured as hold's
//! `client_bytes_per_conn` (README.md). The `ClientConfig` is shared.
//!
//! Trust: `--ca FILE` checks the chain and the name like any client would;
//! `--insecure` accepts any chain and name but still checks the handshake
//! signature, so the server's private-key operation is exercised either way
//! and the client saves only the chain check (one signature verification
//! for a self-signed certificate).
//!
//! Session resumption is off unless `--resume`: every handshake is a full one.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use serde_json::{json, Value};

use crate::report::{JsonLine, Table};

/// Server names whose sessions `--resume` keeps (rustls keeps up to eight
/// TLS 1.3 tickets per name); the runs talk to one.
const SESSION_CACHE_NAMES: usize = 4;

#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct TlsArgs {
    /// Wrap every connection in TLS 1.2/1.3: with --tcp the address is the
    /// gateway's TLS port ([listen] tls), with --ws its WSS port ([listen]
    /// wss). Needs --ca or --insecure.
    #[arg(long, requires = "trust")]
    pub tls: bool,
    /// PEM file of the trust roots the gateway's certificate chain is
    /// checked against (with its name, --server-name).
    #[arg(long, value_name = "FILE", group = "trust", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Accept any certificate chain and name (local benchmarks with
    /// throwaway certificates). The handshake signature is still checked.
    #[arg(long, group = "trust", requires = "tls")]
    pub insecure: bool,
    /// Name sent in SNI and checked against the certificate (a DNS name or
    /// an IP address).
    #[arg(
        long = "server-name",
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls"
    )]
    pub server_name: String,
    /// Resume TLS sessions (tickets or session ids the server hands out)
    /// instead of a full handshake every time; the report counts resumed
    /// handshakes.
    #[arg(long, requires = "tls")]
    pub resume: bool,
}

impl TlsArgs {
    /// The client every connection of the run uses; `None` without --tls.
    pub fn client(&self) -> anyhow::Result<Option<TlsClient>> {
        if !self.tls {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS 1.2 and 1.3 with ring")?;
        let (mut config, verify) = match (&self.ca, self.insecure) {
            (Some(path), _) => {
                let roots = load_roots(path)?;
                let config = builder.with_root_certificates(roots).with_no_client_auth();
                (config, Verify::Ca)
            }
            (None, true) => {
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyChain(algorithms)))
                    .with_no_client_auth();
                (config, Verify::Insecure)
            }
            (None, false) => bail!("--tls needs --ca FILE or --insecure"),
        };
        config.resumption = if self.resume {
            Resumption::in_memory_sessions(SESSION_CACHE_NAMES)
        } else {
            Resumption::disabled()
        };
        let server_name = ServerName::try_from(self.server_name.clone())
            .with_context(|| format!("--server-name {:?}", self.server_name))?;
        Ok(Some(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            verify,
            resume: self.resume,
        }))
    }
}

/// Reads every certificate of a PEM file as a trust root.
fn load_roots(path: &std::path::Path) -> anyhow::Result<RootCertStore> {
    let what = || format!("--ca {}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(what)? {
        roots.add(cert.with_context(what)?).with_context(what)?;
    }
    if roots.is_empty() {
        bail!("{}: no CERTIFICATE in the PEM file", what());
    }
    Ok(roots)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    Ca,
    Insecure,
}

/// One run's TLS client settings, shared by all its connections.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    verify: Verify,
    resume: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Runs the handshake over a connecting socket (the ClientHello waits
    /// for the connect like any first write).
    /// The first failure of the run is printed in full to stderr: the
    /// report only counts reasons, and "tls_invalid_certificate" alone does
    /// not say what is wrong with the certificate.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        static TOLD: AtomicBool = AtomicBool::new(false);
        let result = self.connector.connect(self.server_name.clone(), tcp).await;
        if let Err(e) = &result {
            if error_reason(e).is_some() && !TOLD.swap(true, Ordering::Relaxed) {
                eprintln!("[tls] first handshake failure: {e}");
            }
        }
        result
    }

    fn settings_text(&self) -> String {
        let verify = match self.verify {
            Verify::Ca => format!("chain and name ({}) checked", self.server_name.to_str()),
            Verify::Insecure => "chain not checked (--insecure)".to_string(),
        };
        let resume = if self.resume { "on" } else { "off" };
        format!("{verify}, resumption {resume}")
    }
}

/// What one TLS connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub suite: &'static str,
    pub resumed: bool,
}

impl TlsInfo {
    pub fn of(stream: &TlsStream<TcpStream>) -> TlsInfo {
        let c = stream.get_ref().1;
        TlsInfo {
            version: c
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            suite: c
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
        }
    }
}

/// Handshakes counted by kind, and what the first one negotiated.
/// Single-threaded: plain cells.
#[derive(Debug, Default)]
pub struct TlsTally {
    first: std::cell::Cell<Option<TlsInfo>>,
    full: std::cell::Cell<u64>,
    resumed: std::cell::Cell<u64>,
}

impl TlsTally {
    pub fn record(&self, info: Option<TlsInfo>) {
        let Some(info) = info else { return };
        if self.first.get().is_none() {
            self.first.set(Some(info));
        }
        let n = if info.resumed {
            &self.resumed
        } else {
            &self.full
        };
        n.set(n.get() + 1);
    }

    /// The TLS row of the table and the `tls` object of the JSON line
    /// (null without TLS).
    pub fn add_report(&self, client: Option<&TlsClient>, table: &mut Table, m: &mut JsonLine) {
        let Some(client) = client else {
            m.insert("tls", Value::Null);
            return;
        };
        let (version, suite) = self
            .first
            .get()
            .map_or(("n/a", "n/a"), |i| (i.version, i.suite));
        let (full, resumed) = (self.full.get(), self.resumed.get());
        table.row(
            "TLS",
            format!(
                "{version} {suite}, {}; handshakes {full} full, {resumed} resumed",
                client.settings_text()
            ),
        );
        m.insert(
            "tls",
            json!({
                "version": version,
                "cipher_suite": suite,
                "verify": match client.verify {
                    Verify::Ca => "ca",
                    Verify::Insecure => "insecure",
                },
                "server_name": client.server_name.to_str(),
                "resume": client.resume,
                "handshakes_full": full,
                "handshakes_resumed": resumed,
            }),
        );
    }
}

/// A report reason for an I/O error that carries a TLS error; `None` for
/// other errors.
pub fn error_reason(e: &io::Error) -> Option<&'static str> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(_) => "tls_invalid_certificate",
        rustls::Error::AlertReceived(_) => "tls_alert_received",
        rustls::Error::PeerIncompatible(_) => "tls_peer_incompatible",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "tls_bad_message",
        _ => "tls_error",
    })
}

/// `--insecure`: any chain and name, but the handshake signature is checked
/// with the provider's algorithms as usual.
#[derive(Debug)]
struct AnyChain(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::conn::Transport;
    use clap::Parser;

    fn churn(extra: &[&str]) -> Result<TlsArgs, clap::Error> {
        let mut argv = vec!["b", "churn", "--tcp", "127.0.0.1:7443"];
        argv.extend(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Churn(c) => c.tls,
            _ => panic!("churn"),
        })
    }

    #[test]
    fn tls_needs_exactly_one_way_to_trust() {
        assert!(churn(&["--tls"]).is_err(), "--ca or --insecure");
        assert!(churn(&["--tls", "--ca", "ca.pem", "--insecure"]).is_err());
        let t = churn(&["--tls", "--ca", "ca.pem"]).unwrap();
        assert!(t.tls && !t.insecure && !t.resume);
        assert_eq!(t.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(t.server_name, "localhost");
        let t = churn(&[
            "--tls",
            "--insecure",
            "--resume",
            "--server-name",
            "127.0.0.1",
        ])
        .unwrap();
        assert!(t.tls && t.insecure && t.resume && t.ca.is_none());
        assert_eq!(t.server_name, "127.0.0.1");
    }

    #[test]
    fn tls_options_need_tls() {
        let lone: [&[&str]; 4] = [
            &["--ca", "ca.pem"],
            &["--insecure"],
            &["--server-name", "gw.test"],
            &["--resume"],
        ];
        for flags in lone {
            assert!(churn(flags).is_err(), "{flags:?} without --tls");
        }
        let plain = churn(&[]).unwrap();
        assert!(!plain.tls);
        assert!(plain.client().unwrap().is_none());
    }

    #[test]
    fn hold_and_soak_take_tls_for_the_gateway_only() {
        let argv = ["b", "hold", "--ws", "127.0.0.1:7444", "--tls", "--insecure"];
        let Command::Hold(h) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("hold")
        };
        let cfg = crate::hold::HoldConfig::from_args(&h).unwrap();
        assert!(cfg.tls.is_some());
        assert_eq!(cfg.transport_name(), "wss");
        let argv = [
            "b",
            "soak",
            "--tcp",
            "127.0.0.1:7443",
            "--tls",
            "--ca",
            "c.pem",
        ];
        let Command::Soak(s) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("soak")
        };
        assert!(s.hold.tls.tls);
        let argv = [
            "b",
            "hold",
            "--nats",
            "127.0.0.1:4222",
            "--tls",
            "--insecure",
        ];
        let Command::Hold(h) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("hold")
        };
        let e = crate::hold::HoldConfig::from_args(&h).unwrap_err();
        assert!(e.to_string().contains("only for the gateway"), "{e}");
    }

    #[test]
    fn the_trust_root_must_be_a_readable_pem_certificate() {
        let dir = std::env::temp_dir();
        let empty = dir.join(format!("bench-client-no-cert-{}.pem", std::process::id()));
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let missing = dir.join("bench-client-missing-ca.pem");
        for path in [&empty, &missing] {
            let t = churn(&["--tls", "--ca", path.to_str().unwrap()]).unwrap();
            let e = t.client().unwrap_err();
            assert!(format!("{e:#}").contains("--ca"), "{e:#}");
        }
        std::fs::remove_file(&empty).unwrap();
        let t = churn(&["--tls", "--insecure", "--server-name", "not a name"]).unwrap();
        assert!(t.client().is_err());
        let t = churn(&["--tls", "--insecure", "--server-name", "127.0.0.1"]).unwrap();
        assert!(t.client().unwrap().is_some());
    }

    #[test]
    fn tls_transports_have_their_own_names() {
        assert_eq!(Transport::Tcp.name(false), "tcp");
        assert_eq!(Transport::Ws.name(false), "ws");
        assert_eq!(Transport::Tcp.name(true), "tls");
        assert_eq!(Transport::Ws.name(true), "wss");
    }

    #[test]
    fn tls_errors_have_reasons() {
        let bad_cert = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        let e = io::Error::new(io::ErrorKind::InvalidData, bad_cert);
        assert_eq!(error_reason(&e), Some("tls_invalid_certificate"));
        assert_eq!(crate::conn::io_reason(&e), "tls_invalid_certificate");
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(error_reason(&e), None);
    }
}
