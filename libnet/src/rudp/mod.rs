//! Reliable UDP from KCP: many connections over one UDP socket, in
//! blocking style.
//!
//! - [`proto`] is the sans-IO core: an [`proto::Endpoint`] takes datagrams
//!   and `now` and gives back datagrams to send, events and its next
//!   deadline. It owns one KCP instance per connection, the handshake
//!   (stateless cookies, so a spoofed source creates no state), keepalives,
//!   idle timeouts, orderly close and abort, and every limit.
//! - [`RudpSocket`] drives an endpoint on one libnet `UdpSocket` with a
//!   coroutine and gives each connection blocking calls:
//!   [`RudpConnection`] for whole messages, [`RudpStream`] for `Read`/`Write`.
//!   The same socket carries raw datagrams beside the connections (hole
//!   punching and address discovery need the same NAT mapping).
//!
//! ```no_run
//! use libnet::rudp::{Config, RudpSocket};
//!
//! libnet::run(|| -> std::io::Result<()> {
//!     let socket = RudpSocket::bind("0.0.0.0:9000".parse().unwrap(), Config::default())?;
//!     let (conn, from) = socket.accept()?;
//!     while let Some(msg) = conn.recv()? {
//!         conn.send(&msg)?; // echo
//!     }
//!     Ok(())
//! }).unwrap().unwrap();
//! ```
//!
//! See `docs/rudp.md` for the wire format and how the driver works.

pub mod proto;
#[cfg(test)]
mod sim;
mod socket;

pub use proto::{CloseReason, Config, EndpointStats, Mode, Stats};
pub use socket::{RudpConnection, RudpSocket, RudpStream};
