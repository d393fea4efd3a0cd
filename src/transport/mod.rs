//! The code that touches sockets: listeners, and turning bytes into frames
//! for each wire (plain TCP, WebSocket).

pub mod http;
pub mod listen;
pub mod tcp;
pub mod tls;
pub mod ws;
